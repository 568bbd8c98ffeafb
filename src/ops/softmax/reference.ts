// Softmax's float64 reference:  y[..., j] = exp(t_j - max t) / sum exp(t - max t),
// t = scale · x + mask, causal dropping column j > row i; a row with nothing left gives zeros.
import type { TensorLike } from '../../tensor.js';
import { type ReferenceTensor, maskBias } from '../reference-math.js';

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
