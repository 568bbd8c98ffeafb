// Matmul's plan:  c[..., i, j] = sum_p a[..., i, p] · b[..., p, j]
// a [..., M, K], b [..., K, N] (or [..., N, K] with transposeB), batch dims broadcast (numpy rules)
// -> c [..., M, N]. Arguments read once and checked; nothing here touches a kernel.
import type { Operand, OperandResolver, OpPlan } from '../../backend.js';
import { AttentionError } from '../../errors.js';
import { type TensorLike, checkBoolean, checkNoOverlap, checkOut, checkResultSize, floatTensor, readOptions, readTensor, sizeOf } from '../../tensor.js';

/** Options of `engine.matmul`. */
export interface MatmulOptions {
  /** b is given as [..., N, K] and used transposed. */
  transposeB?: boolean;
  /** Write the result here: a Float32Array, or a float32 tensor from engine.tensor(). */
  out?: Float32Array | TensorLike<Float32Array>;
}

export interface MatmulPlan extends OpPlan {
  m: number;
  n: number;
  k: number;
  transposeB: boolean;
  a: Operand<Float32Array>;
  b: Operand<Float32Array>;
  /** For each output matrix, the element offsets of its a and b matrices (batch dims broadcast). */
  aOffsets: number[];
  bOffsets: number[];
  outDims: number[];
  out: Operand<Float32Array> | undefined;
}

/** Checks a [..., M, K] and b [..., K, N] (or [..., N, K] with transposeB); batch dims broadcast. */
export function planMatmul(a: unknown, b: unknown, options: unknown, resolver: OperandResolver): MatmulPlan {
  const aRead = readTensor(a, 'a');
  const bRead = readTensor(b, 'b');
  const opts = readOptions(options, 'options', ['transposeB', 'out']);
  const ac = floatTensor(aRead, resolver);
  const bc = floatTensor(bRead, resolver);
  const ad = ac.dims;
  const bd = bc.dims;
  if (ad.length < 2) throw new AttentionError('INVALID_DIMS', `a must have rank >= 2 ([..., M, K]), got dims [${ad}]`, 'a.dims');
  if (bd.length < 2) throw new AttentionError('INVALID_DIMS', `b must have rank >= 2 ([..., K, N]), got dims [${bd}]`, 'b.dims');
  const transposeB = checkBoolean(opts.transposeB, 'options.transposeB');
  const [m, k] = ad.slice(-2);
  const [bRows, bCols] = bd.slice(-2);
  const [bk, n] = transposeB ? [bCols, bRows] : [bRows, bCols];
  if (bk !== k) {
    const at = `b.dims[${bd.length - (transposeB ? 1 : 2)}]`;
    throw new AttentionError('SHAPE_MISMATCH', `${at} (K) is ${bk} but a.dims[${ad.length - 1}] is ${k}`, at);
  }
  const batchDims = broadcastBatch(ad.slice(0, -2), bd.slice(0, -2));
  const count = sizeOf(batchDims);
  checkResultSize(count * m * n, `the product [${[...batchDims, m, n]}]`, 'b.dims');
  // an empty result has no matrix to compute
  const empty = count * m * n === 0;
  const aOffsets = empty ? [] : batchOffsets(ad.slice(0, -2), batchDims, m * k);
  const bOffsets = empty ? [] : batchOffsets(bd.slice(0, -2), batchDims, k * n);
  const outDims = [...batchDims, m, n];
  const out = checkOut(opts.out, count * m * n, resolver, 'options.out');
  checkNoOverlap(out, [[ac.operand, 'a.data'], [bc.operand, 'b.data']]);
  return { flops: 2 * count * m * n * k, m, n, k, transposeB, a: ac.operand, b: bc.operand, aOffsets, bOffsets, outDims, out };
}

function broadcastBatch(a: number[], b: number[]): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const x = a[a.length - rank + i] ?? 1;
    const y = b[b.length - rank + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new AttentionError('SHAPE_MISMATCH', `batch dims [${a}] of a and [${b}] of b do not broadcast (${x} vs ${y})`, 'b.dims');
    }
    out.push(x === 1 ? y : x);
  }
  return out;
}

/** Element offset of each matrix of `dims` (batch dims only) for every index of the broadcast `target`. */
function batchOffsets(dims: number[], target: number[], matrixSize: number): number[] {
  const lead = target.length - dims.length;
  const strides = target.map(() => 0);
  let stride = matrixSize;
  for (let i = dims.length - 1; i >= 0; i--) {
    strides[lead + i] = dims[i] === 1 ? 0 : stride;
    stride *= dims[i];
  }
  return offsetsFor(target, strides);
}

/** For every index of `shape` (row-major order), the sum of index[d] * strides[d]. */
export function offsetsFor(shape: readonly number[], strides: readonly number[]): number[] {
  const count = sizeOf(shape);
  const offsets = new Array<number>(count);
  for (let index = 0; index < count; index++) {
    let rest = index;
    let offset = 0;
    for (let d = shape.length - 1; d >= 0; d--) {
      offset += (rest % shape[d]) * strides[d];
      rest = Math.floor(rest / shape[d]);
    }
    offsets[index] = offset;
  }
  return offsets;
}
