// Attention's plan: the call's arguments read once and checked into sizes, operands, element
// strides and scalars that every backend executes the same way. Nothing here touches a kernel, so a
// refused call leaves no trace.
//
//   q [B, Hq, Sq, Dk], k [B, Hkv, Skv, Dk], v [B, Hkv, Skv, Dv] -> out [B, Hq, Sq, Dv]
//   out[b,h,i,:] = sum_j softmax_j(t[b,h,i,j]) · v[b, h/(Hq/Hkv), j, :]
//   t = softcap(scale · q·k) + mask, -inf where causal or the window hides key j from query i
//   (visible: i + offset - left <= j <= i + offset + right); a row that sees no key gives zeros.
// With options.rope, q and k are first rotated (RoPE, ../rope/options.ts) at their positions: by
// default key j at j and query i at Skv - Sq + i (bottom-right, as a cache places new tokens);
// the angle tables are built here, and the backends rotate copies, never the inputs.
import type { Operand, OperandResolver, OpPlan } from '../../backend.js';
import { AttentionError } from '../../errors.js';
import { type RopeOptions, angleTables, positionRange, readRope } from '../rope/options.js';
import { checkPositions } from '../rope/plan.js';
import {
  type MaskView, type Tensor, type TensorLike, type TensorRead, checkBoolean, checkResultSize, checkFinite, checkFloat32, checkMask, checkNoOverlap, checkOut, describe,
  floatTensor, readOptions, readTensor, sizeOf,
} from '../../tensor.js';

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
  /** Write the result here instead of allocating: a Float32Array, or a float32 tensor from engine.tensor(). */
  out?: Float32Array | TensorLike<Float32Array>;
  /** Rotate q and k (RoPE, as ONNX RotaryEmbedding) at their positions before the scores. */
  rope?: AttentionRopeOptions;
}

/** The rope option of attention: RoPE's own options, and where the tokens stand. */
export interface AttentionRopeOptions extends RopeOptions {
  /**
   * Position of each query row: integers in [0, 2^24), dims [Sq] or [B, Sq], Int32Array or
   * Float32Array data. Default Skv - Sq + i: the newest Sq of Skv tokens, bottom-right (negative
   * when Sq > Skv; the scores depend only on the differences of positions).
   */
  qPositions?: TensorLike<Int32Array | Float32Array>;
  /** Position of each key: dims [Skv] or [B, Skv]; default j. */
  kPositions?: TensorLike<Int32Array | Float32Array>;
}

/** What attention returns: the output, and what was asked for besides. */
export interface AttentionOutput extends Tensor {
  /** With returnWeights: softmax of the scores, [B, Hq, Sq, Skv]. */
  weights?: Tensor;
  /** With returnLogSumExp: log(sum_j exp(score_j)) per query row, [B, Hq, Sq]. */
  logSumExp?: Tensor;
}

export const ATTENTION_OPTION_KEYS = ['scale', 'softcap', 'causal', 'mask', 'window', 'returnWeights', 'returnLogSumExp', 'out', 'rope'] as const;
const ROPE_OPTION_KEYS = ['base', 'dims', 'interleaved', 'qPositions', 'kPositions'] as const;
const POSITIONS_EXPECTED = '{ data: Int32Array | Float32Array, dims: [S] or [B, S] }';

/** The mask of a plan: its operand, kind and strides over [B, Hq, Sq, Skv]. */
export interface AttentionMask {
  kind: MaskView['kind'];
  operand: Operand;
  at: HeadStrides;
}

/** The shape and layout part of a plan: what a caller with its own layout (KV cache, ONNX, layer) provides. */
export interface AttentionLayout {
  batch: number;
  qHeads: number;
  kvHeads: number;
  seqQ: number;
  seqKV: number;
  headDim: number;
  valueDim: number;
  q: Operand<Float32Array>;
  k: Operand<Float32Array>;
  v: Operand<Float32Array>;
  strides: { q: HeadStrides; k: HeadStrides; v: HeadStrides; out: HeadStrides };
  outDims: number[];
  offset: number;
  /**
   * Where the tokens stand when the caller places them itself (the KV cache: each sequence's own
   * positions; k undefined: its keys were rotated when appended). Explicit rope positions are then refused.
   */
  ropePositions?: { q: TokenPositions; k: TokenPositions | undefined };
}

/** A checked attention call: its layout, the scalars and masks, and what was asked for besides. */
export interface AttentionPlan extends OpPlan, AttentionLayout {
  scale: number;
  /** 0 when off. */
  softcap: number;
  /** Row i sees keys i + offset - left ..= i + offset + right; a negative left/right is unbounded. */
  left: number;
  right: number;
  mask: AttentionMask | undefined;
  out: Operand<Float32Array> | undefined;
  returnWeights: boolean;
  returnLogSumExp: boolean;
  /** The rotation of q and k before the scores, when asked for. */
  rope: AttentionRope | undefined;
}

/** Positions of a tensor's tokens: [S] shared by every batch entry, or [B, S] (perBatch). */
export interface TokenPositions {
  values: ArrayLike<number>;
  perBatch: boolean;
}

/** Angle tables of one operand: cos and sin [rows, dims/2]; token s of batch entry b is row b·batchStride + s. */
export interface RopeTables {
  cos: Operand<Float32Array>;
  sin: Operand<Float32Array>;
  /** S when the positions are [B, S], 0 when shared. */
  batchStride: number;
}

/** A plan's rotation: RoPE's pairs, and the tables of q and of k (none when the keys are rotated already). */
export interface AttentionRope {
  dims: number;
  interleaved: boolean;
  q: RopeTables;
  k: RopeTables | undefined;
}

/** options.rope as read once: the values, and the positions' tensors read (not yet checked). */
export interface RopeRead {
  base?: unknown;
  dims?: unknown;
  interleaved?: unknown;
  qPositions?: TensorRead;
  kPositions?: TensorRead;
}

/** Options as read from the caller (once), not yet checked. */
export interface AttentionOptionsRead {
  scale?: unknown;
  softcap?: unknown;
  causal?: unknown;
  window?: { left?: unknown; right?: unknown };
  mask?: TensorRead;
  out?: unknown;
  returnWeights?: unknown;
  returnLogSumExp?: unknown;
  rope?: RopeRead;
  /** The backward call's log-sum-exp from the forward one (read only where `keys` has it). */
  logSumExp?: TensorRead;
  /** The backward call's output arrays, as given (read only where `keys` has it). */
  grads?: unknown;
}

/** Reads attention options once (getters run here and nowhere else); unknown keys are refused. */
export function readAttentionOptions(options: unknown, name = 'options', keys: readonly string[] = ATTENTION_OPTION_KEYS): AttentionOptionsRead {
  const raw = readOptions(options, name, keys) as Record<string, unknown>;
  const read: AttentionOptionsRead = {
    scale: raw.scale, softcap: raw.softcap, causal: raw.causal, out: raw.out,
    returnWeights: raw.returnWeights, returnLogSumExp: raw.returnLogSumExp,
  };
  if (raw.window !== undefined) read.window = readOptions(raw.window, `${name}.window`, ['left', 'right']);
  if (raw.mask !== undefined) read.mask = readTensor(raw.mask, `${name}.mask`, '{ data: Uint8Array | Float32Array, dims }');
  if (raw.rope !== undefined) read.rope = readRopeOption(raw.rope, `${name}.rope`);
  if (raw.logSumExp !== undefined) read.logSumExp = readTensor(raw.logSumExp, `${name}.logSumExp`);
  if (raw.grads !== undefined) read.grads = readOptions(raw.grads, `${name}.grads`, ['dq', 'dk', 'dv']);
  return read;
}

/** Reads options.rope once: RoPE's values, and the positions' tensors (their data and dims). */
export function readRopeOption(value: unknown, name: string): RopeRead {
  const raw = readOptions(value, name, ROPE_OPTION_KEYS);
  const read: RopeRead = { base: raw.base, dims: raw.dims, interleaved: raw.interleaved };
  if (raw.qPositions !== undefined) read.qPositions = readTensor(raw.qPositions, `${name}.qPositions`, POSITIONS_EXPECTED);
  if (raw.kPositions !== undefined) read.kPositions = readTensor(raw.kPositions, `${name}.kPositions`, POSITIONS_EXPECTED);
  return read;
}

/** One side of options.window checked: -1 when absent or wider than `span` (unbounded). */
export function windowSide(value: unknown, name: 'left' | 'right', span: number): number {
  if (value === undefined) return -1;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new AttentionError('INVALID_OPTION', `options.window.${name} must be a non-negative integer, got ${describe(value)}`, `options.window.${name}`);
  }
  return value > span ? -1 : value;
}

/** Largest head (and value) dim: keeps the kernels' scratch and i32 arithmetic well inside range. */
export const MAX_HEAD_DIM = 16384;
/** Largest count of keys, query rows, heads or batches: the kernels index with i32. */
export const MAX_EXTENT = 2 ** 31 - 1;

export const packed = (heads: number, rows: number, cols: number): HeadStrides => ({ batch: heads * rows * cols, head: rows * cols, row: cols });

function same(value: number, name: string, label: string, want: number, wantName: string): void {
  if (value !== want) throw new AttentionError('SHAPE_MISMATCH', `${name} (${label}) is ${value} but ${wantName} is ${want}`, name);
}

/** Checks q [B,Hq,Sq,Dk], k [B,Hkv,Skv,Dk], v [B,Hkv,Skv,Dv] and the options; see AttentionOptions. */
export function planAttention(q: unknown, k: unknown, v: unknown, options: unknown, resolver: OperandResolver): AttentionPlan {
  // every read first (user code may run here), then every check
  const qRead = readTensor(q, 'q');
  const kRead = readTensor(k, 'k');
  const vRead = readTensor(v, 'v');
  const opts = readAttentionOptions(options);
  return finishAttentionPlan(attentionLayout(qRead, kRead, vRead, resolver), opts, resolver);
}

/** The layout of q [B,Hq,Sq,Dk], k [B,Hkv,Skv,Dk], v [B,Hkv,Skv,Dv] as read, checked: packed tensors. */
export function attentionLayout(qRead: TensorRead, kRead: TensorRead, vRead: TensorRead, resolver: OperandResolver): AttentionLayout {
  const qc = floatTensor(qRead, resolver, 4);
  const kc = floatTensor(kRead, resolver, 4);
  const vc = floatTensor(vRead, resolver, 4);
  const [batch, qHeads, seqQ, headDim] = qc.dims;
  const [kBatch, kvHeads, seqKV, kHeadDim] = kc.dims;
  const [vBatch, vHeads, vSeq, valueDim] = vc.dims;
  same(kHeadDim, 'k.dims[3]', 'head dim', headDim, 'q.dims[3]');
  same(kBatch, 'k.dims[0]', 'batch', batch, 'q.dims[0]');
  same(vBatch, 'v.dims[0]', 'batch', batch, 'q.dims[0]');
  same(vHeads, 'v.dims[1]', 'kv heads', kvHeads, 'k.dims[1]');
  same(vSeq, 'v.dims[2]', 'kv length', seqKV, 'k.dims[2]');
  if (kvHeads === 0 ? qHeads !== 0 : qHeads % kvHeads !== 0) {
    throw new AttentionError('SHAPE_MISMATCH', `q.dims[1] (query heads) is ${qHeads}, not a multiple of k.dims[1] (kv heads) ${kvHeads}`, 'q.dims[1]');
  }
  return {
    batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, q: qc.operand, k: kc.operand, v: vc.operand,
    strides: { q: packed(qHeads, seqQ, headDim), k: packed(kvHeads, seqKV, headDim), v: packed(kvHeads, seqKV, valueDim), out: packed(qHeads, seqQ, valueDim) },
    outDims: [batch, qHeads, seqQ, valueDim],
    offset: 0,
  };
}

/** Checks read options against a layout whose tensors are already checked, into the plan. */
export function finishAttentionPlan(layout: AttentionLayout, opts: AttentionOptionsRead, resolver: OperandResolver, name = 'options'): AttentionPlan {
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim } = layout;
  if (Math.max(headDim, valueDim) > MAX_HEAD_DIM) {
    throw new AttentionError('UNSUPPORTED', `head dim ${headDim} / value dim ${valueDim}: at most ${MAX_HEAD_DIM} is supported`, 'q.dims');
  }
  if (Math.max(batch, qHeads, seqQ, seqKV) > MAX_EXTENT || batch * qHeads * Math.max(seqQ, 1) > MAX_EXTENT) {
    throw new AttentionError('UNSUPPORTED', `batch ${batch}, heads ${qHeads}, ${seqQ} query rows and ${seqKV} keys: each count, and batch·heads·rows, must stay below 2^31`, 'q.dims');
  }
  // the kernels take scale and softcap as float32: refuse values that float32 turns into 0 or infinity
  const scale = checkFloat32(opts.scale, `${name}.scale`, headDim > 0 ? 1 / Math.sqrt(headDim) : 1);
  const softcap = checkFinite(opts.softcap, `${name}.softcap`, 0);
  if (opts.softcap !== undefined && !(Math.fround(softcap) > 0 && Number.isFinite(Math.fround(softcap)))) {
    throw new AttentionError('INVALID_OPTION', `${name}.softcap must be > 0 and within float32 range (leave it out to turn softcapping off), got ${softcap}`, `${name}.softcap`);
  }
  const causal = checkBoolean(opts.causal, `${name}.causal`);
  let left = -1;
  let right = causal ? 0 : -1;
  if (opts.window !== undefined) {
    // a window wider than the whole sequence is no window (and keeps the kernels' i32 sums in range)
    const span = seqQ + seqKV + Math.abs(layout.offset);
    left = windowSide(opts.window.left, 'left', span);
    if (!causal) right = windowSide(opts.window.right, 'right', span);
    else windowSide(opts.window.right, 'right', span);
  }
  const returnWeights = checkBoolean(opts.returnWeights, `${name}.returnWeights`);
  const returnLogSumExp = checkBoolean(opts.returnLogSumExp, `${name}.returnLogSumExp`);
  const outSize = sizeOf(layout.outDims);
  checkResultSize(outSize, `the output [${layout.outDims}]`, 'v.dims');
  const out = checkOut(opts.out, outSize, resolver, `${name}.out`);
  let mask: AttentionMask | undefined;
  if (opts.mask !== undefined) {
    const view = checkMask(opts.mask, [batch, qHeads, seqQ, seqKV], resolver, 'the scores [B, Hq, Sq, Skv]');
    mask = { kind: view.kind, operand: view.operand, at: { batch: view.strides[0], head: view.strides[1], row: view.strides[2] } };
  }
  if (returnWeights) checkResultSize(batch * qHeads * seqQ * seqKV, 'returnWeights: the weights', 'options.returnWeights');
  checkNoOverlap(out, [[layout.q, 'q.data'], [layout.k, 'k.data'], [layout.v, 'v.data'], [mask?.operand, `${name}.mask.data`]]);
  const rope = opts.rope && planRope(opts.rope, layout, resolver, `${name}.rope`);
  // the rotation: 3 flops per rotated element of q and of k
  const rotated = rope ? 3 * rope.dims * (batch * qHeads * seqQ + (rope.k ? batch * kvHeads * seqKV : 0)) : 0;
  const flops = 2 * batch * qHeads * seqQ * seqKV * (headDim + valueDim) + rotated;
  // built field by field: an object spread of this many fields costs microseconds, per call
  const { q, k, v, strides, outDims, offset } = layout;
  return {
    flops, batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, q, k, v, strides, outDims, offset,
    scale, softcap, left, right, mask, out, returnWeights, returnLogSumExp, rope,
  };
}

/** Checks a read rope option against the layout into the plan's rotation, tables built. */
function planRope(read: RopeRead, layout: AttentionLayout, resolver: OperandResolver, name: string): AttentionRope {
  const { batch, seqQ, seqKV } = layout;
  const spec = readRope({ base: read.base, dims: read.dims, interleaved: read.interleaved }, layout.headDim, name)!;
  let q: TokenPositions;
  let k: TokenPositions | undefined;
  if (layout.ropePositions) {
    const given = read.qPositions ? 'qPositions' : read.kPositions ? 'kPositions' : undefined;
    if (given) {
      throw new AttentionError('INVALID_OPTION', `${name}.${given} is not taken here: the KV cache places its tokens itself (sequence b's newest n queries at length_b - n + i)`, `${name}.${given}`);
    }
    ({ q, k } = layout.ropePositions);
  } else {
    const given = (positions: TensorRead, seq: number): TokenPositions => ({
      values: checkPositions(positions, batch, seq, resolver, positions.name), perBatch: positions.dims.length === 2,
    });
    q = read.qPositions ? given(read.qPositions, seqQ) : { values: positionRange(seqKV - seqQ, seqQ), perBatch: false };
    k = read.kPositions ? given(read.kPositions, seqKV) : { values: positionRange(0, seqKV), perBatch: false };
  }
  return { dims: spec.dims, interleaved: spec.interleaved, q: ropeTables(q, seqQ, spec.dims, spec.base), k: k && ropeTables(k, seqKV, spec.dims, spec.base) };
}

/** The angle tables of tokens at `positions` ([seq] or [B, seq]). */
export function ropeTables(positions: TokenPositions, seq: number, dims: number, base: number): RopeTables {
  const { cos, sin } = angleTables(positions.values, dims, base);
  return { cos: { array: cos, offset: 0, length: cos.length }, sin: { array: sin, offset: 0, length: sin.length }, batchStride: positions.perBatch ? seq : 0 };
}

/** Batch entry b's rows of a tables (all of them when shared). */
function tablesOfBatch(tables: RopeTables, b: number, half: number): RopeTables {
  if (tables.batchStride === 0) return tables;
  const rows = tables.batchStride * half;
  return { cos: sliceOperand(tables.cos, b * rows, rows), sin: sliceOperand(tables.sin, b * rows, rows), batchStride: tables.batchStride };
}

/** A part of an operand: `length` elements from element `start`. */
export function sliceOperand<T extends Float32Array | Uint8Array>(operand: Operand<T>, start: number, length = operand.length - start): Operand<T> {
  if (operand.resident) return { resident: operand.resident, offset: operand.offset + start, length };
  return { array: operand.array.subarray(start, start + length) as T, offset: 0, length };
}

/**
 * Batch b of an attention call on its own, for calls whose batches differ in key count or causal
 * offset (a ragged KV cache, ONNX's nonpad_kv_seqlen): batch 1, the mask rows of b, and b's views of
 * q, k, v (and out). Strides stay those of the whole tensors.
 */
export function batchSlice(plan: AttentionPlan, b: number, seqKV: number, offset: number, out: Operand<Float32Array>): AttentionPlan {
  const { strides } = plan;
  const mask = plan.mask && { ...plan.mask, operand: sliceOperand(plan.mask.operand, b * plan.mask.at.batch) };
  const half = (plan.rope?.dims ?? 0) / 2;
  const rope = plan.rope && { ...plan.rope, q: tablesOfBatch(plan.rope.q, b, half), k: plan.rope.k && tablesOfBatch(plan.rope.k, b, half) };
  return {
    ...plan,
    flops: plan.flops / Math.max(plan.batch, 1),
    batch: 1, seqKV, offset, mask, rope,
    q: sliceOperand(plan.q, b * strides.q.batch, strides.q.batch),
    k: sliceOperand(plan.k, b * strides.k.batch),
    v: sliceOperand(plan.v, b * strides.v.batch),
    out: sliceOperand(out, b * strides.out.batch, strides.out.batch),
    outDims: [1, ...plan.outDims.slice(1)],
  };
}
