// The thread pool: a crew of worker_threads that each instantiate the engine's compiled module over
// the engine's one shared WebAssembly.Memory and run the items of one job at a time (../job.ts),
// and the policy of when a call is worth it.
//
// Sync calls: the calling thread runs items too (slot 0) with `threads - 1` workers, and blocks in
// Atomics.wait until the last item is done. Async calls: `threads` workers run the items while the
// calling thread's event loop stays free; Atomics.waitAsync tells it when they are done. Async calls
// queue, one job at a time; a sync call that finds the pool busy runs on its own thread alone (the
// result is the same bits either way).
//
// Faults. A crew has its own control block and job descriptor. When a crew cannot be trusted any
// more (a worker died, or stalled for STALL_MS in a sync call, or the calling thread failed while
// workers ran), it is retired: its workers are terminated, a new crew with a fresh control block
// takes over, and memory that the old workers might still write (the blocks of the job they ran)
// is handed back only once every one of them has exited. A slow machine thus costs a respawn,
// never memory or correctness: a stalled sync call runs the unfinished items itself, and an item
// run twice writes the same bits.
import { AttentionError } from '../errors.js';
import { HEADER, JOB_FIELDS } from '../job.js';
import type { Kernels } from '../backends/kernels.js';
import { nodeWorkers } from '../platform.js';
import { C, CTRL_WORDS, PARKED, type WorkerInit, claimLoop, runItem } from './protocol.js';

/**
 * Calls of fewer floating-point operations than this run on the calling thread alone: below it,
 * waking the workers costs more than they save (measured with `npm run bench:threads`).
 */
export const MIN_PARALLEL_FLOPS = 2e6;
/**
 * A memory-bound call counts as this many flops per byte it streams: one thread streams about 16 GB/s
 * and multiplies about 40 GFLOP/s here (npm run bench), so a byte costs the time of 2.5 flops.
 */
export const FLOPS_PER_STREAMED_BYTE = 2.5;
/** How long a sync call that ran its share spins for the workers' last items before it sleeps. */
const SPIN_MS = 0.1;
/** A sync call that sees no item finish for this long runs the rest itself and retires the crew. */
export const STALL_MS = 5000;
/** How long a job start waits for the workers of the previous job to leave it. */
const IDLE_MS = 2000;
const MAX_SLOTS = CTRL_WORDS - C.busy - 1;
// the same relative path from src/pool (tests) and dist/pool (the package): the compiled worker
const WORKER_URL = new URL('../../dist/pool/worker.js', import.meta.url);

/** What the pool needs of a worker: Node's worker_threads Worker, or a browser's module Worker. */
interface PoolWorker {
  postMessage(message: unknown): void;
  terminate(): void;
  ref(): void;
  unref(): void;
}

/** Starts a worker; `onReady` runs when it has instantiated the kernels, `onExit` once when it exits or fails. */
function startWorker(onReady: () => void, onExit: (error: unknown) => void): PoolWorker {
  if (nodeWorkers) {
    // execArgv: [] keeps flags meant for the main script (--input-type, --eval ...) out of the workers;
    // V8 flags such as --experimental-wasm-relaxed-simd are process-wide and apply to them anyway.
    const worker = new nodeWorkers.Worker(WORKER_URL, { execArgv: [] });
    let error: unknown;
    worker.on('message', (m: unknown) => {
      if (m === 'ready') onReady();
      else if (typeof m === 'object' && m !== null && 'failed' in m) error = (m as { failed: string }).failed;
    });
    worker.on('error', (e) => (error = e));
    worker.on('exit', () => onExit(error));
    return { postMessage: (m) => worker.postMessage(m), terminate: () => void worker.terminate(), ref: () => worker.ref(), unref: () => worker.unref() };
  }
  const worker = new Worker(WORKER_URL, { type: 'module' });
  let failed: unknown;
  worker.addEventListener('message', (e) => {
    if (e.data === 'ready') onReady();
    else if (e.data?.failed) {
      failed = e.data.failed;
      onExit(failed);
    }
  });
  worker.addEventListener('error', (e) => failed === undefined && onExit(e.message), { once: true });
  return { postMessage: (m) => worker.postMessage(m), terminate: () => worker.terminate(), ref: () => {}, unref: () => {} };
}

/** Workers that die before they are ready are respawned after these delays; then the pool gives up. */
const START_RETRY_MS = [100, 400, 1600];

/** One generation of workers with its own control block and descriptor. */
class Crew {
  readonly ctrlBuffer = new SharedArrayBuffer(CTRL_WORDS * 4);
  readonly jobBuffer = new SharedArrayBuffer(JOB_FIELDS * 8);
  readonly ctrl = new Int32Array(this.ctrlBuffer);
  readonly job = new Float64Array(this.jobBuffer);
  readonly workers: Array<PoolWorker | undefined> = [];
  retired = false;
  /** Resolves once every worker of a retired crew has exited. */
  readonly gone: Promise<void>;
  private live = 0;
  private resolveGone!: () => void;

  constructor() {
    Atomics.store(this.ctrl, C.next, PARKED);
    this.gone = new Promise((resolve) => (this.resolveGone = resolve));
  }

  started(): void {
    this.live++;
  }

  exited(): void {
    this.live--;
    if (this.retired && this.live === 0) this.resolveGone();
  }

  /** Terminates every worker; `gone` resolves when they have all exited. */
  retire(): void {
    if (this.retired) return;
    this.retired = true;
    Atomics.store(this.ctrl, C.next, PARKED);
    Atomics.store(this.ctrl, C.epoch, -1);
    Atomics.notify(this.ctrl, C.epoch);
    for (const worker of this.workers) worker?.terminate();
    if (this.live === 0) this.resolveGone();
  }
}

interface Pending {
  reject: (error?: Error) => void;
}

/** How a sync job ended: clean, or with blocks to keep until a retired crew is gone. */
export type Settled = Promise<void> | undefined;

export class WorkerPool {
  readonly threads: number;
  /** Calls below this many flops skip the pool (the bench lowers it to measure the crossover). */
  minParallelFlops = MIN_PARALLEL_FLOPS;
  /** @internal tests lower it to provoke a stall */
  stallMs = STALL_MS;
  private readonly module: WebAssembly.Module;
  private readonly memory: WebAssembly.Memory;
  private crew: Crew;
  private epoch = 0;
  private inFlight = false;
  private suspect = false;
  private disposed = false;
  private queue: Promise<unknown> = Promise.resolve();
  private pending: Pending | undefined;
  private lastError: unknown;
  /** Workers that died before they were ready, in a row. */
  private startFailures = 0;
  /** @internal workers started, for tests */
  spawned = 0;
  /** Set when workers cannot start: every call then runs on the calling thread. */
  degraded: string | undefined;

  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, threads: number) {
    if (threads > MAX_SLOTS) throw new AttentionError('INVALID_OPTION', `options.threads is ${threads}; at most ${MAX_SLOTS} are supported`, 'options.threads');
    this.module = module;
    this.memory = memory;
    this.threads = threads;
    this.crew = this.hire();
  }

  /** Whether a job is running (a sync call then runs alone on its own thread). */
  get busy(): boolean {
    return this.inFlight;
  }

  /** Whether a sync call of `flops` that streams `streamedBytes`, in `items` items, should use the workers. */
  worthIt(flops: number, streamedBytes: number, items: number): boolean {
    const work = Math.max(flops, FLOPS_PER_STREAMED_BYTE * streamedBytes);
    return !this.inFlight && !this.degraded && work >= this.minParallelFlops && items > 1;
  }

  private hire(): Crew {
    const crew = new Crew();
    for (let slot = 1; slot <= this.threads; slot++) this.spawn(crew, slot);
    return crew;
  }

  private spawn(crew: Crew, slot: number): void {
    let ready = false;
    const onReady = (): void => {
      ready = true;
      this.startFailures = 0;
    };
    const worker = startWorker(onReady, (error) => {
      crew.exited();
      if (crew.workers[slot] !== worker) return;
      crew.workers[slot] = undefined;
      if (crew.retired || this.disposed) return;
      this.lastError = error;
      if (!ready) this.onStartFailure(crew, slot, error);
      else this.onWorkerDeath(crew, slot);
    });
    this.spawned++;
    crew.started();
    const init: WorkerInit = { module: this.module, memory: this.memory, ctrl: crew.ctrlBuffer, job: crew.jobBuffer, slot };
    worker.postMessage(init);
    if (!this.pending) worker.unref(); // referenced only while an async job waits on it
    crew.workers[slot] = worker;
  }

  private setRef(on: boolean): void {
    for (const worker of this.crew.workers) {
      if (on) worker?.ref();
      else worker?.unref();
    }
  }

  /** The worker of a slot, for tests that kill one. @internal */
  workerAt(slot: number): PoolWorker | undefined {
    return this.crew.workers[slot];
  }

  /** Test aid: the worker of `slot` sleeps `ms` before its next item. @internal */
  stallNext(slot: number, ms: number): void {
    Atomics.store(this.crew.ctrl, C.stallMs, ms);
    Atomics.store(this.crew.ctrl, C.stallSlot, slot);
  }

  /**
   * A worker died before it was ready (a runtime that cannot start it, say): respawn it after a
   * growing delay, and after START_RETRY_MS.length tries give up, so a broken start never spins.
   */
  private onStartFailure(crew: Crew, slot: number, error: unknown): void {
    const tries = ++this.startFailures;
    if (tries > START_RETRY_MS.length) {
      this.degraded = `worker threads failed to start ${tries} times in a row (${String(error ?? 'exited')}); calls run on the calling thread`;
      this.pending?.reject(new AttentionError('WORKER_FAILED', this.degraded));
      this.pending = undefined;
      this.inFlight = false;
      return;
    }
    const timer = setTimeout(() => {
      if (!crew.retired && !this.disposed && !crew.workers[slot]) this.onWorkerDeath(crew, slot);
    }, START_RETRY_MS[tries - 1]);
    timer.unref?.();
  }

  /** A worker died: replace it; fail the async job it may have held once the others left it. */
  private onWorkerDeath(crew: Crew, slot: number): void {
    const pending = this.pending;
    if (!pending) {
      if (!this.inFlight) this.spawn(crew, slot);
      else this.suspect = true;
      return;
    }
    // Stop new claims, let the live workers leave their items, then fail the call.
    Atomics.store(crew.ctrl, C.next, PARKED);
    this.pending = undefined;
    const settle = (): void => {
      for (let s = 1; s <= this.threads; s++) {
        if (s !== slot && crew.workers[s] && Atomics.load(crew.ctrl, C.busy + s) === 1) {
          setTimeout(settle, 1);
          return;
        }
      }
      Atomics.store(crew.ctrl, C.busy + slot, 0);
      this.inFlight = false;
      if (!crew.retired && !this.disposed) this.spawn(crew, slot);
      pending.reject(new AttentionError('WORKER_FAILED', `worker thread ${slot} died while it ran this call (${String(this.lastError ?? 'exited')}); the engine has replaced it, the call can be retried`));
    };
    settle();
  }

  /** Waits (blocking, bounded) until no worker holds or is about to take an item; false on timeout. */
  private waitIdle(): boolean {
    const { ctrl, ctrlBuffer } = this.crew;
    const sleeper = new Int32Array(ctrlBuffer, C.epoch * 4, 1);
    const deadline = performance.now() + IDLE_MS;
    for (;;) {
      let busy = false;
      for (let slot = 1; slot <= this.threads; slot++) busy ||= Atomics.load(ctrl, C.busy + slot) === 1;
      if (!busy) return true;
      if (performance.now() > deadline) return false;
      // a browser's main thread may not block in Atomics.wait: it spins on the loads instead
      if (nodeWorkers) Atomics.wait(sleeper, 0, Atomics.load(sleeper, 0), 0.05);
    }
  }

  /** Retires the crew (its memory kept until it is gone, see `Settled`) and hires a new one. */
  private replace(): Promise<void> {
    const old = this.crew;
    old.retire();
    this.suspect = false;
    this.crew = this.hire();
    return old.gone;
  }

  private start(job: Float64Array, slots: number): void {
    // A worker late to leave the previous job must not read this one's descriptor half written.
    if (this.suspect || !this.waitIdle()) void this.replace();
    const { ctrl } = this.crew;
    this.inFlight = true;
    this.crew.job.set(job);
    Atomics.store(ctrl, C.done, 0);
    Atomics.store(ctrl, C.slots, slots);
    Atomics.store(ctrl, C.next, 0);
    this.epoch = (this.epoch + 1) & 0x3fffffff;
    Atomics.store(ctrl, C.epoch, this.epoch);
    Atomics.notify(ctrl, C.epoch);
  }

  private finish(): void {
    Atomics.store(this.crew.ctrl, C.next, PARKED);
    this.inFlight = false;
  }

  /**
   * Runs `job` with the calling thread (slot 0) and threads - 1 workers; returns when it is done,
   * with undefined, or with a promise when a retired crew may still write the job's memory: free
   * the job's blocks only when it resolves.
   */
  runSync(kernels: Kernels, job: Float64Array): Settled {
    const items = job[HEADER.items];
    this.start(job, this.threads - 1);
    const crew = this.crew;
    try {
      claimLoop(kernels, this.memory, crew.ctrl, crew.job, 0);
      let last = Atomics.load(crew.ctrl, C.done);
      let since = performance.now();
      // the workers' last items are usually a few microseconds from done: look before sleeping, as
      // a thread woken from Atomics.wait takes about as long again to run
      while (last < items && performance.now() - since < SPIN_MS) last = Atomics.load(crew.ctrl, C.done);
      while (last < items) {
        Atomics.wait(crew.ctrl, C.done, last, 100);
        const now = Atomics.load(crew.ctrl, C.done);
        if (now !== last) {
          last = now;
          since = performance.now();
        } else if (performance.now() - since > this.stallMs) {
          // a worker stopped finishing items (slow or dead): do the rest here
          this.runUnfinished(kernels, crew, items);
          return this.replace();
        }
      }
      return undefined;
    } catch (error) {
      // this thread failed: stop the workers' claims; wait for them to leave, or retire them
      Atomics.store(crew.ctrl, C.next, PARKED);
      const settled = this.waitIdle() ? undefined : this.replace();
      (error as { settled?: Settled }).settled = settled;
      throw error;
    } finally {
      this.finish();
    }
  }

  /** Runs every item whose flag is not set yet, on this thread. */
  private runUnfinished(kernels: Kernels, crew: Crew, items: number): void {
    Atomics.store(crew.ctrl, C.next, PARKED);
    const flags = new Uint8Array(this.memory.buffer);
    const base = crew.job[HEADER.flags];
    for (let item = 0; item < items; item++) {
      if (Atomics.load(flags, base + item) === 0) runItem(kernels, crew.job, item, 0, new Int32Array(this.memory.buffer));
    }
  }

  /** Runs `job` on the workers alone, after the jobs queued before it; resolves when it is done. */
  runAsync(job: Float64Array): Promise<void> {
    const run = (): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        if (this.disposed) {
          reject(new AttentionError('DISPOSED', 'this engine was disposed'));
          return;
        }
        const items = job[HEADER.items];
        // A pending waitAsync does not keep Node alive: hold the workers referenced while the job runs.
        this.setRef(true);
        const settle = (error?: Error): void => {
          this.setRef(false);
          if (error) reject(error);
          else resolve();
        };
        this.pending = { reject: settle };
        this.start(job, this.threads);
        const { ctrl } = this.crew;
        const poll = (): void => {
          if (this.pending?.reject !== settle) return; // failed and settled by onWorkerDeath
          const done = Atomics.load(ctrl, C.done);
          if (done >= items) {
            this.pending = undefined;
            this.finish();
            settle();
            return;
          }
          const wait = Atomics.waitAsync(ctrl, C.done, done);
          if (wait.async) void wait.value.then(poll);
          else poll();
        };
        poll();
      });
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** Ends the workers (the process can exit); queued async calls are rejected. */
  dispose(): void {
    this.disposed = true;
    this.crew.retire();
    this.pending?.reject(new AttentionError('DISPOSED', 'this engine was disposed while the call ran'));
    this.pending = undefined;
  }
}
