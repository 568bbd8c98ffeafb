// Attention in plain TypeScript over Float32Arrays: the fallback where WASM SIMD is missing and the
// second implementation every kernel is checked against. Written to be fast in plain JS
// (contiguous inner loops, no allocation per row) but simple.
//
// For every (batch, query head, row i): out[i] = softmax_j(t[i][j]) · v with the scores t of the
// plan (scale, softcap, mask, visible window), streamed over blocks of BLOCK keys with an online
// softmax: the running max m and sum l, and the output rescaled by exp(m_old - m_new) when m grows.
// Weights, when asked for, are exp(t - m) / l from a second pass over the row's keys.
// With rope, q and k are first rotated into packed copies (the inputs are the caller's).
import { type ArrayOf, resultArray } from '../../backend.js';
import { rotateRows } from '../rope/js.js';
import { type AttentionOutput, type AttentionPlan, type AttentionRope, type HeadStrides, type RopeTables, packed } from './plan.js';

/** Keys per block of the online softmax. */
const BLOCK = 64;

/** q and k as the scores read them: the plan's, or with rope rotated packed copies (and their strides). */
export function scoredInputs(plan: AttentionPlan, arrayOf: ArrayOf): { q: Float32Array; k: Float32Array; qStrides: HeadStrides; kStrides: HeadStrides } {
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, strides, rope } = plan;
  if (!rope) return { q: arrayOf(plan.q), k: arrayOf(plan.k), qStrides: strides.q, kStrides: strides.k };
  const q = rotatedCopy(arrayOf(plan.q), strides.q, batch, qHeads, seqQ, headDim, rope, rope.q, arrayOf);
  if (!rope.k) return { q, k: arrayOf(plan.k), qStrides: packed(qHeads, seqQ, headDim), kStrides: strides.k };
  const k = rotatedCopy(arrayOf(plan.k), strides.k, batch, kvHeads, seqKV, headDim, rope, rope.k, arrayOf);
  return { q, k, qStrides: packed(qHeads, seqQ, headDim), kStrides: packed(kvHeads, seqKV, headDim) };
}

export function attentionJs(plan: AttentionPlan, arrayOf: ArrayOf): AttentionOutput {
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, scale, softcap, offset, left, right, mask, strides } = plan;
  const { q, k, qStrides, kStrides } = scoredInputs(plan, arrayOf);
  const v = arrayOf(plan.v);
  const out = plan.out ? arrayOf(plan.out) : new Float32Array(batch * qHeads * seqQ * valueDim);
  const logSumExp = plan.returnLogSumExp ? new Float32Array(batch * qHeads * seqQ) : undefined;
  const weights = plan.returnWeights ? new Float32Array(batch * qHeads * seqQ * seqKV) : undefined;
  const group = kvHeads === 0 ? 1 : qHeads / kvHeads;
  // nothing to compute when the output is empty and nothing else was asked for
  const rowsToRun = valueDim === 0 && !logSumExp && !weights ? 0 : seqQ;
  const scores = new Float64Array(BLOCK);
  const acc = new Float64Array(valueDim);
  const maskData = mask ? arrayOf(mask.operand) : undefined;
  const boolMask = mask?.kind === 'bool';
  /** The score of query row qRow against key row kRow (-Infinity when masked out). */
  const score = (qRow: number, kRow: number, maskAt: number): number => {
    let dot = 0;
    for (let d = 0; d < headDim; d++) dot += q[qRow + d] * k[kRow + d];
    let t = dot * scale;
    if (softcap > 0) t = softcap * Math.tanh(t / softcap);
    if (maskData) {
      const mv = maskData[maskAt];
      if (boolMask) t = mv === 0 ? -Infinity : t;
      else t += mv;
    }
    return t;
  };
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < qHeads; h++) {
      const kvHead = Math.floor(h / group);
      const kBase = b * kStrides.batch + kvHead * kStrides.head;
      const vBase = b * strides.v.batch + kvHead * strides.v.head;
      for (let i = 0; i < rowsToRun; i++) {
        const qRow = b * qStrides.batch + h * qStrides.head + i * qStrides.row;
        const oRow = b * strides.out.batch + h * strides.out.head + i * strides.out.row;
        const maskRow = mask ? b * mask.at.batch + h * mask.at.head + i * mask.at.row : 0;
        const lo = left < 0 ? 0 : Math.max(0, i + offset - left);
        const hi = right < 0 ? seqKV : Math.min(seqKV, i + offset + right + 1);
        let m = -Infinity;
        let l = 0;
        acc.fill(0);
        for (let j0 = lo; j0 < hi; j0 += BLOCK) {
          const count = Math.min(BLOCK, hi - j0);
          let blockMax = -Infinity;
          for (let c = 0; c < count; c++) {
            const t = score(qRow, kBase + (j0 + c) * kStrides.row, maskRow + j0 + c);
            scores[c] = t;
            if (!(t <= blockMax)) blockMax = t; // NaN wins, as in the kernel
          }
          const mNew = Math.max(m, blockMax);
          if (mNew === -Infinity) continue;
          if (mNew !== m && m !== -Infinity) {
            const alpha = Math.exp(m - mNew);
            for (let d = 0; d < valueDim; d++) acc[d] *= alpha;
            l *= alpha;
          }
          m = mNew;
          for (let c = 0; c < count; c++) {
            const p = Math.exp(scores[c] - m);
            if (p === 0) continue;
            l += p;
            const vRow = vBase + (j0 + c) * strides.v.row;
            for (let d = 0; d < valueDim; d++) acc[d] += p * v[vRow + d];
          }
        }
        const seen = l > 0 || Number.isNaN(l);
        if (seen) {
          const inv = 1 / l;
          for (let d = 0; d < valueDim; d++) out[oRow + d] = acc[d] * inv;
        } else {
          out.fill(0, oRow, oRow + valueDim);
        }
        const row = (b * qHeads + h) * seqQ + i;
        if (logSumExp) logSumExp[row] = seen ? m + Math.log(l) : -Infinity;
        if (weights && seen) {
          for (let j = lo; j < hi; j++) {
            weights[row * seqKV + j] = Math.exp(score(qRow, kBase + j * kStrides.row, maskRow + j) - m) / l;
          }
        }
      }
    }
  }
  const output: AttentionOutput = { data: resultArray(plan.out, out), dims: plan.outDims };
  if (logSumExp) output.logSumExp = { data: logSumExp, dims: [batch, qHeads, seqQ] };
  if (weights) output.weights = { data: weights, dims: [batch, qHeads, seqQ, seqKV] };
  return output;
}

/** x [B, H, rows, D] (at its strides) rotated into a packed copy with the tables of its tokens. */
function rotatedCopy(
  x: Float32Array, strides: HeadStrides, batch: number, heads: number, rows: number, headDim: number,
  rope: AttentionRope, tables: RopeTables, arrayOf: ArrayOf,
): Float32Array {
  const copy = new Float32Array(batch * heads * rows * headDim);
  const cos = arrayOf(tables.cos);
  const sin = arrayOf(tables.sin);
  const half = rope.dims / 2;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      rotateRows(
        x, b * strides.batch + h * strides.head, strides.row, copy, (b * heads + h) * rows * headDim, headDim, rows,
        headDim, rope.dims, cos, sin, b * tables.batchStride * half, rope.interleaved,
      );
    }
  }
  return copy;
}
