// The float64 reference: the oracle every fast path is tested against. Written for obviousness, not
// speed: plain loops straight from the formulas, float64 throughout, its own broadcasting. It checks
// nothing; give it valid inputs (the engine's ops validate theirs).
//
//   attention:  out[b,h,i,:] = sum_j softmax_j(t[b,h,i,j]) · v[b, h/(Hq/Hkv), j, :]
//               t = softcap(scale · q·k) + mask, -inf where causal hides j (j > i + offset) or the
//               window does (j < i + offset - left, j > i + offset + right); 0 for rows with no key
//   matmul:     c[..., i, j] = sum_p a[..., i, p] · b[..., p, j]
//   softmax:    y[..., j] = exp(t_j - max t) / sum exp(t - max t), t = scale · x + mask
import type { TensorLike } from './tensor.js';

export interface ReferenceTensor {
  data: Float64Array;
  dims: number[];
}

export interface ReferenceAttentionOptions {
  scale?: number;
  softcap?: number;
  causal?: boolean;
  mask?: TensorLike;
  /** Query i sees key j only when i + offset - left <= j <= i + offset + right. */
  window?: { left?: number; right?: number };
  /** Shifts causal and the window: query i stands at key position i + offset (a cache: Skv - Sq). */
  offset?: number;
}

export interface ReferenceAttention extends ReferenceTensor {
  /** softmax of the scores, [B, Hq, Sq, Skv] */
  weights: Float64Array;
  /** log(sum_j exp(score_j)) per row, [B, Hq, Sq] (-Infinity where no key is seen) */
  logSumExp: Float64Array;
}

/** Element of `t` at the multi-index `index` of a (possibly larger) target shape, numpy broadcasting. */
function broadcastAt(t: TensorLike, index: readonly number[]): number {
  const dims = t.dims;
  const lead = index.length - dims.length;
  let flat = 0;
  for (let d = 0; d < dims.length; d++) flat = flat * dims[d] + (dims[d] === 1 ? 0 : index[lead + d]);
  return Number(t.data[flat]);
}

/** The additive bias of a mask element: a bool mask gives 0 (attend) or -inf. */
function maskBias(mask: TensorLike | undefined, index: readonly number[]): number {
  if (!mask) return 0;
  const value = broadcastAt(mask, index);
  if (mask.data instanceof Uint8Array) return value !== 0 ? 0 : -Infinity;
  return value;
}

/** Scaled dot-product attention in float64. q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv]. */
export function referenceAttention(q: TensorLike, k: TensorLike, v: TensorLike, options: ReferenceAttentionOptions = {}): ReferenceAttention {
  const [B, Hq, Sq, D] = q.dims;
  const [, Hkv, Skv] = k.dims;
  const Dv = v.dims[3];
  const scale = options.scale ?? 1 / Math.sqrt(D);
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

/** Batched matrix product in float64, batch dims broadcast; b as [..., N, K] with transposeB. */
export function referenceMatmul(a: TensorLike, b: TensorLike, options: { transposeB?: boolean } = {}): ReferenceTensor {
  const [M, K] = a.dims.slice(-2);
  const N = options.transposeB ? b.dims[b.dims.length - 2] : b.dims[b.dims.length - 1];
  const aBatch = a.dims.slice(0, -2);
  const bBatch = b.dims.slice(0, -2);
  const rank = Math.max(aBatch.length, bBatch.length);
  const batch: number[] = [];
  for (let d = 0; d < rank; d++) batch.push(Math.max(aBatch[aBatch.length - rank + d] ?? 1, bBatch[bBatch.length - rank + d] ?? 1));
  const count = batch.reduce((x, y) => x * y, 1);
  const out = new Float64Array(count * M * N);
  for (let index = 0; index < count; index++) {
    const batchIndex: number[] = [];
    for (let d = rank - 1, rest = index; d >= 0; d--) {
      batchIndex.unshift(rest % batch[d]);
      rest = Math.floor(rest / batch[d]);
    }
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let dot = 0;
        for (let p = 0; p < K; p++) {
          const bIndex = options.transposeB ? [...batchIndex, j, p] : [...batchIndex, p, j];
          dot += broadcastAt(a, [...batchIndex, i, p]) * broadcastAt(b, bIndex);
        }
        out[(index * M + i) * N + j] = dot;
      }
    }
  }
  return { data: out, dims: [...batch, M, N] };
}

/** Softmax along the last axis of scale·x + mask in float64; causal drops column j > row i. */
export function referenceSoftmax(x: TensorLike, options: { scale?: number; mask?: TensorLike; causal?: boolean } = {}): ReferenceTensor {
  const dims = [...x.dims];
  const cols = dims[dims.length - 1];
  const rows = dims.length >= 2 ? dims[dims.length - 2] : 1;
  const total = x.data.length / Math.max(1, cols);
  const out = new Float64Array(x.data.length);
  const scale = options.scale ?? 1;
  for (let r = 0; r < total; r++) {
    const index: number[] = [];
    for (let d = dims.length - 2, rest = r; d >= 0; d--) {
      index.unshift(rest % dims[d]);
      rest = Math.floor(rest / dims[d]);
    }
    const i = r % rows;
    const t = new Float64Array(cols);
    let max = -Infinity;
    for (let j = 0; j < cols; j++) {
      t[j] = x.data[r * cols + j] * scale + maskBias(options.mask, [...index, j]);
      if (options.causal && j > i) t[j] = -Infinity;
      max = Math.max(max, t[j]);
    }
    if (max === -Infinity) continue;
    let sum = 0;
    for (let j = 0; j < cols; j++) sum += (t[j] = Math.exp(t[j] - max));
    for (let j = 0; j < cols; j++) out[r * cols + j] = t[j] / sum;
  }
  return { data: out, dims };
}
