// Attention's float64 reference: the oracle every fast path is tested against. Plain loops
// straight from the formula, float64 throughout; it checks nothing (give it valid inputs).
//
//   out[b,h,i,:] = sum_j softmax_j(t[b,h,i,j]) · v[b, h/(Hq/Hkv), j, :]
//   t = softcap(scale · q·k) + mask, -inf where causal hides j (j > i + offset) or the window does
//   (j < i + offset - left, j > i + offset + right); 0 for rows with no key
// With rope, q and k are first rotated by referenceRotary: key j at kPositions[j] (default j), query
// i at qPositions[i] (default Skv - Sq + i).
import type { TensorLike } from '../../tensor.js';
import { type ReferenceTensor, maskBias } from '../reference-math.js';
import { referenceRotary } from '../rope/reference.js';

export interface ReferenceAttentionOptions {
  scale?: number;
  softcap?: number;
  causal?: boolean;
  mask?: TensorLike;
  /** Query i sees key j only when i + offset - left <= j <= i + offset + right. */
  window?: { left?: number; right?: number };
  /** Shifts causal and the window: query i stands at key position i + offset (a cache: Skv - Sq). */
  offset?: number;
  /** Rotate q and k first (RoPE); positions [S] or [B, S]. */
  rope?: {
    base?: number;
    dims?: number;
    interleaved?: boolean;
    qPositions?: TensorLike<ArrayLike<number>>;
    kPositions?: TensorLike<ArrayLike<number>>;
  };
}

export interface ReferenceAttention extends ReferenceTensor {
  /** softmax of the scores, [B, Hq, Sq, Skv] */
  weights: Float64Array;
  /** log(sum_j exp(score_j)) per row, [B, Hq, Sq] (-Infinity where no key is seen) */
  logSumExp: Float64Array;
}

/** Scaled dot-product attention in float64. q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv]. */
export function referenceAttention(q: TensorLike<ArrayLike<number>>, k: TensorLike<ArrayLike<number>>, v: TensorLike<ArrayLike<number>>, options: ReferenceAttentionOptions = {}): ReferenceAttention {
  const [B, Hq, Sq, D] = q.dims;
  const [, Hkv, Skv] = k.dims;
  if (options.rope) {
    const { base, dims, interleaved, qPositions, kPositions } = options.rope;
    const range = (start: number, count: number) => ({ data: Array.from({ length: count }, (_, i) => start + i), dims: [count] });
    q = referenceRotary(q, { positions: qPositions ?? range(Skv - Sq, Sq), base, dims, interleaved });
    k = referenceRotary(k, { positions: kPositions ?? range(0, Skv), base, dims, interleaved });
  }
  const Dv = v.dims[3];
  const scale = options.scale ?? (D > 0 ? 1 / Math.sqrt(D) : 1);
  const offset = options.offset ?? 0;
  const out = new Float64Array(B * Hq * Sq * Dv);
  const weights = new Float64Array(B * Hq * Sq * Skv);
  const logSumExp = new Float64Array(B * Hq * Sq).fill(-Infinity);
  const t = new Float64Array(Skv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / (Hq / Hkv));
      for (let i = 0; i < Sq; i++) {
        let max = -Infinity;
        for (let j = 0; j < Skv; j++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q.data[((b * Hq + h) * Sq + i) * D + d] * k.data[((b * Hkv + g) * Skv + j) * D + d];
          let s = dot * scale;
          if (options.softcap) s = options.softcap * Math.tanh(s / options.softcap);
          s += maskBias(options.mask, [b, h, i, j]);
          if (options.causal && j > i + offset) s = -Infinity;
          if (options.window?.left !== undefined && j < i + offset - options.window.left) s = -Infinity;
          if (options.window?.right !== undefined && j > i + offset + options.window.right) s = -Infinity;
          t[j] = s;
          max = Math.max(max, s);
        }
        const o = ((b * Hq + h) * Sq + i) * Dv;
        if (max === -Infinity) continue; // no visible key: zeros
        let sum = 0;
        for (let j = 0; j < Skv; j++) sum += (t[j] = Math.exp(t[j] - max));
        logSumExp[(b * Hq + h) * Sq + i] = max + Math.log(sum);
        for (let j = 0; j < Skv; j++) {
          const p = t[j] / sum;
          weights[((b * Hq + h) * Sq + i) * Skv + j] = p;
          for (let d = 0; d < Dv; d++) out[o + d] += p * v.data[((b * Hkv + g) * Skv + j) * Dv + d];
        }
      }
    }
  }
  return { data: out, dims: [B, Hq, Sq, Dv], weights, logSumExp };
}

