// Continuous batching for servers: batcher.step(sequence, q, k, v) returns a promise, and the calls
// that arrive while a step runs (from many HTTP requests, say) go into the next pool.stepAsync
// together. Each call is read and checked when it is made (a bad call is refused at once, alone).
// A batch takes queued calls in arrival order that share the first one's options, at most one per
// sequence and at most maxBatch; a call left out keeps every later call of its sequence out too, so
// one sequence's steps run in the order they were made. If a batch of several calls fails (a step
// that does not fit, say), its calls run again one by one, so the error reaches only the call it
// belongs to.
import { AttentionError } from '../errors.js';
import { type Tensor, type TensorLike, checkFinite, checkInteger, readOptions } from '../tensor.js';

export interface BatcherOptions {
  /** Calls per step, at most; default 64. */
  maxBatch?: number;
  /** How long an idle batcher waits for more calls before it starts a step; default 0 (the calls made in the same turn of the event loop). */
  maxWaitMs?: number;
}

/** What the batcher needs of a step read by the pool: its sequences and options. */
export interface BatchRead<S> {
  entries: ReadonlyArray<{ sequence: S }>;
  scale: number;
  softcap: number;
  left: number;
  rope: { base: number; dims: number; interleaved: boolean } | undefined;
}

/** What the batcher needs of the pool: reading a step when a call is made, marking it pending, and running steps in turn. */
export interface StepQueue<S, R extends BatchRead<S>> {
  readStep(items: ReadonlyArray<{ sequence: S; q: unknown; k: unknown; v: unknown }>, options: unknown, copy: boolean): R;
  hold(read: R, by: 1 | -1): void;
  queued(read: R): Promise<Tensor[]>;
}

interface Waiting<R> {
  read: R;
  /** Calls with equal keys have equal options and may share a step. */
  key: string;
  resolve: (output: Tensor) => void;
  reject: (error: unknown) => void;
}

const optionsKey = ({ scale, softcap, left, rope }: BatchRead<unknown>): string =>
  [scale, softcap, left, rope ? `${rope.base}/${rope.dims}/${rope.interleaved}` : ''].join('|');

/** @internal use pool.batcher() */
export class StepBatcher<S, R extends BatchRead<S>> {
  private readonly maxBatch: number;
  private readonly maxWaitMs: number;
  private queue: Array<Waiting<R>> = [];
  private running = false;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly pool: StepQueue<S, R>, options: unknown) {
    const opts = readOptions(options, 'options', ['maxBatch', 'maxWaitMs']);
    const maxBatch = checkInteger(opts.maxBatch, 'options.maxBatch', 1, 64);
    const maxWaitMs = checkFinite(opts.maxWaitMs, 'options.maxWaitMs', 0);
    if (maxWaitMs < 0) throw new AttentionError('INVALID_OPTION', `options.maxWaitMs must be >= 0, got ${maxWaitMs}`, 'options.maxWaitMs');
    this.maxBatch = maxBatch;
    this.maxWaitMs = maxWaitMs;
  }

  get waiting(): number {
    return this.queue.length;
  }

  step(sequence: S, q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: unknown): Promise<Tensor> {
    let read: R;
    try {
      read = this.pool.readStep([{ sequence, q, k, v }], options, true);
    } catch (error) {
      return Promise.reject(error);
    }
    this.pool.hold(read, 1);
    return new Promise<Tensor>((resolve, reject) => {
      this.queue.push({ read, key: optionsKey(read), resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.running || this.timer !== undefined || this.queue.length === 0) return;
    const wait = this.queue.length >= this.maxBatch ? 0 : this.maxWaitMs;
    // no wait: after the calls made in this turn of the event loop (setImmediate in Node, a 0 ms timer elsewhere)
    const soon = wait === 0 && typeof setImmediate === 'function';
    this.timer = soon ? (setImmediate(() => this.flush()) as unknown as ReturnType<typeof setTimeout>) : setTimeout(() => this.flush(), wait);
  }

  /** The next batch, taken out of the queue (see the file header). */
  private take(): Array<Waiting<R>> {
    const key = this.queue[0].key;
    const batch: Array<Waiting<R>> = [];
    const rest: Array<Waiting<R>> = [];
    const held = new Set<S>();
    for (const call of this.queue) {
      const sequence = call.read.entries[0].sequence;
      if (batch.length < this.maxBatch && call.key === key && !held.has(sequence)) batch.push(call);
      else rest.push(call);
      held.add(sequence);
    }
    this.queue = rest;
    return batch;
  }

  private async flush(): Promise<void> {
    this.timer = undefined;
    this.running = true;
    const batch = this.take();
    const settle = (call: Waiting<R>, outcome: { output?: Tensor; error?: unknown }): void => {
      this.pool.hold(call.read, -1);
      if ('error' in outcome) call.reject(outcome.error);
      else call.resolve(outcome.output!);
    };
    try {
      const merged: R = { ...batch[0].read, entries: batch.map((call) => call.read.entries[0]) };
      const outputs = await this.pool.queued(merged);
      batch.forEach((call, i) => settle(call, { output: outputs[i] }));
    } catch (error) {
      if (batch.length === 1) settle(batch[0], { error });
      else {
        for (const call of batch) {
          try {
            settle(call, { output: (await this.pool.queued(call.read))[0] });
          } catch (alone) {
            settle(call, { error: alone });
          }
        }
      }
    } finally {
      this.running = false;
      this.schedule();
    }
  }
}
