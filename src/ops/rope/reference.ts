// RoPE's float64 reference. x [B, H, S, D] (or [B, S, H·D] with heads); token (b, s) at position
// p = positions[s] or positions[b, s]; for each pair i < dims/2, angle = p · base^(-2i/dims):
//   half-split:  (x[i], x[i + dims/2]);  interleaved: (x[2i], x[2i + 1])
//   (x1, x2) -> (x1·cos - x2·sin, x2·cos + x1·sin);  x[d] for d >= dims unchanged.
import type { TensorLike } from '../../tensor.js';
import type { ReferenceTensor } from '../reference-math.js';

export interface ReferenceRotaryOptions {
  positions: TensorLike<ArrayLike<number>>;
  heads?: number;
  base?: number;
  dims?: number;
  interleaved?: boolean;
}

/** RoPE in float64 with obvious loops; cos and sin computed for every element. */
export function referenceRotary(x: TensorLike<ArrayLike<number>>, options: ReferenceRotaryOptions): ReferenceTensor {
  const fourD = x.dims.length === 4;
  const heads = fourD ? x.dims[1] : options.heads!;
  const [batch, seq] = fourD ? [x.dims[0], x.dims[2]] : [x.dims[0], x.dims[1]];
  const headDim = fourD ? x.dims[3] : x.dims[2] / heads;
  const dims = options.dims || headDim;
  const base = options.base ?? 10000;
  const half = dims / 2;
  const out = Float64Array.from(x.data, Number);
  const index = (b: number, h: number, s: number, d: number): number =>
    fourD ? ((b * heads + h) * seq + s) * headDim + d : ((b * seq + s) * heads + h) * headDim + d;
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < seq; s++) {
      const p = Number(options.positions.dims.length === 2 ? options.positions.data[b * seq + s] : options.positions.data[s]);
      for (let h = 0; h < heads; h++) {
        for (let i = 0; i < half; i++) {
          const angle = p * Math.pow(base, (-2 * i) / dims);
          const first = options.interleaved ? index(b, h, s, 2 * i) : index(b, h, s, i);
          const second = options.interleaved ? index(b, h, s, 2 * i + 1) : index(b, h, s, i + half);
          const x1 = Number(x.data[first]);
          const x2 = Number(x.data[second]);
          out[first] = x1 * Math.cos(angle) - x2 * Math.sin(angle);
          out[second] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
        }
      }
    }
  }
  return { data: out, dims: [...x.dims] };
}
