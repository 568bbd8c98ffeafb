// RoPE as a job (see ../../job.ts): an item is one (batch·head, ROPE_ROW_CHUNK tokens) block of
// rows, handed to the f32_rope_rows kernel with the matching rows of the cos/sin tables.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const ROPE_JOB = jobLayout(4, [
  'x', 'out', 'heads', 'seq', 'headDim', 'dims', 'strideB', 'strideH', 'strideS', 'cos', 'sin', 'tableBatchStride', 'interleaved',
  'rowChunk', 'rowChunks',
] as const);
const J = ROPE_JOB.at;

export const ROPE_ROW_CHUNK = 64;

/** Runs one RoPE item: rows s0 .. s0 + rowChunk of head h of batch entry b. */
export const runRopeItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number): void => {
  const rowChunks = job[J.rowChunks];
  const rc = item % rowChunks;
  const bh = (item - rc) / rowChunks;
  const heads = job[J.heads];
  const h = bh % heads;
  const b = (bh - h) / heads;
  const seq = job[J.seq];
  const s0 = rc * job[J.rowChunk];
  const strideS = job[J.strideS];
  const offset = 4 * (b * job[J.strideB] + h * job[J.strideH] + s0 * strideS);
  const half = job[J.dims] / 2;
  const table = 4 * (b * job[J.tableBatchStride] + s0) * half;
  kernels.f32_rope_rows(
    job[J.x] + offset, strideS, job[J.out] + offset, strideS, Math.min(job[J.rowChunk], seq - s0), job[J.headDim], job[J.dims],
    job[J.cos] + table, job[J.sin] + table, half, job[J.interleaved],
  );
};
