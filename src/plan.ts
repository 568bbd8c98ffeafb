// Validation of each public op's arguments into a plan: sizes, element strides and scalars that
// every backend (wasm, js) executes the same way. Nothing here touches a kernel, so a refused call
// leaves no trace.
import { AttentionError } from './errors.js';
import {
  type MaskView, type TensorLike, checkBoolean, checkFinite, checkFloatTensor, checkMask, checkNoOverlap, checkOptionsObject, checkOut, describe, sizeOf,
} from './tensor.js';

/** Element strides of a [batch, head, row, column] tensor; columns are contiguous. */
export interface HeadStrides {
  batch: number;
  head: number;
  row: number;
}

/** Options of `engine.attention`. */
export interface AttentionOptions {
  /** Multiplies q·k before the softmax; default 1/sqrt(headDim). */
  scale?: number;
  /** c > 0: each scaled score s becomes c·tanh(s/c), before the mask. */
  softcap?: number;
  /** Query i sees key j only when j <= i (top-left aligned, as ONNX and PyTorch without a cache). */
  causal?: boolean;
  /** Broadcastable to [B, Hq, Sq, Skv]: Uint8Array (1 = may attend) or Float32Array (added to scores). */
  mask?: TensorLike;
  /**
   * Sliding window (ONNX Attention-25's left/right window sizes): query i sees key j only when
   * i - left <= j <= i + right (shifted like causal when a cache aligns queries bottom-right).
   * Either side left out is unbounded; causal caps right at 0. Key blocks outside are skipped.
   */
  window?: { left?: number; right?: number };
  /** Also return the attention weights softmax(scores) [B, Hq, Sq, Skv]: materialised, by request only. */
  returnWeights?: boolean;
  /** Also return log(sum_j exp(score_j)) per query row [B, Hq, Sq] (-Infinity where no key is seen). */
  returnLogSumExp?: boolean;
  /** Write the result here instead of allocating. */
  out?: Float32Array;
}

export interface AttentionPlan {
  batch: number;
  qHeads: number;
  kvHeads: number;
  seqQ: number;
  seqKV: number;
  headDim: number;
  valueDim: number;
  q: HeadStrides;
  k: HeadStrides;
  v: HeadStrides;
  out: HeadStrides;
  scale: number;
  /** 0 when off. */
  softcap: number;
  /** Row i sees keys i + offset - left ..= i + offset + right; a negative left/right is unbounded. */
  offset: number;
  left: number;
  right: number;
  mask: (MaskView & { at: HeadStrides }) | undefined;
  outDims: number[];
  outBuffer: Float32Array | undefined;
  returnWeights: boolean;
  returnLogSumExp: boolean;
}

/** The shape and layout part of an attention plan: what a caller with its own layout provides. */
export type AttentionLayout = Pick<
  AttentionPlan,
  'batch' | 'qHeads' | 'kvHeads' | 'seqQ' | 'seqKV' | 'headDim' | 'valueDim' | 'q' | 'k' | 'v' | 'out' | 'outDims' | 'offset'
>;

/** One side of options.window checked: -1 when absent or wider than `span` (unbounded). */
function windowSide(value: unknown, name: 'left' | 'right', span: number): number {
  if (value === undefined) return -1;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new AttentionError('INVALID_OPTION', `options.window.${name} must be a non-negative integer, got ${describe(value)}`, `options.window.${name}`);
  }
  return value > span ? -1 : value;
}

/** Largest head (and value) dim: keeps the kernels' scratch and i32 arithmetic well inside range. */
export const MAX_HEAD_DIM = 16384;

export const packed = (heads: number, rows: number, cols: number): HeadStrides => ({ batch: heads * rows * cols, head: rows * cols, row: cols });

/** Checks q [B,Hq,Sq,Dk], k [B,Hkv,Skv,Dk], v [B,Hkv,Skv,Dv] and the options; see AttentionOptions. */
export function planAttention(q: unknown, k: unknown, v: unknown, options: unknown): AttentionPlan {
  const [batch, qHeads, seqQ, headDim] = checkFloatTensor(q, 'q', 4);
  const kd = checkFloatTensor(k, 'k', 4);
  const vd = checkFloatTensor(v, 'v', 4);
  const [kBatch, kvHeads, seqKV, kHeadDim] = kd;
  const [vBatch, vHeads, vSeq, valueDim] = vd;
  const same = (value: number, name: string, label: string, want: number, wantName: string): void => {
    if (value !== want) {
      throw new AttentionError('SHAPE_MISMATCH', `${name} (${label}) is ${value} but ${wantName} is ${want}`, name);
    }
  };
  same(kHeadDim, 'k.dims[3]', 'head dim', headDim, 'q.dims[3]');
  same(kBatch, 'k.dims[0]', 'batch', batch, 'q.dims[0]');
  same(vBatch, 'v.dims[0]', 'batch', batch, 'q.dims[0]');
  same(vHeads, 'v.dims[1]', 'kv heads', kvHeads, 'k.dims[1]');
  same(vSeq, 'v.dims[2]', 'kv length', seqKV, 'k.dims[2]');
  if (kvHeads === 0 ? qHeads !== 0 : qHeads % kvHeads !== 0) {
    throw new AttentionError('SHAPE_MISMATCH', `q.dims[1] (query heads) is ${qHeads}, not a multiple of k.dims[1] (kv heads) ${kvHeads}`, 'q.dims[1]');
  }
  const layout: AttentionLayout = {
    batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim,
    q: packed(qHeads, seqQ, headDim),
    k: packed(kvHeads, seqKV, headDim),
    v: packed(kvHeads, seqKV, valueDim),
    out: packed(qHeads, seqQ, valueDim),
    outDims: [batch, qHeads, seqQ, valueDim],
    offset: 0,
  };
  const data = (t: unknown): ArrayBufferView => (t as TensorLike).data as unknown as ArrayBufferView;
  return planAttentionOptions(layout, options, [[data(q), 'q.data'], [data(k), 'k.data'], [data(v), 'v.data']]);
}

/** Checks the options of an attention call whose tensors (laid out as `layout`) are already checked. */
export function planAttentionOptions(layout: AttentionLayout, options: unknown, inputs: Array<[ArrayBufferView, string]>): AttentionPlan {
  const { batch, qHeads, seqQ, seqKV, headDim, valueDim } = layout;
  if (Math.max(headDim, valueDim) > MAX_HEAD_DIM) {
    throw new AttentionError('UNSUPPORTED', `head dim ${headDim} / value dim ${valueDim}: at most ${MAX_HEAD_DIM} is supported`, 'q.dims');
  }
  const opts = checkOptionsObject(options, 'options');
  // the kernels take scale and softcap as float32: refuse values that float32 turns into 0 or infinity
  const scale = checkFinite(opts.scale, 'options.scale', headDim > 0 ? 1 / Math.sqrt(headDim) : 1);
  if (!Number.isFinite(Math.fround(scale))) throw new AttentionError('INVALID_OPTION', `options.scale ${scale} overflows float32`, 'options.scale');
  const softcap = checkFinite(opts.softcap, 'options.softcap', 0);
  if (opts.softcap !== undefined && !(Math.fround(softcap) > 0 && Number.isFinite(Math.fround(softcap)))) {
    throw new AttentionError('INVALID_OPTION', `options.softcap must be > 0 and within float32 range (leave it out to turn softcapping off), got ${softcap}`, 'options.softcap');
  }
  const causal = checkBoolean(opts.causal, 'options.causal');
  let left = -1;
  let right = causal ? 0 : -1;
  if (opts.window !== undefined) {
    const window = checkOptionsObject(opts.window, 'options.window');
    // a window wider than the whole sequence is no window (and keeps the kernels' i32 sums in range)
    const span = seqQ + seqKV + Math.abs(layout.offset);
    left = windowSide(window.left, 'left', span);
    if (!causal) right = windowSide(window.right, 'right', span);
    else windowSide(window.right, 'right', span);
  }
  const returnWeights = checkBoolean(opts.returnWeights, 'options.returnWeights');
  const returnLogSumExp = checkBoolean(opts.returnLogSumExp, 'options.returnLogSumExp');
  const outBuffer = checkOut(opts.out, sizeOf(layout.outDims), 'options.out');
  let mask: AttentionPlan['mask'];
  if (opts.mask !== undefined) {
    const view = checkMask(opts.mask, [batch, qHeads, seqQ, seqKV], 'options.mask', 'the scores [B, Hq, Sq, Skv]');
    mask = { kind: view.kind, data: view.data, strides: view.strides, at: { batch: view.strides[0], head: view.strides[1], row: view.strides[2] } };
  }
  checkNoOverlap(outBuffer, [...inputs, [mask?.data, 'options.mask.data']]);
  // built field by field: an object spread of this many fields costs microseconds, per call
  const { kvHeads, q, k, v, out, outDims, offset } = layout;
  return {
    batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, q, k, v, out, outDims, offset,
    scale, softcap, left, right, mask, outBuffer, returnWeights, returnLogSumExp,
  };
}

/**
 * Batch b of an attention call on its own, for calls whose batches differ in key count or causal
 * offset (a ragged KV cache, ONNX's nonpad_kv_seqlen): batch 1, the mask rows of b, and b's views of
 * q, k, v (and out). Strides stay those of the whole tensors.
 */
export function batchSlice(
  plan: AttentionPlan, b: number, seqKV: number, offset: number, q: Float32Array, k: Float32Array, v: Float32Array, out?: Float32Array,
): { plan: AttentionPlan; q: Float32Array; k: Float32Array; v: Float32Array } {
  const mask = plan.mask && { ...plan.mask, data: plan.mask.data.subarray(b * plan.mask.at.batch) };
  const outBuffer = out?.subarray(b * plan.out.batch, (b + 1) * plan.out.batch);
  return {
    plan: { ...plan, batch: 1, seqKV, offset, mask, outBuffer, outDims: [1, ...plan.outDims.slice(1)] },
    q: q.subarray(b * plan.q.batch, (b + 1) * plan.q.batch),
    k: k.subarray(b * plan.k.batch),
    v: v.subarray(b * plan.v.batch),
  };
}

/** Options of `engine.matmul`. */
export interface MatmulOptions {
  /** b is given as [..., N, K] and used transposed. */
  transposeB?: boolean;
  out?: Float32Array;
}

export interface MatmulPlan {
  m: number;
  n: number;
  k: number;
  transposeB: boolean;
  /** For each output matrix, the element offsets of its a and b matrices (batch dims broadcast). */
  aOffsets: number[];
  bOffsets: number[];
  outDims: number[];
  outBuffer: Float32Array | undefined;
}

/** Checks a [..., M, K] and b [..., K, N] (or [..., N, K] with transposeB); batch dims broadcast. */
export function planMatmul(a: unknown, b: unknown, options: unknown): MatmulPlan {
  const ad = checkFloatTensor(a, 'a');
  const bd = checkFloatTensor(b, 'b');
  if (ad.length < 2) throw new AttentionError('INVALID_DIMS', `a must have rank >= 2 ([..., M, K]), got dims [${ad}]`, 'a.dims');
  if (bd.length < 2) throw new AttentionError('INVALID_DIMS', `b must have rank >= 2 ([..., K, N]), got dims [${bd}]`, 'b.dims');
  const opts = checkOptionsObject(options, 'options');
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
  const aOffsets = batchOffsets(ad.slice(0, -2), batchDims, m * k);
  const bOffsets = batchOffsets(bd.slice(0, -2), batchDims, k * n);
  const outDims = [...batchDims, m, n];
  const outBuffer = checkOut(opts.out, count * m * n, 'options.out');
  checkNoOverlap(outBuffer, [[(a as TensorLike).data, 'a.data'], [(b as TensorLike).data, 'b.data']]);
  return { m, n, k, transposeB, aOffsets, bOffsets, outDims, outBuffer };
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
function offsetsFor(shape: readonly number[], strides: readonly number[]): number[] {
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

/** Options of `engine.softmax`. */
export interface SoftmaxOptions {
  /** Multiplies x before the softmax; default 1. */
  scale?: number;
  /** Broadcastable to x: Uint8Array (1 = keep) or Float32Array (added after scaling). */
  mask?: TensorLike;
  /** Over the last two dims [rows, cols]: column j is dropped from row i when j > i. */
  causal?: boolean;
  out?: Float32Array;
}

export interface SoftmaxPlan {
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
  outBuffer: Float32Array | undefined;
}

/** Checks x [..., cols] (with causal, [..., rows, cols]) and the options. */
export function planSoftmax(x: unknown, options: unknown): SoftmaxPlan {
  const dims = checkFloatTensor(x, 'x');
  if (dims.length < 1) throw new AttentionError('INVALID_DIMS', 'x must have rank >= 1', 'x.dims');
  const opts = checkOptionsObject(options, 'options');
  const scale = checkFinite(opts.scale, 'options.scale', 1);
  const causal = checkBoolean(opts.causal, 'options.causal');
  if (causal && dims.length < 2) throw new AttentionError('INVALID_DIMS', `options.causal needs x of rank >= 2 ([..., rows, cols]), got dims [${dims}]`, 'x.dims');
  const cols = dims[dims.length - 1];
  const rows = dims.length >= 2 ? dims[dims.length - 2] : 1;
  const matrices = rows * cols === 0 ? 0 : sizeOf(dims) / (rows * cols);
  let mask: MaskView | undefined;
  let maskOffsets: number[] = [];
  let maskRowStride = 0;
  if (opts.mask !== undefined) {
    mask = checkMask(opts.mask, dims, 'options.mask', 'x');
    const { strides } = mask;
    maskRowStride = dims.length >= 2 ? strides[dims.length - 2] : 0;
    const lead = Math.max(0, dims.length - 2);
    maskOffsets = offsetsFor(dims.slice(0, lead), strides.slice(0, lead));
  }
  const outBuffer = checkOut(opts.out, sizeOf(dims), 'options.out');
  checkNoOverlap(outBuffer, [[(x as TensorLike).data, 'x.data'], [mask?.data, 'options.mask.data']], true);
  return { matrices, rows, cols, scale, causal, mask, maskOffsets, maskRowStride, outDims: dims, outBuffer };
}

