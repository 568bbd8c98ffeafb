// What the float64 references of every op share: the result type and numpy-style broadcasting of
// an input (a mask, a matmul operand) over a larger target shape. Written for obviousness.
import type { TensorLike } from '../tensor.js';

export interface ReferenceTensor {
  data: Float64Array;
  dims: number[];
}

/** Element of `t` at the multi-index `index` of a (possibly larger) target shape, numpy broadcasting. */
export function broadcastAt(t: TensorLike, index: readonly number[]): number {
  const dims = t.dims;
  const lead = index.length - dims.length;
  let flat = 0;
  for (let d = 0; d < dims.length; d++) flat = flat * dims[d] + (dims[d] === 1 ? 0 : index[lead + d]);
  return Number(t.data[flat]);
}

/** The additive bias of a mask element: a bool mask gives 0 (attend) or -inf. */
export function maskBias(mask: TensorLike | undefined, index: readonly number[]): number {
  if (!mask) return 0;
  const value = broadcastAt(mask, index);
  if (mask.data instanceof Uint8Array) return value !== 0 ? 0 : -Infinity;
  return value;
}

