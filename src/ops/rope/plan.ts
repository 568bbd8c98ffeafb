// Rotary position embedding's plan (RoPE, ONNX RotaryEmbedding opset 23 with the angle tables
// computed here). x is [B, H, S, D] or [B, S, H·D] (with options.heads); token (b, s) sits at
// position p = positions[s] (positions [S]) or positions[b, s] ([B, S]). For each pair i < dims/2:
//   theta_i = base^(-2i/dims),  angle = p · theta_i   (float64, rounded once to float32 tables)
//   half-split (default):  (x[i], x[i + dims/2]);  interleaved: (x[2i], x[2i + 1])
//   (x1, x2) -> (x1·cos - x2·sin, x2·cos + x1·sin);  x[d] for d >= dims is copied unchanged.
// Arguments read once and checked; the cos/sin tables [B·S or S, dims/2] are built here.
import type { Operand, OperandResolver, OpPlan } from '../../backend.js';
import { AttentionError } from '../../errors.js';
import { angleTables, readRope } from './options.js';
import {
  type TensorLike, type TensorRead, checkNoOverlap, checkOut, describe, floatTensor, plainTypedArray,
  readOptions, readTensor, sizeOf, typedArrayName,
} from '../../tensor.js';

/** Options of `engine.rotary`. */
export interface RotaryOptions {
  /**
   * The absolute position of each token: integers in [0, 2^24), dims [S] (every batch entry alike)
   * or [B, S]. Int32Array or Float32Array data (a resident tensor's values are read when the call is made).
   */
  positions: TensorLike<Int32Array | Float32Array>;
  /** Heads in x's last dim when x is [B, S, H·D]; with x [B, H, S, D] it must be H when given. */
  heads?: number;
  /** theta_i = base^(-2i/dims); default 10000. */
  base?: number;
  /** Leading elements of each head vector rotated, even, <= headDim; default (and 0, as in ONNX) headDim. */
  dims?: number;
  /** Pairs (2i, 2i+1) (GPT-J) instead of (i, i + dims/2) (GPT-NeoX, Llama); default false. */
  interleaved?: boolean;
  /** Write the result here (x itself is fine): a Float32Array or a float32 tensor from engine.tensor(). */
  out?: Float32Array | TensorLike<Float32Array>;
}

export interface RotaryPlan extends OpPlan {
  x: Operand<Float32Array>;
  batch: number;
  heads: number;
  seq: number;
  headDim: number;
  /** Rotated elements of each head vector (even). */
  dims: number;
  interleaved: boolean;
  /** Element strides of x (and of the result) along b, h, s; d is contiguous. */
  strideB: number;
  strideH: number;
  strideS: number;
  /** cos and sin of every token's angles, [tableRows, dims/2]; token (b, s) is row b·tableBatchStride + s. */
  cos: Operand<Float32Array>;
  sin: Operand<Float32Array>;
  /** S when positions are [B, S], 0 when every batch entry shares positions [S]. */
  tableBatchStride: number;
  outDims: number[];
  out: Operand<Float32Array> | undefined;
}

/** Positions are exact in float32 below this, and so are the angles' products with float64 thetas. */
export const MAX_POSITION = 2 ** 24;

/** Checks x, the positions and the options; builds the angle tables. */
export function planRotary(x: unknown, options: unknown, resolver: OperandResolver): RotaryPlan {
  const xRead = readTensor(x, 'x');
  const opts = readOptions(options, 'options', ['positions', 'heads', 'base', 'dims', 'interleaved', 'out']);
  if (opts.positions === undefined) {
    throw new AttentionError('INVALID_OPTION', 'options.positions is required: { data: Int32Array | Float32Array, dims: [S] or [B, S] }', 'options.positions');
  }
  const positionsRead = readTensor(opts.positions, 'options.positions', '{ data: Int32Array | Float32Array, dims: [S] or [B, S] }');
  const xc = floatTensor(xRead, resolver);
  const xDims = xc.dims;
  if (xDims.length !== 3 && xDims.length !== 4) {
    throw new AttentionError('INVALID_DIMS', `x must be [B, H, S, D] or [B, S, H·D], got dims [${xDims}]`, 'x.dims');
  }
  let batch: number, heads: number, seq: number, headDim: number;
  if (xDims.length === 4) {
    [batch, heads, seq, headDim] = xDims;
    if (opts.heads !== undefined && opts.heads !== heads) {
      throw new AttentionError('SHAPE_MISMATCH', `options.heads is ${describe(opts.heads)} but x [B, H, S, D] has H = ${heads}`, 'options.heads');
    }
  } else {
    if (opts.heads === undefined) throw new AttentionError('INVALID_OPTION', 'options.heads is required when x is [B, S, H·D]', 'options.heads');
    const h = opts.heads;
    if (typeof h !== 'number' || !Number.isSafeInteger(h) || h < 1) {
      throw new AttentionError('INVALID_OPTION', `options.heads must be a positive integer, got ${describe(h)}`, 'options.heads');
    }
    if (xDims[2] % h !== 0) throw new AttentionError('SHAPE_MISMATCH', `x.dims[2] (H·D) is ${xDims[2]}, not a multiple of options.heads ${h}`, 'options.heads');
    [batch, seq, heads, headDim] = [xDims[0], xDims[1], h, xDims[2] / h];
  }
  const { base, dims, interleaved } = readRope({ base: opts.base, dims: opts.dims, interleaved: opts.interleaved }, headDim, 'options')!;
  const positions = checkPositions(positionsRead, batch, seq, resolver, 'options.positions');
  const tableBatchStride = positionsRead.dims.length === 2 ? seq : 0;
  const { cos, sin } = angleTables(positions, dims, base);

  const size = sizeOf(xDims);
  const out = checkOut(opts.out, size, resolver, 'options.out');
  checkNoOverlap(out, [[xc.operand, 'x.data']], true);
  const fourD = xDims.length === 4;
  return {
    flops: 3 * batch * heads * seq * dims,
    x: xc.operand, batch, heads, seq, headDim, dims, interleaved,
    strideB: seq * heads * headDim,
    strideH: fourD ? seq * headDim : headDim,
    strideS: fourD ? headDim : heads * headDim,
    cos: { array: cos, offset: 0, length: cos.length },
    sin: { array: sin, offset: 0, length: sin.length },
    tableBatchStride, outDims: xDims, out,
  };
}

/**
 * The values of a positions tensor read as `name` (engine.rotary's options.positions, attention's
 * options.rope.qPositions and kPositions), checked: Int32Array or Float32Array data (or a resident
 * float32 tensor of this engine), dims [seq] or [batch, seq], integers in [0, 2^24).
 */
export function checkPositions(read: TensorRead, batch: number, seq: number, resolver: OperandResolver, name: string): Float64Array {
  const { dims } = read;
  let values: ArrayLike<number>;
  if (read.resident) {
    const resident = read.resident;
    if (!resolver.owns(resident)) throw new AttentionError('INVALID_TENSOR', `${name} is a tensor from another engine's memory; use this engine's tensor()`, `${name}.data`);
    if (resident.type !== 'float32') throw new AttentionError('INVALID_DTYPE', `${name}.data must be Int32Array or Float32Array, got a resident ${resident.type} tensor`, `${name}.data`);
    values = Float32Array.from(resident.data);
  } else {
    const type = typedArrayName(read.data);
    if (type !== 'Int32Array' && type !== 'Float32Array') {
      throw new AttentionError('INVALID_DTYPE', `${name}.data must be an Int32Array or a Float32Array, got ${describe(read.data)}`, `${name}.data`);
    }
    values = plainTypedArray(read.data) as Int32Array | Float32Array;
  }
  const shapeOk = (dims.length === 1 && dims[0] === seq) || (dims.length === 2 && dims[0] === batch && dims[1] === seq);
  if (!shapeOk) {
    throw new AttentionError('SHAPE_MISMATCH', `${name} must be [S] = [${seq}] or [B, S] = [${batch}, ${seq}], got dims [${dims}]`, `${name}.dims`);
  }
  const count = sizeOf(dims);
  if (values.length !== count) {
    throw new AttentionError('SHAPE_MISMATCH', `${name}.data has ${values.length} elements but dims [${dims}] need ${count}`, `${name}.data`);
  }
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const p = values[i];
    if (!Number.isInteger(p) || p < 0 || p >= MAX_POSITION) {
      throw new AttentionError('INVALID_OPTION', `${name}.data[${i}] is ${p}; positions must be integers in [0, 2^24)`, `${name}.data`);
    }
    out[i] = p;
  }
  return out;
}
