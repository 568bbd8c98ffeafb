// Softmax backward's plan: y = softmax(scale · x + mask) along the last axis (engine.softmax's
// output) and dy, the gradient of y, give dx = scale · y ∘ (dy - sum_j(dy ∘ y)) per row. Masked and
// causally dropped columns have y = 0, so they get 0: the mask itself is not needed. Arguments read
// once and checked.
import type { Operand, OperandResolver, OpPlan } from '../../backend.js';
import { AttentionError } from '../../errors.js';
import { checkFloat32, checkNoOverlap, checkOut, floatTensor, readOptions, readTensor, sizeOf } from '../../tensor.js';

/** Options of `engine.softmaxBackward`. */
export interface SoftmaxBackwardOptions {
  /** The forward's scale; default 1. */
  scale?: number;
  /** Write dx here (dy itself is fine): a Float32Array or a float32 tensor from engine.tensor(). */
  out?: Float32Array | { data: Float32Array; dims: number[] };
}

export interface SoftmaxBackwardPlan extends OpPlan {
  y: Operand<Float32Array>;
  dy: Operand<Float32Array>;
  rows: number;
  cols: number;
  scale: number;
  outDims: number[];
  out: Operand<Float32Array> | undefined;
}

/** Checks y and dy (the same dims, rank >= 1) and the options. */
export function planSoftmaxBackward(y: unknown, dy: unknown, options: unknown, resolver: OperandResolver): SoftmaxBackwardPlan {
  const yRead = readTensor(y, 'y');
  const dyRead = readTensor(dy, 'dy');
  const opts = readOptions(options, 'options', ['scale', 'out']);
  const yc = floatTensor(yRead, resolver);
  const dyc = floatTensor(dyRead, resolver);
  const dims = yc.dims;
  if (dims.length < 1) throw new AttentionError('INVALID_DIMS', 'y must have rank >= 1', 'y.dims');
  if (dyc.dims.length !== dims.length || dyc.dims.some((d, i) => d !== dims[i])) {
    throw new AttentionError('SHAPE_MISMATCH', `dy.dims [${dyc.dims}] must equal y.dims [${dims}]`, 'dy.dims');
  }
  const scale = checkFloat32(opts.scale, 'options.scale', 1);
  const size = sizeOf(dims);
  const cols = dims[dims.length - 1];
  const out = checkOut(opts.out, size, resolver, 'options.out');
  // dx may be dy (each row's sum is taken before its dx is written), not y
  checkNoOverlap(out, [[yc.operand, 'y.data']]);
  checkNoOverlap(out, [[dyc.operand, 'dy.data']], true);
  return { flops: 4 * size, y: yc.operand, dy: dyc.operand, rows: cols === 0 ? 0 : size / cols, cols, scale, outDims: dims, out };
}
