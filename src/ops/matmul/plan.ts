// Matmul's plan:  c[..., i, j] = sum_p a[..., i, p] · b[..., p, j]
// a [..., M, K] (or [..., K, M] with transposeA), b [..., K, N] (or [..., N, K] with transposeB), batch
// dims broadcast (numpy rules)
// -> c [..., M, N]. b may be packed weights (engine.packWeights: one [K, N] matrix for every batch
// matrix of a); then options.bias ([N]) is added and options.activation applied to the result.
// Arguments read once and checked; nothing here touches a kernel.
import type { Operand, OperandResolver, OpPlan } from '../../backend.js';
import { AttentionError } from '../../errors.js';
import { type TensorLike, type TensorRead, checkBoolean, checkNoOverlap, checkOut, checkResultSize, describe, floatTensor, lengthOf, readOptions, readTensor, sizeOf, typedArrayName } from '../../tensor.js';
import { PackedWeights, packedOperand } from './packed.js';

/** Activations a matmul with packed weights applies after the bias: relu, GELU in its tanh form
 * (x·½(1 + tanh(√(2/π)(x + 0.044715x³))), as GPT-2 and onnx's Gelu with approximate='tanh'), SiLU (x·σ(x)). */
export type Activation = 'relu' | 'gelu_tanh' | 'silu';
export const ACTIVATIONS: readonly Activation[] = ['relu', 'gelu_tanh', 'silu'];

/** Options of `engine.matmul`. */
export interface MatmulOptions {
  /** a is given as [..., K, M] and used transposed (a weight gradient xᵀ·dy without a transpose copy). */
  transposeA?: boolean;
  /** b is given as [..., N, K] and used transposed (not with packed weights: they were packed transposed). */
  transposeB?: boolean;
  /** With packed weights: added to every row of the result ([N] floats). */
  bias?: Float32Array | TensorLike<Float32Array>;
  /** With packed weights: applied after the bias. */
  activation?: Activation;
  /** Write the result here: a Float32Array, or a float32 tensor from engine.tensor(). */
  out?: Float32Array | TensorLike<Float32Array>;
}

export interface MatmulPlan extends OpPlan {
  m: number;
  n: number;
  k: number;
  /** a's matrices are [K, M] (row stride M) instead of [M, K]. */
  transposeA: boolean;
  transposeB: boolean;
  a: Operand<Float32Array>;
  b: Operand<Float32Array>;
  /** b is packed weights (panels of 8 columns over the whole K, see packed.ts). */
  packed: boolean;
  bias: Operand<Float32Array> | undefined;
  activation: Activation | undefined;
  /** For each output matrix, the element offsets of its a and b matrices (batch dims broadcast). */
  aOffsets: number[];
  bOffsets: number[];
  outDims: number[];
  out: Operand<Float32Array> | undefined;
}

/** Checks a [..., M, K] (or [..., K, M] with transposeA) and b [..., K, N] (or [..., N, K] with
 * transposeB); batch dims broadcast. */
export function planMatmul(a: unknown, b: unknown, options: unknown, resolver: OperandResolver): MatmulPlan {
  if (PackedWeights.is(b)) return planPacked(a, b, options, resolver);
  const aRead = readTensor(a, 'a');
  const bRead = readTensor(b, 'b');
  const opts = readOptions(options, 'options', ['transposeA', 'transposeB', 'out', 'bias', 'activation']);
  if (opts.bias !== undefined || opts.activation !== undefined) {
    const at = opts.bias !== undefined ? 'options.bias' : 'options.activation';
    throw new AttentionError('UNSUPPORTED', `${at} needs packed weights as b (engine.packWeights(b)): the epilogue is the packed product's`, at);
  }
  const ac = floatTensor(aRead, resolver);
  const bc = floatTensor(bRead, resolver);
  const ad = ac.dims;
  const bd = bc.dims;
  if (ad.length < 2) throw new AttentionError('INVALID_DIMS', `a must have rank >= 2 ([..., M, K]), got dims [${ad}]`, 'a.dims');
  if (bd.length < 2) throw new AttentionError('INVALID_DIMS', `b must have rank >= 2 ([..., K, N]), got dims [${bd}]`, 'b.dims');
  const transposeA = checkBoolean(opts.transposeA, 'options.transposeA');
  const transposeB = checkBoolean(opts.transposeB, 'options.transposeB');
  const [m, k] = innerDims(ad, transposeA);
  const [bRows, bCols] = bd.slice(-2);
  const [bk, n] = transposeB ? [bCols, bRows] : [bRows, bCols];
  if (bk !== k) {
    const at = `b.dims[${bd.length - (transposeB ? 1 : 2)}]`;
    throw new AttentionError('SHAPE_MISMATCH', `${at} (K) is ${bk} but a.dims[${ad.length - (transposeA ? 2 : 1)}] is ${k}`, at);
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
  return { flops: 2 * count * m * n * k, streamedBytes: skinnyBytes(m, k, n, count), m, n, k, transposeA, transposeB, a: ac.operand, b: bc.operand, packed: false, bias: undefined, activation: undefined, aOffsets, bOffsets, outDims, out };
}

/** a [..., M, K] times packed weights [K, N]: every matrix of a against the same weights. */
function planPacked(a: unknown, b: PackedWeights, options: unknown, resolver: OperandResolver): MatmulPlan {
  const aRead = readTensor(a, 'a');
  const opts = readOptions(options, 'options', ['transposeA', 'transposeB', 'out', 'bias', 'activation']);
  const { operand: bOperand, k, n } = packedOperand(b, resolver, 'b');
  const ac = floatTensor(aRead, resolver);
  const ad = ac.dims;
  if (ad.length < 2) throw new AttentionError('INVALID_DIMS', `a must have rank >= 2 ([..., M, K]), got dims [${ad}]`, 'a.dims');
  if (opts.transposeB !== undefined && opts.transposeB !== false) {
    throw new AttentionError('INVALID_OPTION', 'options.transposeB does not apply to packed weights: pass it to packWeights()', 'options.transposeB');
  }
  const transposeA = checkBoolean(opts.transposeA, 'options.transposeA');
  const [m, ak] = innerDims(ad, transposeA);
  if (ak !== k) {
    const at = `a.dims[${ad.length - (transposeA ? 2 : 1)}]`;
    throw new AttentionError('SHAPE_MISMATCH', `${at} (K) is ${ak} but the packed weights are [${k}, ${n}]`, at);
  }
  let activation: Activation | undefined;
  if (opts.activation !== undefined) {
    if (!ACTIVATIONS.includes(opts.activation as Activation)) {
      throw new AttentionError('INVALID_OPTION', `options.activation must be one of ${ACTIVATIONS.map((x) => `'${x}'`).join(', ')}, got ${describe(opts.activation)}`, 'options.activation');
    }
    activation = opts.activation as Activation;
  }
  let bias: Operand<Float32Array> | undefined;
  if (opts.bias !== undefined) {
    // a bare Float32Array (read as a tensor of its length, as out is), or a tensor
    const read: TensorRead = typedArrayName(opts.bias) !== undefined
      ? { name: 'options.bias', data: opts.bias, dims: [lengthOf(opts.bias as ArrayBufferView)], resident: undefined }
      : readTensor(opts.bias, 'options.bias');
    const checked = floatTensor(read, resolver, 1);
    if (checked.dims[0] !== n) throw new AttentionError('SHAPE_MISMATCH', `options.bias has ${checked.dims[0]} elements but the weights have N = ${n} columns`, 'options.bias.dims');
    bias = checked.operand;
  }
  const batchDims = ad.slice(0, -2);
  const count = sizeOf(batchDims);
  checkResultSize(count * m * n, `the product [${[...batchDims, m, n]}]`, 'a.dims');
  const empty = count * m * n === 0;
  // the batch matrices of a are rows of one product, M·count rows against the same weights; transposed,
  // they are count products against the same weights
  const products = empty ? 0 : transposeA ? count : 1;
  const aOffsets = Array.from({ length: products }, (_, i) => i * m * k);
  const bOffsets = new Array<number>(products).fill(0);
  const out = checkOut(opts.out, count * m * n, resolver, 'options.out');
  checkNoOverlap(out, [[ac.operand, 'a.data'], [bOperand, 'b'], ...(bias ? [[bias, 'options.bias'] as const] : [])]);
  const rows = transposeA ? m : count * m;
  return {
    flops: 2 * count * m * n * k, streamedBytes: skinnyBytes(rows, k, n, products), m: rows, n, k, transposeA, transposeB: false, a: ac.operand, b: bOperand, packed: true,
    bias, activation, aOffsets, bOffsets, outDims: [...batchDims, m, n], out,
  };
}

/** Up to this many rows of a, a product streams b (the kernel's SKINNY_ROWS, assembly/f32-gemm-simd.ts). */
export const SKINNY_ROWS = 16;

/** The bytes of b that `products` products of `rows` rows stream when they are skinny (their time's bound), else 0. */
function skinnyBytes(rows: number, k: number, n: number, products: number): number {
  return rows <= SKINNY_ROWS ? 4 * products * k * n : 0;
}

/** [M, K] of a's matrices [..., M, K], or of [..., K, M] when transposed. */
function innerDims(dims: number[], transposed: boolean): [number, number] {
  const [rows, cols] = dims.slice(-2);
  return transposed ? [cols, rows] : [rows, cols];
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
