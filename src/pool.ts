// The thread pool: worker_threads that each instantiate the engine's compiled module over the
// engine's one shared WebAssembly.Memory, and run the items of one job at a time (jobs.ts).
//
// Sync calls: the calling thread runs items too (slot 0) with `threads - 1` workers, and blocks in
// Atomics.wait until the last item is done. Async calls: `threads` workers run the items while the
// calling thread's event loop stays free; Atomics.waitAsync tells it when they are done. Async calls
// queue, one job at a time; a sync call that finds the pool busy runs on its own thread alone (the
// result is the same bits either way).
//
// A worker that dies: an async job it held is rejected once the other workers have left their
// items (so no one writes into the call's memory afterwards), and the worker is replaced. A sync
// job cannot see the death event while it blocks, so if no item finishes for STALL_MS it runs the
// unfinished items itself, and the pool replaces every worker before its next job.
import { AttentionError } from './errors.js';
import { J, JOB_FIELDS, runItem } from './jobs.js';
import { nodeWorkers } from './platform.js';
import { C, CTRL_WORDS, FLAGS_FIELD, PARKED, SLOTS_WORD, type WorkerInit, claimLoop } from './pool-protocol.js';
import type { Kernels } from './wasm-module.js';

const STALL_MS = 5000;
/** How long start() waits for the workers of the previous job to leave it. */
const IDLE_MS = 2000;
const MAX_SLOTS = CTRL_WORDS - C.busy - 1;
const WORKER_URL = new URL('../dist/worker.js', import.meta.url);

/** What the pool needs of a worker: Node's worker_threads Worker, or a browser's module Worker. */
interface PoolWorker {
  postMessage(message: unknown): void;
  terminate(): void;
  ref(): void;
  unref(): void;
}

/** Starts a worker running dist/worker.js; `onDeath` runs once if it exits or fails. */
function startWorker(onDeath: (error: unknown) => void): PoolWorker {
  if (nodeWorkers) {
    // execArgv: [] keeps flags meant for the main script (--input-type, --eval ...) out of the workers;
    // V8 flags such as --experimental-wasm-relaxed-simd are process-wide and apply to them anyway.
    const worker = new nodeWorkers.Worker(WORKER_URL, { execArgv: [] });
    let error: unknown;
    worker.on('error', (e) => (error = e));
    worker.on('exit', () => onDeath(error));
    return { postMessage: (m) => worker.postMessage(m), terminate: () => void worker.terminate(), ref: () => worker.ref(), unref: () => worker.unref() };
  }
  const worker = new Worker(WORKER_URL, { type: 'module' });
  worker.addEventListener('error', (e) => onDeath(e.message), { once: true });
  return { postMessage: (m) => worker.postMessage(m), terminate: () => worker.terminate(), ref: () => {}, unref: () => {} };
}

interface Pending {
  reject: (error?: Error) => void;
}

export class WorkerPool {
  readonly threads: number;
  private readonly module: WebAssembly.Module;
  private readonly memory: WebAssembly.Memory;
  private readonly ctrlBuffer = new SharedArrayBuffer(CTRL_WORDS * 4);
  private readonly jobBuffer = new SharedArrayBuffer(JOB_FIELDS * 8);
  private readonly ctrl = new Int32Array(this.ctrlBuffer);
  private readonly job = new Float64Array(this.jobBuffer);
  private readonly workers: Array<PoolWorker | undefined> = [];
  private epoch = 0;
  private inFlight = false;
  private suspect = false;
  private disposed = false;
  private queue: Promise<unknown> = Promise.resolve();
  private pending: Pending | undefined;
  private lastError: unknown;

  constructor(module: WebAssembly.Module, memory: WebAssembly.Memory, threads: number) {
    if (threads > MAX_SLOTS) throw new AttentionError('INVALID_OPTION', `options.threads is ${threads}; at most ${MAX_SLOTS} are supported`, 'options.threads');
    this.module = module;
    this.memory = memory;
    this.threads = threads;
    Atomics.store(this.ctrl, C.next, PARKED);
    for (let slot = 1; slot <= threads; slot++) this.spawn(slot);
  }

  /** Whether a job is running (a sync call then runs alone on its own thread). */
  get busy(): boolean {
    return this.inFlight;
  }

  private spawn(slot: number): void {
    const worker = startWorker((error) => {
      if (this.workers[slot] !== worker) return;
      this.workers[slot] = undefined;
      if (this.disposed) return;
      this.lastError = error;
      this.onWorkerDeath(slot);
      this.spawn(slot);
    });
    const init: WorkerInit = { module: this.module, memory: this.memory, ctrl: this.ctrlBuffer, job: this.jobBuffer, slot };
    worker.postMessage(init);
    if (!this.pending) worker.unref(); // referenced only while an async job waits on it
    this.workers[slot] = worker;
  }

  private setRef(on: boolean): void {
    for (const worker of this.workers) {
      if (on) worker?.ref();
      else worker?.unref();
    }
  }

  /** The slots of the workers, for tests that kill one. @internal */
  workerAt(slot: number): PoolWorker | undefined {
    return this.workers[slot];
  }

  private onWorkerDeath(slot: number): void {
    const pending = this.pending;
    if (!pending) return;
    // Stop new claims, let the live workers leave their items, then fail the call.
    Atomics.store(this.ctrl, C.next, PARKED);
    this.pending = undefined;
    const settle = (): void => {
      for (let s = 1; s <= this.threads; s++) {
        if (s !== slot && this.workers[s] && Atomics.load(this.ctrl, C.busy + s) === 1) {
          setTimeout(settle, 1);
          return;
        }
      }
      Atomics.store(this.ctrl, C.busy + slot, 0);
      this.inFlight = false;
      pending.reject(new AttentionError('WORKER_FAILED', `worker thread ${slot} died while it ran this call (${String(this.lastError ?? "exited")}); the engine has replaced it, the call can be retried`));
    };
    settle();
  }

  /** Waits (blocking, bounded) until no worker holds or is about to take an item; false on timeout. */
  private waitIdle(): boolean {
    const sleeper = new Int32Array(this.ctrlBuffer, C.epoch * 4, 1);
    const deadline = performance.now() + IDLE_MS;
    for (;;) {
      let busy = false;
      for (let slot = 1; slot <= this.threads; slot++) busy ||= Atomics.load(this.ctrl, C.busy + slot) === 1;
      if (!busy) return true;
      if (performance.now() > deadline) return false;
      // a browser's main thread may not block in Atomics.wait: it spins on the loads instead
      if (nodeWorkers) Atomics.wait(sleeper, 0, Atomics.load(sleeper, 0), 0.05);
    }
  }

  private start(job: Float64Array, slots: number): void {
    // A worker late to leave the previous job must not read this one's descriptor half written.
    if (this.suspect || !this.waitIdle()) this.replaceAll();
    this.inFlight = true;
    this.job.set(job);
    Atomics.store(this.ctrl, C.done, 0);
    Atomics.store(this.ctrl, SLOTS_WORD, slots);
    Atomics.store(this.ctrl, C.next, 0);
    this.epoch = (this.epoch + 1) & 0x3fffffff;
    Atomics.store(this.ctrl, C.epoch, this.epoch);
    Atomics.notify(this.ctrl, C.epoch);
  }

  private finish(): void {
    Atomics.store(this.ctrl, C.next, PARKED);
    this.inFlight = false;
  }

  private replaceAll(): void {
    this.suspect = false;
    for (let slot = 1; slot <= this.threads; slot++) {
      const worker = this.workers[slot];
      this.workers[slot] = undefined;
      Atomics.store(this.ctrl, C.busy + slot, 0);
      worker?.terminate();
      this.spawn(slot);
    }
  }

  /**
   * Runs `job` with the calling thread (slot 0) and threads - 1 workers; returns when it is done.
   * Returns true when the call's memory must not be reused: a worker stalled and its items were run
   * here, or this thread failed, while a worker may still be writing.
   */
  runSync(kernels: Kernels, job: Float64Array): boolean {
    const items = job[J.items];
    this.start(job, this.threads - 1);
    let settled = false;
    try {
      claimLoop(kernels, this.memory, this.ctrl, this.job, 0);
      let last = Atomics.load(this.ctrl, C.done);
      let since = performance.now();
      while (last < items) {
        Atomics.wait(this.ctrl, C.done, last, 100);
        const now = Atomics.load(this.ctrl, C.done);
        if (now !== last) {
          last = now;
          since = performance.now();
        } else if (performance.now() - since > STALL_MS) {
          this.recover(kernels, items);
          return true;
        }
      }
      settled = true;
      return false;
    } finally {
      this.finish();
      if (!settled) this.suspect = true;
    }
  }

  /** A worker stopped finishing items: run what is left here and replace the workers before the next job. */
  private recover(kernels: Kernels, items: number): void {
    this.suspect = true;
    const flags = new Uint8Array(this.memory.buffer);
    const base = this.job[FLAGS_FIELD];
    for (let item = 0; item < items; item++) {
      if (Atomics.load(flags, base + item) === 0) runItem(kernels, this.job, item, 0, new Int32Array(this.memory.buffer));
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
        const items = job[J.items];
        // A pending waitAsync does not keep Node alive: hold the workers referenced while the job runs.
        this.setRef(true);
        const settle = (error?: Error): void => {
          this.setRef(false);
          if (error) reject(error);
          else resolve();
        };
        this.pending = { reject: settle };
        this.start(job, this.threads);
        const poll = (): void => {
          if (this.pending?.reject !== settle) return; // failed and settled by onWorkerDeath
          const done = Atomics.load(this.ctrl, C.done);
          if (done >= items) {
            this.pending = undefined;
            this.finish();
            settle();
            return;
          }
          const wait = Atomics.waitAsync(this.ctrl, C.done, done);
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
    Atomics.store(this.ctrl, C.epoch, -1);
    Atomics.notify(this.ctrl, C.epoch);
    for (const worker of this.workers) worker?.terminate();
    this.pending?.reject(new AttentionError('DISPOSED', 'this engine was disposed while the call ran'));
    this.pending = undefined;
  }
}
