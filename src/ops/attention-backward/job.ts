// Attention backward as a job (see ../../job.ts): one item per (batch, kv head), which computes D =
// rowsum(dOut ∘ out) for the rows of its query heads (and their softmax stats with the forward kernel,
// when the caller did not give the log-sum-exp), then dq of those heads and dk, dv of the kv head with
// f32_attention_backward. No two items write the same gradient and each sums in an order fixed by
// the shape, so the bits never depend on the thread count.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const BACKWARD_JOB = jobLayout(7, [
  'q', 'qB', 'qH', 'qRow', 'k', 'kB', 'kH', 'kRow', 'v', 'vB', 'vH', 'vRow', 'out', 'dOut', 'oB', 'oH', 'oRow', 'stats', 'forwardOut', 'delta',
  'dq', 'dqB', 'dqH', 'dqRow', 'dk', 'dkB', 'dkH', 'dkRow', 'dv', 'dvB', 'dvH', 'dvRow',
  'kvHeads', 'group', 'seqQ', 'seqKV', 'headDim', 'valueDim', 'scale', 'cap',
  'mask', 'maskKind', 'maskBytes', 'mB', 'mH', 'mRow', 'offset', 'left', 'right',
] as const);

const J = BACKWARD_JOB.at;

/** Runs one backward item; see the file header. Every tensor at its strides; the row stats and D packed [B, Hq, Sq]. */
export const runBackwardItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number, scratch: number): void => {
  const kvHeads = job[J.kvHeads];
  const g = item % kvHeads;
  const b = (item - g) / kvHeads;
  const group = job[J.group];
  const seqQ = job[J.seqQ];
  const headDim = job[J.headDim];
  const valueDim = job[J.valueDim];
  const h0 = g * group;
  const firstRow = (b * kvHeads * group + h0) * seqQ; // of the stats and D
  const oAt = 4 * (b * job[J.oB] + h0 * job[J.oH]);
  const oH = job[J.oH];
  const oRow = job[J.oRow];
  const out = job[J.out] + oAt;
  const dOut = job[J.dOut] + oAt;
  const delta = job[J.delta] + 4 * firstRow;
  for (let h = 0; h < group; h++) kernels.f32_rows_dot(out + 4 * h * oH, oRow, dOut + 4 * h * oH, oRow, seqQ, valueDim, delta + 4 * h * seqQ);
  const seqKV = job[J.seqKV];
  const maskBytes = job[J.maskBytes];
  const mask = job[J.mask] === 0 ? 0 : job[J.mask] + maskBytes * (b * job[J.mB] + h0 * job[J.mH]);
  const stats = job[J.stats] + 8 * firstRow;
  if (job[J.forwardOut] !== 0) {
    // the forward again, for each row's [max, sum] (its output is not needed)
    for (let h = 0; h < group; h++) {
      kernels.f32_attention(
        job[J.q] + 4 * (b * job[J.qB] + (h0 + h) * job[J.qH]), job[J.qRow],
        job[J.k] + 4 * (b * job[J.kB] + g * job[J.kH]), job[J.kRow],
        job[J.v] + 4 * (b * job[J.vB] + g * job[J.vH]), job[J.vRow],
        job[J.forwardOut] + 4 * (firstRow + h * seqQ) * valueDim, valueDim, seqQ, seqKV, headDim, valueDim, job[J.scale], job[J.cap],
        mask === 0 ? 0 : mask + maskBytes * h * job[J.mH], job[J.maskKind], job[J.mRow], job[J.offset], job[J.left], job[J.right],
        stats + 8 * h * seqQ, scratch, 0, 0,
      );
    }
  }
  kernels.f32_attention_backward(
    job[J.q] + 4 * (b * job[J.qB] + h0 * job[J.qH]), job[J.qRow], job[J.qH],
    job[J.k] + 4 * (b * job[J.kB] + g * job[J.kH]), job[J.kRow],
    job[J.v] + 4 * (b * job[J.vB] + g * job[J.vH]), job[J.vRow],
    out, dOut, oRow, oH, stats, delta,
    job[J.dq] + 4 * (b * job[J.dqB] + h0 * job[J.dqH]), job[J.dqRow], job[J.dqH],
    job[J.dk] + 4 * (b * job[J.dkB] + g * job[J.dkH]), job[J.dkRow], job[J.dv] + 4 * (b * job[J.dvB] + g * job[J.dvH]), job[J.dvRow],
    group, seqQ, seqKV, headDim, valueDim, job[J.scale], job[J.cap],
    mask, job[J.maskKind], job[J.mRow], job[J.mH], job[J.offset], job[J.left], job[J.right], scratch,
  );
};
