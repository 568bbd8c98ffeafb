// What the engine's thread and its workers share: a small control block (Int32Array over a
// SharedArrayBuffer), the job descriptor (Float64Array, see jobs.ts), and the claim loop that both
// run. Items are claimed with Atomics.add on `next`; each finished item sets its flag and bumps
// `done`, and the last one wakes whoever waits on `done`. Between jobs `next` is parked far past any
// item count, so a worker that wakes late claims nothing of a job it did not see start.
import { J, runItem } from './jobs.js';
import type { Kernels } from './wasm-module.js';

export const C = {
  /** Job number; workers wait on it. Negative: shut down. */
  epoch: 0,
  /** Next item to claim. */
  next: 1,
  /** Items finished. */
  done: 2,
  /** First of one word per slot: 1 while that slot runs an item. */
  busy: 8,
} as const;

export const PARKED = 0x3fffffff;
export const CTRL_WORDS = C.busy + 256;
/** Job field: address of the item flags (one byte per item, 1 when done). */
export const FLAGS_FIELD = 47;

export interface WorkerInit {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  ctrl: SharedArrayBuffer;
  job: SharedArrayBuffer;
  slot: number;
}

/** Control word: the highest slot that may join the current job. */
export const SLOTS_WORD = 3;

/** Claims and runs items of the current job until none is left (if `slot` may join it). */
export function claimLoop(kernels: Kernels, memory: WebAssembly.Memory, ctrl: Int32Array, job: Float64Array, slot: number): void {
  if (slot > Atomics.load(ctrl, SLOTS_WORD)) return;
  for (;;) {
    // busy is raised before the claim, so that whoever parks `next` and then waits for every busy
    // word to drop knows no one still holds (or is about to take) an item of the stopped job
    Atomics.store(ctrl, C.busy + slot, 1);
    const item = Atomics.add(ctrl, C.next, 1);
    const items = job[J.items];
    if (item >= items) {
      Atomics.store(ctrl, C.busy + slot, 0);
      return;
    }
    const buffer = memory.buffer;
    runItem(kernels, job, item, slot, new Int32Array(buffer));
    Atomics.store(new Uint8Array(buffer), job[FLAGS_FIELD] + item, 1);
    Atomics.store(ctrl, C.busy + slot, 0);
    if (Atomics.add(ctrl, C.done, 1) + 1 === items) Atomics.notify(ctrl, C.done);
  }
}
