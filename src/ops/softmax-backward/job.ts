// Softmax backward as a job (see ../../job.ts): an item is a block of SOFTMAX_BACKWARD_ROW_CHUNK rows,
// handed to the f32_softmax_backward_rows kernel. Rows are independent: any thread count, same bits.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const SOFTMAX_BACKWARD_JOB = jobLayout(8, ['y', 'dy', 'dx', 'rows', 'cols', 'scale', 'rowChunk'] as const);
const J = SOFTMAX_BACKWARD_JOB.at;

export const SOFTMAX_BACKWARD_ROW_CHUNK = 64;

export const runSoftmaxBackwardItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number): void => {
  const row0 = item * job[J.rowChunk];
  const offset = 4 * row0 * job[J.cols];
  kernels.f32_softmax_backward_rows(job[J.y] + offset, job[J.dy] + offset, job[J.dx] + offset, Math.min(job[J.rowChunk], job[J.rows] - row0), job[J.cols], job[J.scale]);
};
