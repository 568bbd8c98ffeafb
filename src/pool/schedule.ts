// Where a job's items run: the policy between the calling thread and the pool, and the memory that
// takes. Every thread that may run items (slot 0 is the calling thread) gets its own scratch, sized by
// the op; on the pool, a byte per item flags it done (so a stalled call can run what is left).
import type { Kernels } from '../backends/kernels.js';
import type { WasmCall } from '../backend.js';
import { HEADER } from '../job.js';
import { isNode } from '../platform.js';
import type { Settled, WorkerPool } from './pool.js';
import { runItem } from './protocol.js';

/** What laying out a job needs of the call: blocks, and views of memory. */
type Blocks = Pick<WasmCall, 'alloc' | 'u8' | 'i32'>;

/** Scratch for `slots` threads and, with more than one, the item flags. */
function layout(job: Float64Array, scratchBytes: number, slots: number, blocks: Blocks): void {
  const perSlot = Math.ceil(Math.max(scratchBytes, 64) / 64) * 64;
  job[HEADER.scratch] = blocks.alloc(perSlot * slots);
  job[HEADER.scratchBytes] = perSlot;
  if (slots > 1) {
    job[HEADER.flags] = blocks.alloc(job[HEADER.items]);
    blocks.u8.fill(0, job[HEADER.flags], job[HEADER.flags] + job[HEADER.items]);
  }
}

/** Every item on the calling thread. */
function runHere(kernels: Kernels, job: Float64Array, scratchBytes: number, blocks: Blocks): void {
  layout(job, scratchBytes, 1, blocks);
  const i32 = blocks.i32;
  for (let item = 0; item < job[HEADER.items]; item++) runItem(kernels, job, item, 0, i32);
}

/**
 * Runs a job now: on the calling thread and the pool when the pool is free and the call is worth
 * it (a browser's main thread may not block, so there it runs alone), else here alone.
 */
export function runJob(pool: WorkerPool | undefined, kernels: Kernels, job: Float64Array, scratchBytes: number, cost: { flops: number; streamedBytes?: number }, blocks: Blocks): Settled {
  if (job[HEADER.items] === 0) return undefined;
  if (pool && isNode && pool.worthIt(cost.flops, cost.streamedBytes ?? 0, job[HEADER.items])) {
    layout(job, scratchBytes, 1 + pool.threads, blocks);
    return pool.runSync(kernels, job);
  }
  runHere(kernels, job, scratchBytes, blocks);
  return undefined;
}

/** Runs a job on the pool's workers, the calling thread free (here when there are none that work). */
export async function runJobAsync(pool: WorkerPool | undefined, kernels: Kernels, job: Float64Array, scratchBytes: number, blocks: Blocks): Promise<void> {
  if (job[HEADER.items] === 0) return;
  if (pool && !pool.degraded) {
    layout(job, scratchBytes, 1 + pool.threads, blocks);
    await pool.runAsync(job);
  } else {
    runHere(kernels, job, scratchBytes, blocks);
  }
}
