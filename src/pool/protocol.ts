// What the engine's thread and its workers share: a small control block (Int32Array over a
// SharedArrayBuffer), the job descriptor (Float64Array, see ../job.ts), and the claim loop that
// both run. Items are claimed with Atomics.add on `next`; each finished item sets its flag and
// bumps `done`, and the last one wakes whoever waits on `done`. Between jobs `next` is parked far
// past any item count, so a worker that wakes late claims nothing of a job it did not see start.
// A crew of workers (pool.ts) has its own control block and descriptor: a worker of a crew that
// was replaced can never touch the next crew's jobs.
import type { Kernels } from '../backends/kernels.js';
import { HEADER, scratchOf } from '../job.js';
import { ITEM_RUNNERS } from '../ops/items.js';

export const C = {
  /** Job number; workers wait on it. Negative: shut down. */
  epoch: 0,
  /** Next item to claim. */
  next: 1,
  /** Items finished. */
  done: 2,
  /** The highest slot that may join the current job. */
  slots: 3,
  /** Test aid: a slot number whose worker sleeps `stallMs` before its next item (0: none). */
  stallSlot: 4,
  stallMs: 5,
  /** First of one word per slot: 1 while that slot runs an item. */
  busy: 8,
} as const;

export const PARKED = 0x3fffffff;
export const CTRL_WORDS = C.busy + 256;

export interface WorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  ctrl: SharedArrayBuffer;
  job: SharedArrayBuffer;
  slot: number;
}

/** Runs item `item` of `job` with the scratch of thread slot `slot`. */
export function runItem(kernels: Kernels, job: Float64Array, item: number, slot: number, i32: Int32Array): void {
  const runner = ITEM_RUNNERS.get(job[HEADER.op]);
  if (!runner) throw new Error(`wasm-attention internal error: unknown job op ${job[HEADER.op]}`);
  runner(kernels, job, item, scratchOf(job, slot), i32);
}

/** Claims and runs items of the current job until none is left (if `slot` may join it). */
export function claimLoop(kernels: Kernels, memory: WebAssembly.Memory, ctrl: Int32Array, job: Float64Array, slot: number): void {
  if (slot > Atomics.load(ctrl, C.slots)) return;
  for (;;) {
    // busy is raised before the claim, so that whoever parks `next` and then waits for every busy
    // word to drop knows no one still holds (or is about to take) an item of the stopped job
    Atomics.store(ctrl, C.busy + slot, 1);
    const item = Atomics.add(ctrl, C.next, 1);
    const items = job[HEADER.items];
    if (item >= items) {
      Atomics.store(ctrl, C.busy + slot, 0);
      return;
    }
    if (slot > 0 && Atomics.load(ctrl, C.stallSlot) === slot) {
      Atomics.store(ctrl, C.stallSlot, 0);
      Atomics.wait(ctrl, C.stallMs + 1, 0, Atomics.load(ctrl, C.stallMs));
    }
    const buffer = memory.buffer;
    runItem(kernels, job, item, slot, new Int32Array(buffer));
    Atomics.store(new Uint8Array(buffer), job[HEADER.flags] + item, 1);
    Atomics.store(ctrl, C.busy + slot, 0);
    if (Atomics.add(ctrl, C.done, 1) + 1 === items) Atomics.notify(ctrl, C.done);
  }
}
