// engine.onnxAttention: ONNX's Attention operator (opsets 23 and 24, with the 1.23 errata) on this
// engine's kernels. The rules, all from the operator's spec:
//  - Q, K, V are 4D [B, H, S, D] or 3D [B, S, H·D] (then q_num_heads / kv_num_heads say H); Y comes
//    back in Q's layout and type. 3D inputs are read in place through strides, not transposed.
//  - past_key/past_value [B, Hkv, P, D] go in front of K/V; present_key/value are the concatenation.
//  - causal alignment: offset = P with a cache, nonpad[b] - Sq with nonpad_kv_seqlen, else 0.
//  - nonpad_kv_seqlen[b]: keys j >= nonpad[b] of batch b are padding.
//  - attn_mask: bool (true = attend) or float (added), broadcast to [B, Hq, Sq, T]; a last dim
//    shorter than T is padded with -inf (false).
//  - softcap before the mask; a fully masked row gives 0 (in Y and in qk mode 3).
//  - qk_matmul_output (when the attribute is given): mode 0 scaled QKᵀ, 1 after softcap, 2 after
//    the bias (mask, causal, padding), 3 the softmax.
//  - float16 tensors ({ type: 'float16', data: Uint16Array }) are computed in float32; Y,
//    present_* and qk output are float16 when Q is. softmax_precision is accepted; we always run
//    the softmax in float32, at least the precision any float16 model asks for.
import type { Engine } from './engine.js';
import { AttentionError } from './errors.js';
import { floatsToHalves, halvesToFloats } from './float16.js';
import { type AttentionLayout, batchSlice, packed, planAttentionOptions } from './plan.js';
import { attentionScores } from './scores.js';
import { checkDims, describe, sizeOf } from './tensor.js';

/** A tensor as onnxruntime gives it: float32, float16 (bit patterns), bool, or int64. */
export interface OnnxTensor {
  type?: string;
  data: Float32Array | Uint16Array | Uint8Array | BigInt64Array;
  dims: readonly number[];
}

export interface OnnxAttentionInputs {
  Q: OnnxTensor;
  K: OnnxTensor;
  V: OnnxTensor;
  attn_mask?: OnnxTensor | null;
  past_key?: OnnxTensor | null;
  past_value?: OnnxTensor | null;
  nonpad_kv_seqlen?: OnnxTensor | null;
}

export interface OnnxAttentionAttributes {
  is_causal?: number;
  scale?: number;
  softcap?: number;
  q_num_heads?: number;
  kv_num_heads?: number;
  qk_matmul_output_mode?: number;
  softmax_precision?: number;
}

export interface OnnxOutputTensor {
  type: 'float32' | 'float16';
  data: Float32Array | Uint16Array;
  dims: number[];
}

export interface OnnxAttentionOutputs {
  Y: OnnxOutputTensor;
  present_key?: OnnxOutputTensor;
  present_value?: OnnxOutputTensor;
  qk_matmul_output?: OnnxOutputTensor;
}

type Float = { data: Float32Array; dims: number[]; half: boolean };

function floatInput(t: unknown, name: string): Float {
  if (t === null || typeof t !== 'object') throw new AttentionError('INVALID_TENSOR', `${name} must be a tensor, got ${describe(t)}`, name);
  const { data, type } = t as OnnxTensor;
  const dims = checkDims((t as OnnxTensor).dims, name);
  const half = type === 'float16' || (type === undefined && data instanceof Uint16Array);
  if (half ? !(data instanceof Uint16Array) : !(data instanceof Float32Array)) {
    throw new AttentionError('INVALID_DTYPE', `${name}.data must be a Float32Array (or a Uint16Array of float16 bits with type 'float16'), got ${describe(data)}`, `${name}.data`);
  }
  if (data.length !== sizeOf(dims)) throw new AttentionError('SHAPE_MISMATCH', `${name}.data has ${data.length} elements but dims [${dims}] need ${sizeOf(dims)}`, `${name}.data`);
  return { data: half ? halvesToFloats(data as Uint16Array) : (data as Float32Array), dims, half };
}

function intAttribute(attributes: OnnxAttentionAttributes, name: keyof OnnxAttentionAttributes, fallback: number | undefined, values?: number[]): number | undefined {
  const value = attributes[name];
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || (values && !values.includes(value))) {
    throw new AttentionError('INVALID_OPTION', `attribute ${name} must be ${values ? `one of ${values.join(', ')}` : 'an integer'}, got ${describe(value)}`, `attributes.${name}`);
  }
  return value;
}

/** [B, H, S, D] view (dims and strides) of a 3D [B, S, H·D] or 4D tensor. */
function headView(t: Float, heads: number | undefined, name: string): { dims: [number, number, number, number]; strides: { batch: number; head: number; row: number } } {
  if (t.dims.length === 4) {
    const [b, h, s, d] = t.dims;
    return { dims: [b, h, s, d], strides: packed(h, s, d) };
  }
  if (t.dims.length !== 3) throw new AttentionError('INVALID_DIMS', `${name} must be 3D [B, S, H·D] or 4D [B, H, S, D], got dims [${t.dims}]`, `${name}.dims`);
  const attr = name === 'Q' ? 'q_num_heads' : 'kv_num_heads';
  if (heads === undefined || heads < 1 || t.dims[2] % heads !== 0) {
    throw new AttentionError('INVALID_OPTION', `3D ${name} [${t.dims}] needs attribute ${attr} dividing ${t.dims[2]}, got ${describe(heads)}`, `attributes.${attr}`);
  }
  const [b, s, hd] = t.dims;
  const d = hd / heads;
  return { dims: [b, heads, s, d], strides: { batch: s * hd, head: d, row: hd } };
}

/** Concatenates past [B, H, P, D] and new (any layout, as a view) along the sequence. */
function concat(past: Float | undefined, now: Float, view: ReturnType<typeof headView>): Float32Array {
  const [b, h, s, d] = view.dims;
  const p = past ? past.dims[2] : 0;
  const out = new Float32Array(b * h * (p + s) * d);
  for (let bi = 0; bi < b; bi++) {
    for (let hi = 0; hi < h; hi++) {
      const dst = (bi * h + hi) * (p + s) * d;
      if (past) out.set(past.data.subarray((bi * h + hi) * p * d, (bi * h + hi + 1) * p * d), dst);
      for (let si = 0; si < s; si++) {
        const src = bi * view.strides.batch + hi * view.strides.head + si * view.strides.row;
        out.set(now.data.subarray(src, src + d), dst + (p + si) * d);
      }
    }
  }
  return out;
}

/** The attention mask with its last dim padded to `total` (-inf / false), as an engine mask tensor. */
function onnxMask(mask: OnnxTensor, total: number): { data: Float32Array | Uint8Array; dims: number[] } {
  const dims = checkDims(mask.dims, 'attn_mask');
  const bool = mask.type === 'bool' || mask.data instanceof Uint8Array;
  const data: Float32Array | Uint8Array = bool ? (mask.data as Uint8Array) : floatInput(mask, 'attn_mask').data;
  if (bool && !(mask.data instanceof Uint8Array)) throw new AttentionError('INVALID_DTYPE', `a bool attn_mask must be a Uint8Array, got ${describe(mask.data)}`, 'attn_mask.data');
  if (data.length !== sizeOf(dims)) throw new AttentionError('SHAPE_MISMATCH', `attn_mask.data has ${data.length} elements but dims [${dims}] need ${sizeOf(dims)}`, 'attn_mask.data');
  const last = dims[dims.length - 1];
  if (dims.length === 0 || last === total || last === 1) return { data, dims };
  if (last > total) throw new AttentionError('SHAPE_MISMATCH', `attn_mask's last dim is ${last}, more than the ${total} keys`, `attn_mask.dims[${dims.length - 1}]`);
  const rows = data.length / last;
  const padded = bool ? new Uint8Array(rows * total) : new Float32Array(rows * total).fill(-Infinity);
  for (let r = 0; r < rows; r++) padded.set(data.subarray(r * last, (r + 1) * last), r * total);
  return { data: padded, dims: [...dims.slice(0, -1), total] };
}

const output = (data: Float32Array, dims: number[], half: boolean): OnnxOutputTensor =>
  half ? { type: 'float16', data: floatsToHalves(data), dims } : { type: 'float32', data, dims };

/** ONNX Attention (opsets 23/24) on `engine`; see the file header. */
export function onnxAttention(engine: Engine, inputs: OnnxAttentionInputs, attributes: OnnxAttentionAttributes = {}): OnnxAttentionOutputs {
  if (inputs === null || typeof inputs !== 'object') throw new AttentionError('INVALID_TENSOR', `inputs must be an object { Q, K, V, ... }, got ${describe(inputs)}`, 'inputs');
  if (attributes === null || typeof attributes !== 'object') throw new AttentionError('INVALID_OPTION', `attributes must be an object, got ${describe(attributes)}`, 'attributes');
  const Q = floatInput(inputs.Q, 'Q');
  const K = floatInput(inputs.K, 'K');
  const V = floatInput(inputs.V, 'V');
  const causal = intAttribute(attributes, 'is_causal', 0, [0, 1]) === 1;
  const qkMode = intAttribute(attributes, 'qk_matmul_output_mode', undefined, [0, 1, 2, 3]) as 0 | 1 | 2 | 3 | undefined;
  intAttribute(attributes, 'softmax_precision', undefined);
  const qView = headView(Q, intAttribute(attributes, 'q_num_heads', undefined), 'Q');
  const kView = headView(K, intAttribute(attributes, 'kv_num_heads', undefined), 'K');
  const vView = headView(V, intAttribute(attributes, 'kv_num_heads', undefined), 'V');
  const [batch, qHeads, seqQ, headDim] = qView.dims;
  const [, kvHeads, seqNew] = kView.dims;
  const valueDim = vView.dims[3];
  if (vView.dims[0] !== batch || kView.dims[0] !== batch || kView.dims[3] !== headDim || vView.dims[2] !== seqNew || vView.dims[1] !== kvHeads) {
    throw new AttentionError('SHAPE_MISMATCH', `Q [${Q.dims}], K [${K.dims}] and V [${V.dims}] do not agree on batch, heads, lengths or head size`, 'K.dims');
  }
  if (kvHeads === 0 || qHeads % kvHeads !== 0) throw new AttentionError('SHAPE_MISMATCH', `query heads ${qHeads} are not a multiple of kv heads ${kvHeads}`, 'Q.dims');
  const pastKey = inputs.past_key ? floatInput(inputs.past_key, 'past_key') : undefined;
  const pastValue = inputs.past_value ? floatInput(inputs.past_value, 'past_value') : undefined;
  if (!pastKey !== !pastValue) throw new AttentionError('INVALID_TENSOR', 'past_key and past_value come together', pastKey ? 'past_value' : 'past_key');
  if (pastKey && pastValue) {
    const p = pastKey.dims[2];
    const want = (t: Float, name: string, width: number): void => {
      const expected = [batch, kvHeads, p, width];
      if (t.dims.length !== 4 || t.dims.some((d, i) => d !== expected[i])) {
        throw new AttentionError('SHAPE_MISMATCH', `${name} is [${t.dims}] but must be [${expected}] ([B, Hkv, past, head size])`, `${name}.dims`);
      }
    };
    want(pastKey, 'past_key', headDim);
    want(pastValue, 'past_value', valueDim);
  }
  const past = pastKey ? pastKey.dims[2] : 0;
  const total = past + seqNew;
  // K and V: read in place, or the present concatenation when there is a past
  let k = K.data, v = V.data;
  let kStrides = kView.strides, vStrides = vView.strides;
  let presentKey: Float32Array | undefined, presentValue: Float32Array | undefined;
  if (pastKey && pastValue) {
    presentKey = k = concat(pastKey, K, kView);
    presentValue = v = concat(pastValue, V, vView);
    kStrides = packed(kvHeads, total, headDim);
    vStrides = packed(kvHeads, total, valueDim);
  }
  let nonpad: number[] | undefined;
  if (inputs.nonpad_kv_seqlen) {
    const t = inputs.nonpad_kv_seqlen;
    if (!(t.data instanceof BigInt64Array) || t.data.length !== batch) {
      throw new AttentionError('INVALID_DTYPE', `nonpad_kv_seqlen must be a BigInt64Array of ${batch} lengths, got ${describe(t.data)}`, 'nonpad_kv_seqlen.data');
    }
    nonpad = Array.from(t.data, Number);
    if (past > 0) throw new AttentionError('UNSUPPORTED', 'nonpad_kv_seqlen cannot be combined with past_key/past_value (ONNX forbids it)', 'nonpad_kv_seqlen');
    if (nonpad.some((n) => n < 0 || n > total)) throw new AttentionError('SHAPE_MISMATCH', `nonpad_kv_seqlen [${nonpad}] must lie in [0, ${total}]`, 'nonpad_kv_seqlen');
  }
  const yStrides = Q.dims.length === 3 ? { batch: seqQ * qHeads * valueDim, head: valueDim, row: qHeads * valueDim } : packed(qHeads, seqQ, valueDim);
  const yDims = Q.dims.length === 3 ? [batch, seqQ, qHeads * valueDim] : [batch, qHeads, seqQ, valueDim];
  const layout: AttentionLayout = {
    batch, qHeads, kvHeads, seqQ, seqKV: total, headDim, valueDim,
    q: qView.strides, k: kStrides, v: vStrides, out: yStrides, outDims: yDims, offset: past,
  };
  const softcap = attributes.softcap ? attributes.softcap : undefined;
  const mask = inputs.attn_mask ? onnxMask(inputs.attn_mask, total) : undefined;
  const options = { causal, scale: attributes.scale, softcap, mask };
  const plan = planAttentionOptions(layout, options, [[Q.data, 'Q.data'], [k, 'K.data'], [v, 'V.data']]);

  let y: Float32Array;
  if (!nonpad) {
    y = engine.runAttention(plan, Q.data, k, v).data;
  } else {
    // per batch: keys past nonpad[b] are padding; causal offset nonpad[b] - Sq; each writes its part of y
    y = new Float32Array(sizeOf(yDims));
    for (let b = 0; b < batch; b++) {
      const one = batchSlice(plan, b, nonpad[b], nonpad[b] - seqQ, Q.data, k, v, y);
      engine.runAttention(one.plan, one.q, one.k, one.v);
    }
  }
  const result: OnnxAttentionOutputs = { Y: output(y, yDims, Q.half) };
  if (presentKey && presentValue) {
    result.present_key = output(presentKey, [batch, kvHeads, total, headDim], Q.half);
    result.present_value = output(presentValue, [batch, kvHeads, total, valueDim], Q.half);
  }
  if (qkMode !== undefined) {
    const scoresPlan = nonpad ? { ...plan, offset: 0 } : plan;
    result.qk_matmul_output = output(attentionScores(scoresPlan, Q.data, k, qkMode, nonpad), [batch, qHeads, seqQ, total], Q.half);
  }
  return result;
}

