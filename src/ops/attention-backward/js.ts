// Attention backward in plain TypeScript over Float32Arrays (float64 sums): the fallback where WASM
// SIMD is missing and the second implementation the kernels are checked against.
//
// For each (batch, kv head), every query row i of the query heads that read it, and every key j the
// row sees (causal, window, mask as in the forward), with the probabilities recomputed from the
// forward's log-sum-exp L_i (never the Sq x Skv matrix):
//   z = scale · q_i·k_j,  t = softcap(z) + mask,  P_ij = exp(t - L_i),  D_i = dOut_i · out_i
//   dv_j += P_ij dOut_i,  dS_ij = P_ij (dOut_i·v_j - D_i) · softcap'(z) · scale
//   dq_i += dS_ij k_j,    dk_j += dS_ij q_i
// dk and dv gather a whole kv head in float64 before they are written, in a fixed order. With rope,
// q and k are rotated as in the forward and dq, dk turned back by the opposite angles. out and dOut
// are read, and dq, dk, dv written, at the strides of the forward's output and of q, k, v.
import { type ArrayOf, resultArray } from '../../backend.js';
import { scoredInputs } from '../attention/js.js';
import type { AttentionRope, HeadStrides, RopeTables } from '../attention/plan.js';
import { rotateRows } from '../rope/js.js';
import { type AttentionBackwardPlan, type AttentionGradients, trustedLogSumExp } from './plan.js';

export function attentionBackwardJs(plan: AttentionBackwardPlan, arrayOf: ArrayOf): AttentionGradients {
  const f = plan.forward;
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, scale, softcap, offset, left, right, mask, strides, rope } = f;
  const { q, k, qStrides, kStrides } = scoredInputs(f, arrayOf);
  const v = arrayOf(f.v);
  const out = arrayOf(plan.output);
  const dOut = arrayOf(plan.gradOutput);
  const given = plan.logSumExp && arrayOf(plan.logSumExp);
  const lse = given && trustedLogSumExp(given) ? given : undefined;
  const stats = new Float64Array(2);
  const maskData = mask ? arrayOf(mask.operand) : undefined;
  const boolMask = mask?.kind === 'bool';
  // every row of each is written below, so a given array needs no clearing
  const { into } = plan;
  const dq = into.dq ? arrayOf(into.dq) : new Float32Array(batch * qHeads * seqQ * headDim);
  const dk = into.dk ? arrayOf(into.dk) : new Float32Array(batch * kvHeads * seqKV * headDim);
  const dv = into.dv ? arrayOf(into.dv) : new Float32Array(batch * kvHeads * seqKV * valueDim);
  const at = { o: strides.out, dq: strides.q, dk: strides.k, dv: strides.v };
  const group = kvHeads === 0 ? 1 : qHeads / kvHeads;
  const dkSum = new Float64Array(seqKV * headDim);
  const dvSum = new Float64Array(seqKV * valueDim);
  const dqRow = new Float64Array(headDim);
  const invCap = softcap > 0 ? 1 / softcap : 0;
  for (let b = 0; b < batch; b++) {
    for (let g = 0; g < kvHeads; g++) {
      const kBase = b * kStrides.batch + g * kStrides.head;
      const vBase = b * strides.v.batch + g * strides.v.head;
      dkSum.fill(0);
      dvSum.fill(0);
      for (let h = g * group; h < (g + 1) * group; h++) {
        for (let i = 0; i < seqQ; i++) {
          const row = (b * qHeads + h) * seqQ + i;
          const qRow = b * qStrides.batch + h * qStrides.head + i * qStrides.row;
          const oRow = b * at.o.batch + h * at.o.head + i * at.o.row;
          const maskRow = mask ? b * mask.at.batch + h * mask.at.head + i * mask.at.row : 0;
          const lo = left < 0 ? 0 : Math.max(0, i + offset - left);
          const hi = right < 0 ? seqKV : Math.min(seqKV, i + offset + right + 1);
          // P = exp(t - m) / l: [L, 1] from the given log-sum-exp, or the row's own max and sum
          if (lse) {
            stats[0] = lse[row];
            stats[1] = lse[row] === -Infinity ? 0 : 1;
          } else {
            rowStats(q, qRow, k, kBase, kStrides.row, lo, hi, headDim, scale, softcap, maskData, boolMask, maskRow, stats);
          }
          const [rowMax, rowSum] = stats;
          dqRow.fill(0);
          // a row that saw no key (sum 0) had P = 0: no gradient
          if (rowSum > 0 || Number.isNaN(rowSum)) {
            let rowDot = 0;
            for (let d = 0; d < valueDim; d++) rowDot += dOut[oRow + d] * out[oRow + d];
            for (let j = lo; j < hi; j++) {
              const kRow = kBase + j * kStrides.row;
              let dot = 0;
              for (let d = 0; d < headDim; d++) dot += q[qRow + d] * k[kRow + d];
              const z = dot * scale;
              let t = z;
              let slope = 1;
              if (softcap > 0) {
                const th = Math.tanh(z * invCap);
                t = softcap * th;
                slope = 1 - th * th;
              }
              if (maskData) {
                const mv = maskData[maskRow + j];
                if (boolMask) {
                  if (mv === 0) continue;
                } else {
                  t += mv;
                }
              }
              const p = Math.exp(t - rowMax) / rowSum;
              if (p === 0) continue;
              const vRow = vBase + j * strides.v.row;
              let dp = 0;
              for (let d = 0; d < valueDim; d++) {
                const g0 = dOut[oRow + d];
                dp += g0 * v[vRow + d];
                dvSum[j * valueDim + d] += p * g0;
              }
              const ds = p * (dp - rowDot) * slope * scale;
              for (let d = 0; d < headDim; d++) {
                dqRow[d] += ds * k[kRow + d];
                dkSum[j * headDim + d] += ds * q[qRow + d];
              }
            }
          }
          dq.set(dqRow, b * at.dq.batch + h * at.dq.head + i * at.dq.row);
        }
      }
      for (let j = 0; j < seqKV; j++) {
        dk.set(dkSum.subarray(j * headDim, (j + 1) * headDim), b * at.dk.batch + g * at.dk.head + j * at.dk.row);
        dv.set(dvSum.subarray(j * valueDim, (j + 1) * valueDim), b * at.dv.batch + g * at.dv.head + j * at.dv.row);
      }
    }
  }
  if (rope) {
    turnBack(dq, at.dq, batch, qHeads, seqQ, headDim, rope, rope.q, arrayOf);
    if (rope.k) turnBack(dk, at.dk, batch, kvHeads, seqKV, headDim, rope, rope.k, arrayOf);
  }
  const { gradDims } = plan;
  return {
    dq: { data: resultArray(into.dq, dq), dims: gradDims.q },
    dk: { data: resultArray(into.dk, dk), dims: gradDims.k },
    dv: { data: resultArray(into.dv, dv), dims: gradDims.v },
  };
}

/** [max_j t_j, sum_j exp(t_j - max)] over keys lo..hi of one row, into `stats`, as the forward computes its scores ([-inf, 0]: none seen). */
function rowStats(
  q: Float32Array, qRow: number, k: Float32Array, kBase: number, kStride: number, lo: number, hi: number, headDim: number,
  scale: number, softcap: number, maskData: Float32Array | Uint8Array | undefined, boolMask: boolean, maskRow: number, stats: Float64Array,
): void {
  // one pass: the running max, and the sum rescaled whenever the max grows
  let max = -Infinity;
  let sum = 0;
  for (let j = lo; j < hi; j++) {
    let dot = 0;
    for (let d = 0; d < headDim; d++) dot += q[qRow + d] * k[kBase + j * kStride + d];
    let s = dot * scale;
    if (softcap > 0) s = softcap * Math.tanh(s / softcap);
    if (maskData) s = boolMask ? (maskData[maskRow + j] === 0 ? -Infinity : s) : s + maskData[maskRow + j];
    if (s === -Infinity) continue;
    if (s <= max) {
      sum += Math.exp(s - max);
    } else {
      // a new max (or NaN, which then stays)
      sum = (max === -Infinity ? 0 : sum * Math.exp(max - s)) + 1;
      max = s;
    }
  }
  stats[0] = max;
  stats[1] = sum;
}

/** x [B, H, rows, D] (at its strides) turned in place by the opposite angles of the tables: RoPE's transpose. */
function turnBack(x: Float32Array, at: HeadStrides, batch: number, heads: number, rows: number, headDim: number, rope: AttentionRope, tables: RopeTables, arrayOf: ArrayOf): void {
  const cos = arrayOf(tables.cos);
  const sin = arrayOf(tables.sin).map((s) => -s);
  const half = rope.dims / 2;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const start = b * at.batch + h * at.head;
      rotateRows(x, start, at.row, x, start, at.row, rows, headDim, rope.dims, cos, sin, b * tables.batchStride * half, rope.interleaved);
    }
  }
}
