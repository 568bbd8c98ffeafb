// engine.onnxAttention: ONNX's Attention operator (opsets 23, 24 and 25, with the 1.23 errata) on
// this engine's kernels. The rules, all from the operator's spec:
//  - Q, K, V are 4D [B, H, S, D] or 3D [B, S, H·D] (then q_num_heads / kv_num_heads say H); Y comes
//    back in Q's layout and type. 3D inputs are read in place through strides, not transposed.
//  - past_key/past_value [B, Hkv, P, D] go in front of K/V; present_key/value are the concatenation.
//  - causal alignment: offset = P with a cache, nonpad[b] - Sq with nonpad_kv_seqlen, else 0.
//  - nonpad_kv_seqlen[b]: keys j >= nonpad[b] of batch b are padding.
//  - opset 25's left_window_size / right_window_size (-1, the default: unbounded): with p = offset + i
//    (the causal offset above), query i sees key j only when p - left <= j <= p + right; composed
//    with is_causal (which caps right at 0) and the mask. Key tiles outside the window are skipped.
//  - attn_mask: bool (true = attend) or float (added), broadcast to [B, Hq, Sq, T]; a last dim
//    shorter than T is padded with -inf (false).
//  - softcap before the mask; a fully masked row gives 0 (in Y and in qk mode 3).
//  - qk_matmul_output (when the attribute is given): mode 0 scaled QKᵀ, 1 after softcap, 2 after
//    the bias (mask, causal, padding), 3 the softmax.
//  - float16 tensors ({ type: 'float16', data: Uint16Array }) are computed in float32; Y,
//    present_* and qk output are float16 when Q is. softmax_precision is accepted; we always run
//    the softmax in float32, at least the precision any float16 model asks for.
//  - Every input and attribute is read once; attributes the operator does not define, mixed
//    float types, and out-of-range values are refused, naming the attribute or input.
import type { Backend } from '../backend.js';
import { AttentionError } from '../errors.js';
import { floatsToHalves, halvesToFloats } from '../float16.js';
import { attentionOp } from '../ops/attention/index.js';
import { type AttentionLayout, type AttentionOptionsRead, batchSlice, finishAttentionPlan, packed } from '../ops/attention/plan.js';
import { attentionScores } from './onnx-scores.js';
import { type TensorRead, checkDims, describe, plainTypedArray, readOptions, sizeOf, typedArrayName } from '../tensor.js';

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
  /** Opset 25: keys more than this many positions before the query's absolute position are hidden; -1 (default): unbounded. */
  left_window_size?: number;
  /** Opset 25: keys more than this many positions after the query's absolute position are hidden; -1 (default): unbounded. */
  right_window_size?: number;
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

/** Which outputs the node asks for (ONNX decides optional outputs by the node's output list). */
export interface OnnxAttentionRequest {
  outputs?: ReadonlyArray<'Y' | 'present_key' | 'present_value' | 'qk_matmul_output'>;
}

const INPUT_NAMES = ['Q', 'K', 'V', 'attn_mask', 'past_key', 'past_value', 'nonpad_kv_seqlen'] as const;
/** Every attribute of Attention in opsets 23-25; anything else is refused by name. */
const ATTRIBUTE_NAMES = [
  'is_causal', 'scale', 'softcap', 'q_num_heads', 'kv_num_heads', 'qk_matmul_output_mode', 'softmax_precision', 'left_window_size', 'right_window_size',
] as const;
const OUTPUT_NAMES = ['Y', 'present_key', 'present_value', 'qk_matmul_output'] as const;
/** softmax_precision: a TensorProto data type of a float (FLOAT, FLOAT16, DOUBLE, BFLOAT16). */
const FLOAT_TYPES = [1, 10, 11, 16];

type Float = { data: Float32Array; dims: number[]; half: boolean };

/** An ONNX tensor read once: its declared type, data and dims. */
interface OnnxRead {
  name: string;
  type: unknown;
  data: unknown;
  dims: number[];
}

function readOnnx(t: unknown, name: string): OnnxRead {
  if (t === null || typeof t !== 'object') throw new AttentionError('INVALID_TENSOR', `${name} must be a tensor { type?, data, dims }, got ${describe(t)}`, name);
  let type: unknown, data: unknown, dims: unknown;
  try {
    ({ type, data, dims } = t as OnnxTensor);
  } catch (cause) {
    throw new AttentionError('INVALID_TENSOR', `${name}: reading its type, data or dims threw (${String(cause)})`, name);
  }
  return { name, type, data, dims: checkDims(dims, name) };
}

/** A float input: float32 (Float32Array), or float16 (type 'float16', Uint16Array of bit patterns). */
function floatInput(t: OnnxRead): Float {
  const { name, type, data, dims } = t;
  const tag = typedArrayName(data);
  // float16 comes as Uint16Array bit patterns (Node 20), or as a Float16Array (Node 24's onnxruntime)
  const halfArray = tag === 'Uint16Array' || tag === 'Float16Array';
  const half = type === 'float16' || (type === undefined && halfArray);
  if (type !== undefined && type !== 'float32' && type !== 'float16') {
    throw new AttentionError('INVALID_DTYPE', `${name} must be of type float32 or float16, got type ${describe(type)}`, `${name}.type`);
  }
  if (half ? !halfArray : tag !== 'Float32Array') {
    throw new AttentionError('INVALID_DTYPE', `${name}.data must be a Float32Array (or, with type 'float16', a Uint16Array of float16 bits or a Float16Array), got ${describe(data)}`, `${name}.data`);
  }
  // a plain copy through the built-in getters (float16 is converted anyway): nothing the caller
  // holds, a subclass's overrides included, is read again
  const plain = plainTypedArray(data);
  const floats = tag === 'Uint16Array' ? halvesToFloats(plain as Uint16Array) : Float32Array.from(plain as ArrayLike<number>);
  if (floats.length !== sizeOf(dims)) throw new AttentionError('SHAPE_MISMATCH', `${name}.data has ${floats.length} elements but dims [${dims}] need ${sizeOf(dims)}`, `${name}.data`);
  return { data: floats, dims, half };
}

function intAttribute(attributes: Partial<Record<string, unknown>>, name: string, fallback: number | undefined, values?: number[]): number | undefined {
  const value = attributes[name];
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || (values && !values.includes(value))) {
    throw new AttentionError('INVALID_OPTION', `attribute ${name} must be ${values ? `one of ${values.join(', ')}` : 'an integer'}, got ${describe(value)}`, `attributes.${name}`);
  }
  return value;
}

/** A window side (opset 25): -1 (or absent) is unbounded, given back as undefined; otherwise an integer >= 0. */
function windowAttribute(attributes: Partial<Record<string, unknown>>, name: 'left_window_size' | 'right_window_size'): number | undefined {
  const value = attributes[name];
  if (value === undefined || value === -1) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new AttentionError('INVALID_OPTION', `attribute ${name} must be -1 (unbounded) or an integer >= 0, got ${describe(value)}`, `attributes.${name}`);
  }
  return value;
}

/** [B, H, S, D] view (dims and strides) of a 3D [B, S, H·D] or 4D tensor. */
function headView(t: Float, heads: number | undefined, name: string): { dims: [number, number, number, number]; strides: { batch: number; head: number; row: number } } {
  if (t.dims.length === 4) {
    const [b, h, s, d] = t.dims;
    if (heads !== undefined && heads !== h) {
      const attr = name === 'Q' ? 'q_num_heads' : 'kv_num_heads';
      throw new AttentionError('SHAPE_MISMATCH', `attribute ${attr} is ${heads} but 4D ${name} [${t.dims}] has ${h} heads`, `attributes.${attr}`);
    }
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

/** The attention mask with its last dim padded to `total` (-inf / false), read once, as a checked mask tensor. */
function onnxMask(mask: OnnxRead, total: number, half: boolean): TensorRead {
  const { dims, data, type } = mask;
  const bool = type === 'bool' || (type === undefined && typedArrayName(data) === 'Uint8Array');
  let values: Float32Array | Uint8Array;
  if (bool) {
    if (typedArrayName(data) !== 'Uint8Array') throw new AttentionError('INVALID_DTYPE', `a bool attn_mask must be a Uint8Array, got ${describe(data)}`, 'attn_mask.data');
    values = Uint8Array.from(plainTypedArray(data) as Uint8Array);
  } else {
    const float = floatInput(mask);
    if (float.half !== half) throw new AttentionError('INVALID_DTYPE', `a float attn_mask must have Q's type (${half ? 'float16' : 'float32'})`, 'attn_mask.type');
    values = float.data;
  }
  if (values.length !== sizeOf(dims)) throw new AttentionError('SHAPE_MISMATCH', `attn_mask.data has ${values.length} elements but dims [${dims}] need ${sizeOf(dims)}`, 'attn_mask.data');
  const last = dims[dims.length - 1];
  if (dims.length === 0 || last === total || last === 1) return { name: 'attn_mask', data: values, dims, resident: undefined };
  if (last > total) throw new AttentionError('SHAPE_MISMATCH', `attn_mask's last dim is ${last}, more than the ${total} keys`, `attn_mask.dims[${dims.length - 1}]`);
  const rows = sizeOf(dims.slice(0, -1));
  const padded = bool ? new Uint8Array(rows * total) : new Float32Array(rows * total).fill(-Infinity);
  for (let r = 0; r < rows; r++) padded.set(values.subarray(r * last, (r + 1) * last), r * total);
  return { name: 'attn_mask', data: padded, dims: [...dims.slice(0, -1), total], resident: undefined };
}

const output = (data: Float32Array, dims: number[], half: boolean): OnnxOutputTensor =>
  half ? { type: 'float16', data: floatsToHalves(data), dims } : { type: 'float32', data, dims };

/** The requested outputs, read once; by default Y, plus present_* when past inputs are given. */
function requestedOutputs(request: unknown, hasPast: boolean, qkMode: number | undefined): Set<string> {
  const outputs = readOptions(request, 'request', ['outputs']).outputs;
  if (outputs === undefined) {
    const names = new Set(['Y']);
    if (hasPast) names.add('present_key').add('present_value');
    // before requests existed, the qk output was asked for with the mode attribute: still honoured
    if (qkMode !== undefined) names.add('qk_matmul_output');
    return names;
  }
  if (!Array.isArray(outputs)) throw new AttentionError('INVALID_OPTION', `request.outputs must be an array of output names, got ${describe(outputs)}`, 'request.outputs');
  const names = new Set<string>();
  for (const name of Array.from(outputs as unknown[])) {
    if (typeof name !== 'string' || !(OUTPUT_NAMES as readonly string[]).includes(name)) {
      throw new AttentionError('INVALID_OPTION', `request.outputs names ${describe(name)}; the outputs are ${OUTPUT_NAMES.join(', ')}`, 'request.outputs');
    }
    names.add(name);
  }
  return names;
}

/** ONNX Attention (opsets 23-25) on `backend`; see the file header. */
export function onnxAttention(backend: Backend, inputs: OnnxAttentionInputs, attributes: OnnxAttentionAttributes = {}, request?: OnnxAttentionRequest): OnnxAttentionOutputs {
  // every read first
  if (inputs === null || typeof inputs !== 'object') throw new AttentionError('INVALID_TENSOR', `inputs must be an object { Q, K, V, ... }, got ${describe(inputs)}`, 'inputs');
  const given = readOptions(inputs, 'inputs', INPUT_NAMES);
  const attrs = readOptions(attributes, 'attributes', ATTRIBUTE_NAMES);
  const read = (name: (typeof INPUT_NAMES)[number]): OnnxRead | undefined => (given[name] === undefined || given[name] === null ? undefined : readOnnx(given[name], name));
  const [qRead, kRead, vRead] = [read('Q'), read('K'), read('V')];
  const [maskRead, pastKeyRead, pastValueRead, nonpadRead] = [read('attn_mask'), read('past_key'), read('past_value'), read('nonpad_kv_seqlen')];
  for (const [t, name] of [[qRead, 'Q'], [kRead, 'K'], [vRead, 'V']] as const) {
    if (!t) throw new AttentionError('INVALID_TENSOR', `inputs.${name} is required`, name);
  }
  // then every check
  const Q = floatInput(qRead!);
  const K = floatInput(kRead!);
  const V = floatInput(vRead!);
  for (const [t, name] of [[K, 'K'], [V, 'V']] as const) {
    if (t.half !== Q.half) throw new AttentionError('INVALID_DTYPE', `${name} is ${t.half ? 'float16' : 'float32'} but Q is ${Q.half ? 'float16' : 'float32'}: ONNX Attention takes one type T for Q, K and V`, `${name}.type`);
  }
  const causal = intAttribute(attrs, 'is_causal', 0, [0, 1]) === 1;
  const window = { left: windowAttribute(attrs, 'left_window_size'), right: windowAttribute(attrs, 'right_window_size') };
  const qkMode = intAttribute(attrs, 'qk_matmul_output_mode', undefined, [0, 1, 2, 3]) as 0 | 1 | 2 | 3 | undefined;
  intAttribute(attrs, 'softmax_precision', undefined, FLOAT_TYPES);
  if (attrs.scale !== undefined && (typeof attrs.scale !== 'number' || !Number.isFinite(attrs.scale))) {
    throw new AttentionError('INVALID_OPTION', `attribute scale must be a finite number, got ${describe(attrs.scale)}`, 'attributes.scale');
  }
  if (attrs.softcap !== undefined && (typeof attrs.softcap !== 'number' || !Number.isFinite(attrs.softcap) || attrs.softcap < 0)) {
    throw new AttentionError('INVALID_OPTION', `attribute softcap must be a finite number >= 0 (0: off), got ${describe(attrs.softcap)}`, 'attributes.softcap');
  }
  const qView = headView(Q, intAttribute(attrs, 'q_num_heads', undefined), 'Q');
  const kView = headView(K, intAttribute(attrs, 'kv_num_heads', undefined), 'K');
  const vView = headView(V, intAttribute(attrs, 'kv_num_heads', undefined), 'V');
  const [batch, qHeads, seqQ, headDim] = qView.dims;
  const [, kvHeads, seqNew] = kView.dims;
  const valueDim = vView.dims[3];
  if (vView.dims[0] !== batch || kView.dims[0] !== batch || kView.dims[3] !== headDim || vView.dims[2] !== seqNew || vView.dims[1] !== kvHeads) {
    throw new AttentionError('SHAPE_MISMATCH', `Q [${Q.dims}], K [${K.dims}] and V [${V.dims}] do not agree on batch, heads, lengths or head size`, 'K.dims');
  }
  if (kvHeads === 0 || qHeads % kvHeads !== 0) throw new AttentionError('SHAPE_MISMATCH', `query heads ${qHeads} are not a multiple of kv heads ${kvHeads}`, 'Q.dims');
  const pastKey = pastKeyRead ? floatInput(pastKeyRead) : undefined;
  const pastValue = pastValueRead ? floatInput(pastValueRead) : undefined;
  if (!pastKey !== !pastValue) throw new AttentionError('INVALID_TENSOR', 'past_key and past_value come together', pastKey ? 'past_value' : 'past_key');
  if (pastKey && pastValue) {
    const p = pastKey.dims[2];
    const want = (t: Float, name: string, width: number): void => {
      if (t.half !== Q.half) throw new AttentionError('INVALID_DTYPE', `${name} must have Q's type (${Q.half ? 'float16' : 'float32'})`, `${name}.type`);
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
  const outputs = requestedOutputs(request, past > 0 || pastKey !== undefined, qkMode);
  // K and V: read in place, or the present concatenation when there is a past
  let k = K.data, v = V.data;
  let kStrides = kView.strides, vStrides = vView.strides;
  let presentKey: Float32Array | undefined, presentValue: Float32Array | undefined;
  if ((pastKey && pastValue) || outputs.has('present_key') || outputs.has('present_value')) {
    presentKey = k = concat(pastKey, K, kView);
    presentValue = v = concat(pastValue, V, vView);
    kStrides = packed(kvHeads, total, headDim);
    vStrides = packed(kvHeads, total, valueDim);
  }
  let nonpad: number[] | undefined;
  if (nonpadRead) {
    if (typedArrayName(nonpadRead.data) !== 'BigInt64Array' || (nonpadRead.type !== undefined && nonpadRead.type !== 'int64')) {
      throw new AttentionError('INVALID_DTYPE', `nonpad_kv_seqlen must be an int64 BigInt64Array of ${batch} lengths, got ${describe(nonpadRead.data)}`, 'nonpad_kv_seqlen.data');
    }
    const lengths = plainTypedArray(nonpadRead.data) as BigInt64Array;
    if (nonpadRead.dims.length !== 1 || nonpadRead.dims[0] !== batch || lengths.length !== batch) {
      throw new AttentionError('SHAPE_MISMATCH', `nonpad_kv_seqlen must be [${batch}] with ${batch} values, got dims [${nonpadRead.dims}] and ${lengths.length} values`, 'nonpad_kv_seqlen.dims');
    }
    nonpad = Array.from(lengths, Number);
    if (past > 0) throw new AttentionError('UNSUPPORTED', 'nonpad_kv_seqlen cannot be combined with past_key/past_value (ONNX forbids it)', 'nonpad_kv_seqlen');
    if (nonpad.some((n) => n < 0 || n > total)) throw new AttentionError('SHAPE_MISMATCH', `nonpad_kv_seqlen [${nonpad}] must lie in [0, ${total}]`, 'nonpad_kv_seqlen');
  }
  const yStrides = Q.dims.length === 3 ? { batch: seqQ * qHeads * valueDim, head: valueDim, row: qHeads * valueDim } : packed(qHeads, seqQ, valueDim);
  const yDims = Q.dims.length === 3 ? [batch, seqQ, qHeads * valueDim] : [batch, qHeads, seqQ, valueDim];
  const array = (data: Float32Array) => ({ array: data, offset: 0 as const, length: data.length });
  const layout: AttentionLayout = {
    batch, qHeads, kvHeads, seqQ, seqKV: total, headDim, valueDim,
    q: array(Q.data), k: array(k), v: array(v),
    strides: { q: qView.strides, k: kStrides, v: vStrides, out: yStrides }, outDims: yDims, offset: past,
  };
  const mask = maskRead ? onnxMask(maskRead, total, Q.half) : undefined;
  // the window is shifted by the plan's offset (the past length), or per batch by nonpad[b] - Sq below
  const options: AttentionOptionsRead = { causal, scale: attrs.scale, softcap: attrs.softcap === 0 ? undefined : attrs.softcap, mask, window };
  const plan = finishAttentionPlan(layout, options, backend, 'attributes');

  let y: Float32Array;
  if (!nonpad) {
    y = backend.run(attentionOp, plan).data;
  } else {
    // per batch: keys past nonpad[b] are padding; causal and window offset nonpad[b] - Sq; each writes its part of y
    y = new Float32Array(sizeOf(yDims));
    for (let b = 0; b < batch; b++) backend.run(attentionOp, batchSlice(plan, b, nonpad[b], nonpad[b] - seqQ, array(y)));
  }
  const result: OnnxAttentionOutputs = { Y: output(y, yDims, Q.half) };
  if (presentKey && presentValue && (outputs.has('present_key') || outputs.has('present_value'))) {
    if (outputs.has('present_key')) result.present_key = output(presentKey, [batch, kvHeads, total, headDim], Q.half);
    if (outputs.has('present_value')) result.present_value = output(presentValue, [batch, kvHeads, total, valueDim], Q.half);
  }
  if (outputs.has('qk_matmul_output')) {
    const scoresPlan = nonpad ? { ...plan, offset: 0 } : plan;
    const maskData = plan.mask?.operand.array;
    result.qk_matmul_output = output(attentionScores(scoresPlan, Q.data, k, maskData, qkMode ?? 0, nonpad), [batch, qHeads, seqQ, total], Q.half);
  }
  return result;
}
