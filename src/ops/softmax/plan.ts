// Softmax's plan:  y[..., j] = exp(t_j - max t) / sum_j exp(t_j - max t),  t = scale · x + mask,
// along the last axis of x [..., cols]; causal (x [..., rows, cols]) drops column j from row i
// when j > i; a row with nothing left gives zeros. Arguments read once and checked.
import type { Operand, OperandResolver, OpPlan } from '../../backend.js';
import { AttentionError } from '../../errors.js';
import {
  type MaskView, type TensorLike, checkBoolean, checkFloat32, checkMask, checkNoOverlap, checkOut, floatTensor, readOptions, readTensor, sizeOf,
} from '../../tensor.js';
import { offsetsFor } from '../matmul/plan.js';

/** Options of `engine.softmax`. */
export interface SoftmaxOptions {
  /** Multiplies x before the softmax; default 1. */
  scale?: number;
  /** Broadcastable to x: Uint8Array (1 = keep) or Float32Array (added after scaling). */
  mask?: TensorLike;
  /** Over the last two dims [rows, cols]: column j is dropped from row i when j > i. */
  causal?: boolean;
  /** Write the result here (x itself is fine): a Float32Array or a float32 tensor from engine.tensor(). */
  out?: Float32Array | TensorLike<Float32Array>;
}

export interface SoftmaxPlan extends OpPlan {
  x: Operand<Float32Array>;
  /** Number of [rows, cols] matrices. */
  matrices: number;
  rows: number;
  cols: number;
  scale: number;
  causal: boolean;
  mask: MaskView | undefined;
  /** Element offset of each matrix's mask (when masked). */
  maskOffsets: number[];
  maskRowStride: number;
  outDims: number[];
  out: Operand<Float32Array> | undefined;
}

/** Checks x [..., cols] (with causal, [..., rows, cols]) and the options. */
export function planSoftmax(x: unknown, options: unknown, resolver: OperandResolver): SoftmaxPlan {
  const xRead = readTensor(x, 'x');
  const opts = readOptions(options, 'options', ['scale', 'mask', 'causal', 'out']);
  const maskRead = opts.mask === undefined ? undefined : readTensor(opts.mask, 'options.mask', '{ data: Uint8Array | Float32Array, dims }');
  const xc = floatTensor(xRead, resolver);
  const dims = xc.dims;
  if (dims.length < 1) throw new AttentionError('INVALID_DIMS', 'x must have rank >= 1', 'x.dims');
  const scale = checkFloat32(opts.scale, 'options.scale', 1);
  const causal = checkBoolean(opts.causal, 'options.causal');
  if (causal && dims.length < 2) throw new AttentionError('INVALID_DIMS', `options.causal needs x of rank >= 2 ([..., rows, cols]), got dims [${dims}]`, 'x.dims');
  const cols = dims[dims.length - 1];
  const rows = dims.length >= 2 ? dims[dims.length - 2] : 1;
  const matrices = rows * cols === 0 ? 0 : sizeOf(dims) / (rows * cols);
  let mask: MaskView | undefined;
  let maskOffsets: number[] = [];
  let maskRowStride = 0;
  if (maskRead) {
    mask = checkMask(maskRead, dims, resolver, 'x');
    const { strides } = mask;
    maskRowStride = dims.length >= 2 ? strides[dims.length - 2] : 0;
    const lead = Math.max(0, dims.length - 2);
    maskOffsets = matrices === 0 ? [] : offsetsFor(dims.slice(0, lead), strides.slice(0, lead));
  }
  const out = checkOut(opts.out, sizeOf(dims), resolver, 'options.out');
  checkNoOverlap(out, [[xc.operand, 'x.data'], [mask?.operand, 'options.mask.data']], true);
  return { flops: 8 * sizeOf(dims), x: xc.operand, matrices, rows, cols, scale, causal, mask, maskOffsets, maskRowStride, outDims: dims, out };
}
