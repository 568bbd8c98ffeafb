// Attention backward as a job (see ../../job.ts), in one of two cuts:
// - whole: one item per (batch, kv head), which computes D = rowsum(dOut ∘ out) for the rows of its
//   query heads (and their softmax stats with the forward kernel, when the caller did not give the
//   log-sum-exp), then dq of those heads and dk, dv of the kv head with f32_attention_backward;
// - split (fewer (batch, kv head) pairs than threads, the stats and D computed before the job): per
//   pair, `keyItems` items of dk and dv for a range of keys, then `rowItems` items of dq for a range of
//   rows, each recomputing the scores it needs (7 products per tile instead of 5, on as many threads as
//   there are items). Items go pair-minor, so that the first claimed are the largest under causal.
// No two items write the same gradient and each gradient is summed in the order the kernel fixes
// whatever its parts (see f32_attention_backward), so the bits depend neither on the thread count nor
// on the cut.
import type { Kernels } from '../../backends/kernels.js';
import { HEADER, type ItemRunner, jobLayout } from '../../job.js';

export const BACKWARD_JOB = jobLayout(7, [
  'q', 'qB', 'qH', 'qRow', 'k', 'kB', 'kH', 'kRow', 'v', 'vB', 'vH', 'vRow', 'out', 'dOut', 'oB', 'oH', 'oRow', 'stats', 'forwardOut', 'delta',
  'dq', 'dqB', 'dqH', 'dqRow', 'dk', 'dkB', 'dkH', 'dkRow', 'dv', 'dvB', 'dvH', 'dvRow',
  'kvHeads', 'group', 'seqQ', 'seqKV', 'headDim', 'valueDim', 'scale', 'cap',
  'mask', 'maskKind', 'maskBytes', 'mB', 'mH', 'mRow', 'offset', 'left', 'right',
  'keyItems', 'keyStep', 'rowItems', 'rowStep',
] as const);

/** The kernel's parts (assembly/f32-attention-backward-simd.ts). */
const DQ = 1;
const DKV = 2;

const J = BACKWARD_JOB.at;

/** D = rowsum(dOut ∘ out) of the rows of the query heads of (batch b, kv head g), into the job's delta. */
export function pairDelta(kernels: Kernels, job: Float64Array, b: number, g: number): void {
  const [group, seqQ, oH, oRow] = [job[J.group], job[J.seqQ], job[J.oH], job[J.oRow]];
  const h0 = g * group;
  const delta = job[J.delta] + 4 * (b * job[J.kvHeads] * group + h0) * seqQ;
  for (let h = 0; h < group; h++) {
    const at = 4 * (b * job[J.oB] + (h0 + h) * oH);
    kernels.f32_rows_dot(job[J.out] + at, oRow, job[J.dOut] + at, oRow, seqQ, job[J.valueDim], delta + 4 * h * seqQ);
  }
}

/** Runs one backward item; see the file header. Every tensor at its strides; the row stats and D packed [B, Hq, Sq]. */
export const runBackwardItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number, scratch: number): void => {
  const kvHeads = job[J.kvHeads];
  const seqQ = job[J.seqQ];
  const seqKV = job[J.seqKV];
  const split = job[J.keyItems] > 0;
  let parts = DQ | DKV;
  let [rowLo, rowHi, keyLo, keyHi] = [0, seqQ, 0, seqKV];
  if (split) {
    const pairs = job[HEADER.items] / (job[J.keyItems] + job[J.rowItems]);
    const piece = Math.floor(item / pairs);
    item %= pairs;
    if (piece < job[J.keyItems]) {
      parts = DKV;
      keyLo = piece * job[J.keyStep];
      keyHi = Math.min(seqKV, keyLo + job[J.keyStep]);
    } else {
      // dq of the last rows first: under causal they see the most keys
      parts = DQ;
      rowLo = (job[J.rowItems] - 1 - (piece - job[J.keyItems])) * job[J.rowStep];
      rowHi = Math.min(seqQ, rowLo + job[J.rowStep]);
    }
  }
  const g = item % kvHeads;
  const b = (item - g) / kvHeads;
  const group = job[J.group];
  const headDim = job[J.headDim];
  const valueDim = job[J.valueDim];
  const h0 = g * group;
  const firstRow = (b * kvHeads * group + h0) * seqQ; // of the stats and D
  const oAt = 4 * (b * job[J.oB] + h0 * job[J.oH]);
  // split: D came before the job (every item reads all of it)
  if (!split) pairDelta(kernels, job, b, g);
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
    job[J.out] + oAt, job[J.dOut] + oAt, job[J.oRow], job[J.oH], stats, job[J.delta] + 4 * firstRow,
    job[J.dq] + 4 * (b * job[J.dqB] + h0 * job[J.dqH]), job[J.dqRow], job[J.dqH],
    job[J.dk] + 4 * (b * job[J.dkB] + g * job[J.dkH]), job[J.dkRow], job[J.dv] + 4 * (b * job[J.dvB] + g * job[J.dvH]), job[J.dvRow],
    group, seqQ, seqKV, headDim, valueDim, job[J.scale], job[J.cap],
    mask, job[J.maskKind], job[J.mRow], job[J.mH], job[J.offset], job[J.left], job[J.right], scratch,
    parts, rowLo, rowHi, keyLo, keyHi,
  );
};
