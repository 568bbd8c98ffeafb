// Softmax as a job (see ../../job.ts): an item is one (matrix, SOFTMAX_ROW_CHUNK rows) block,
// handed to the f32_softmax_rows kernel.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const SOFTMAX_JOB = jobLayout(3, [
  'x', 'out', 'rows', 'cols', 'scale', 'mask', 'maskKind', 'maskBytes', 'maskRow', 'causal', 'maskOffsets', 'rowChunk', 'rowChunks',
] as const);
const J = SOFTMAX_JOB.at;

export const SOFTMAX_ROW_CHUNK = 64;

/** Runs one softmax item; the per-matrix mask offsets are i32s at job.maskOffsets. */
export const runSoftmaxItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number, _scratch: number, i32: Int32Array): void => {
  const rowChunks = job[J.rowChunks];
  const rc = item % rowChunks;
  const matrix = (item - rc) / rowChunks;
  const rows = job[J.rows], cols = job[J.cols];
  const row0 = rc * job[J.rowChunk];
  const offset = 4 * (matrix * rows * cols + row0 * cols);
  const maskBytes = job[J.maskBytes];
  const mask = job[J.mask] === 0 ? 0 : job[J.mask] + maskBytes * (i32[(job[J.maskOffsets] >>> 2) + matrix] + row0 * job[J.maskRow]);
  kernels.f32_softmax_rows(
    job[J.x] + offset, cols, job[J.out] + offset, cols, Math.min(job[J.rowChunk], rows - row0), cols,
    job[J.scale], 0, mask, job[J.maskKind], job[J.maskRow], job[J.causal], row0,
  );
};
