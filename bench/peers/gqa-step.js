// onnxruntime-node peer for one batched decode step of grouped-query attention: the com.microsoft
// GroupQueryAttention contrib op (CPU EP) on a ragged batch whose sequences each get one new token.
//   npm --prefix bench/peers ci && node bench/peers/gqa-step.js [--threads 1,2] [--rope] [--variants output-only,shared-kv]
//     [--cache-types float32,float16,int8] [--float16 op,cast]
// Self-contained: no wasm-attention code is loaded, so the numbers are ORT's alone.
//
// Layout (GroupQueryAttention's): q [B, 1, Hq·D], k and v [B, 1, Hkv·D], past_key and past_value
// [B, Hkv, maxLen, D] (right-padded, BNSH), seqlens_k int32 [B] = total length - 1 per sequence,
// total_sequence_length int32 scalar, with do_rotary: cos_cache and sin_cache [maxLen, D/2].
//
// Variants. What the CPU kernel does is from contrib_ops/cpu/bert/gqa_attention_base.h (onnxruntime
// 1.30): it calls past and present "shared" when past_key.data == present_key.data (and likewise for
// values), and then only writes the new token's k and v at position seqlens_k[b]; otherwise it zeroes
// the whole present buffer (B·Hkv·maxLen·D floats) and copies each sequence's past into it.
// - output-only (the default, the fastest): only `output` is fetched. ORT builds a throwaway present
//   in its arena (zeroed, each sequence's past copied in) and drops it; run() itself appends the new
//   k (rotated with rope, by the same float32 tables) and v to the caller's past at lengths[b]-1, so
//   the cache ends the step exactly as in shared-kv (a B·Hkv·D copy).
// - shared-kv: present_key/present_value are preallocated outputs wrapping the very Float32Arrays fed
//   as past_key/past_value. onnxruntime-node 1.30 wraps CPU typed arrays without copying (inputs and
//   preallocated outputs), so the kernel takes its shared path and writes only the new token. But the
//   1.30 binding then copies every fetched output, preallocated or not, into a fresh ArrayBuffer
//   (the result's present_key.data is a new buffer), i.e. 2·B·Hkv·maxLen·D floats per step, and its
//   IO binding path only takes 'gpu-buffer' tensors ("Tensor.location must be 'gpu-buffer' for IO
//   binding"; preferredOutputLocation 'cpu' / 'cpu-pinned' change nothing). So in Node this variant
//   is several times slower than output-only; it is kept to show that.
//
// Cache types (cacheType). What onnxruntime-node 1.30's CPU kernel takes (tried in this package, and
// from contrib_ops/cpu/bert/group_query_attention.cc and gqa_attention_base.h; line numbers are the
// 1.30 binary's own, from its error messages):
// - float32: T = float, past/present float32 (the above).
// - float16, two ways (option float16, FLOAT16_PATHS):
//   'op' (the default, the faster): the kernel registered for T = MLFloat16, where q, k, v, cos/sin
//   and the output are float16 as well (the schema binds them all to T). The model keeps float32
//   q/k/v/output and puts Cast nodes around the op, so run() takes and returns the same Float32Arrays;
//   cos/sin are fed as float16. Only T = float gets the flash/GEMV decode kernel; float16 takes the
//   generic path.
//   'cast': T = float with a float16 past/present. The schema's T_CACHE allows it, but the CPU kernel
//   has no such type binding, so the CPU EP's InsertCastTransformer wraps the node: Cast of the whole
//   past to float32 and of the whole present back, every step (seen in the optimized model). A float16
//   cache in storage only; the new token is attended in float32, then stored in float16.
// - int8: T = float with an int8 past/present (T_CACHE), attributes k_quant_type = v_quant_type =
//   'PER_CHANNEL' (must be equal, group_query_attention.cc:227), kv_cache_bit_width = 8 (4 or 8,
//   :229), inputs 12 and 13 k_scale, v_scale float [Hkv, 1, D] (:231, size checked at :300). Symmetric,
//   static scales: the kernel quantizes the new k/v with rintf(x·(1/scale)) clamped to [-128, 127]
//   and never updates the scales. Here the scales are max|x|/127 per (kv head, channel) over the valid
//   past (option scales to override); a new token beyond that range is clipped, as in ORT. ORT also
//   has 'PER_TENSOR' and int4 (uint8, two per byte, bit width 4); not used here (our pages have no
//   int4, and per-tensor is coarser than ours).
// Each cache type takes its fastest variant by default (FASTEST_VARIANT, measured with this file).
// For the non-float32 caches, run() appends the new k/v in the cache's format (half rounding to
// nearest even; int8 as ORT quantizes it), and reference() is the float64 reference over the cache as
// stored (decoded), the new token included: the same check as for the pool's float16/int8 pages.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { FLOAT, FLOAT16, INT8, INT32, encodeModel } from './onnx-proto.js';

export const VARIANTS = ['output-only', 'shared-kv'];
export const CACHE_TYPES = ['float32', 'float16', 'int8'];
/** The faster variant for each cache type, measured with this file's CLI (see bench/peers/README.md). */
export const FASTEST_VARIANT = { float32: 'output-only', float16: 'output-only', int8: 'output-only' };
/** Bytes of one cached element (the int8 scales are per channel, not per token: nothing per token). */
export const CACHE_BYTES = { float32: 4, float16: 2, int8: 1 };
/**
 * The two ways to a float16 cache: 'op', GQA's float16 kernel (T = float16: q, k, v, cos/sin and output
 * in float16 too; Cast nodes around it keep run() in float32), or 'cast', GQA with T = float and a
 * float16 past/present, which the CPU EP only runs by inserting Casts of the whole past to float32 and
 * of the present back (its InsertCastTransformer: there is no such kernel).
 */
export const FLOAT16_PATHS = ['op', 'cast'];
/** The faster of FLOAT16_PATHS, measured with this file's CLI. */
export const FLOAT16_PATH = 'op';
const CACHE_ELEMENT = { float32: FLOAT, float16: FLOAT16, int8: INT8 };
const CACHE_ARRAY = { float32: Float32Array, float16: Uint16Array, int8: Int8Array };

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** A number as IEEE half bits, rounded to nearest even (as ORT's Cast to float16). */
export function toHalf(x) {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = ((bits >>> 23) & 0xff) - 112; // rebiased for half
  let mantissa = bits & 0x7fffff;
  if (exponent === 143) return sign | 0x7c00 | (mantissa ? 0x200 : 0); // inf, NaN
  if (exponent >= 31) return sign | 0x7c00;
  let shift = 13;
  let h = (exponent << 10) | (mantissa >>> 13);
  if (exponent <= 0) {
    if (exponent < -10) return sign;
    mantissa |= 0x800000;
    shift = 14 - exponent;
    h = mantissa >>> shift;
  }
  const rest = mantissa & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  if (rest > halfway || (rest === halfway && h & 1)) h++; // a carry rolls into the exponent, as it should
  return sign | h;
}

/** IEEE half bits as a number. */
export function fromHalf(h) {
  const exponent = (h >>> 10) & 0x1f;
  const fraction = (h & 0x3ff) / 1024;
  const value = exponent === 0 ? fraction * 2 ** -14 : exponent === 31 ? (fraction ? NaN : Infinity) : (1 + fraction) * 2 ** (exponent - 15);
  return h & 0x8000 ? -value : value;
}

/** ORT's int8 KV quantizer (MLAS: rintf(x · inverse) clamped to [-128, 127]), float32 product, ties to even. */
function quantizeInt8(x, inverse) {
  const y = Math.fround(x * inverse);
  let r = Math.round(y);
  if (r - y === 0.5 && r % 2 !== 0) r -= 1;
  return r < -128 ? -128 : r > 127 ? 127 : r;
}

/** A seeded generator of floats in [-1, 1) (mulberry32), so every run sees the same data. */
export function seededRandom(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  };
}

/** `count` lengths evenly spaced over [min, max] (both included), in a seeded shuffled order. */
export function evenLengths(count, min, max, seed = 7) {
  const lengths = Array.from({ length: count }, (_, i) => (count === 1 ? max : Math.round(min + ((max - min) * i) / (count - 1))));
  const random = seededRandom(seed);
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(((random() + 1) / 2) * (i + 1));
    [lengths[i], lengths[j]] = [lengths[j], lengths[i]];
  }
  return lengths;
}

/** Float32Array of n seeded values in [-1, 1). */
export function seededArray(n, seed) {
  const random = seededRandom(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = random();
  return out;
}

/** RoPE angle tables [maxLen, D/2]: cos and sin of p·base^(-2i/D), rounded to float32 (half-split layout). */
export function ropeTables(maxLen, headDim, base = 10000) {
  const half = headDim / 2;
  const cos = new Float32Array(maxLen * half);
  const sin = new Float32Array(maxLen * half);
  for (let p = 0; p < maxLen; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * base ** ((-2 * i) / headDim);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * The ONNX model: com.microsoft GroupQueryAttention (opset 1 of that domain), fixed shapes, with a
 * cacheType past/present ('float32', 'float16': the op in float16 between Cast nodes, 'int8':
 * per-channel quantized with k_scale/v_scale inputs [Hkv, 1, D]). q, k, v and output are float32.
 */
export function gqaStepModel({ batch, qHeads, kvHeads, headDim, maxLen, rope, cacheType = 'float32', float16 = FLOAT16_PATH }) {
  const half = cacheType === 'float16' && float16 === 'op';
  const cacheDims = [batch, kvHeads, maxLen, headDim];
  const cache = CACHE_ELEMENT[cacheType];
  const inputs = [
    { name: 'query', dims: [batch, 1, qHeads * headDim] },
    { name: 'key', dims: [batch, 1, kvHeads * headDim] },
    { name: 'value', dims: [batch, 1, kvHeads * headDim] },
    { name: 'past_key', dims: cacheDims, type: cache },
    { name: 'past_value', dims: cacheDims, type: cache },
    { name: 'seqlens_k', dims: [batch], type: INT32 },
    { name: 'total_sequence_length', dims: [], type: INT32 },
  ];
  if (rope) inputs.push({ name: 'cos_cache', dims: [maxLen, headDim / 2], type: half ? FLOAT16 : FLOAT }, { name: 'sin_cache', dims: [maxLen, headDim / 2], type: half ? FLOAT16 : FLOAT });
  // GQA's inputs by position: 7, 8 cos/sin, 9 position_ids, 10 attention_bias, 11 head_sink, 12, 13 k/v scales
  const gqaInputs = inputs.map((i) => (half && ['query', 'key', 'value'].includes(i.name) ? `${i.name}_f16` : i.name));
  const attrs = { num_heads: qHeads, kv_num_heads: kvHeads, scale: { float: 1 / Math.sqrt(headDim) } };
  if (rope) Object.assign(attrs, { do_rotary: 1, rotary_interleaved: 0 });
  if (cacheType === 'int8') {
    while (gqaInputs.length < 12) gqaInputs.push('');
    gqaInputs.push('k_scale', 'v_scale');
    inputs.push({ name: 'k_scale', dims: [kvHeads, 1, headDim] }, { name: 'v_scale', dims: [kvHeads, 1, headDim] });
    Object.assign(attrs, { k_quant_type: 'PER_CHANNEL', v_quant_type: 'PER_CHANNEL', kv_cache_bit_width: 8 });
  }
  const outputs = [
    { name: 'output', dims: [batch, 1, qHeads * headDim] },
    { name: 'present_key', dims: cacheDims, type: cache },
    { name: 'present_value', dims: cacheDims, type: cache },
  ];
  const gqaOutputs = outputs.map((o) => (half && o.name === 'output' ? 'output_f16' : o.name));
  const nodes = [{ op: 'GroupQueryAttention', domain: 'com.microsoft', inputs: gqaInputs, outputs: gqaOutputs, attrs }];
  if (half) {
    for (const name of ['query', 'key', 'value']) nodes.unshift({ op: 'Cast', inputs: [name], outputs: [`${name}_f16`], attrs: { to: FLOAT16 } });
    nodes.push({ op: 'Cast', inputs: ['output_f16'], outputs: ['output'], attrs: { to: FLOAT } });
  }
  return encodeModel({ graph: { name: 'gqa_step', nodes, inputs, outputs }, opsets: { '': 17, 'com.microsoft': 1 } });
}

/** Rotates one head vector x (length D, half-split pairs i and i + D/2) to position p, in float64. */
function rotate(x, p, base) {
  const d = x.length;
  const half = d / 2;
  const out = new Float64Array(d);
  for (let i = 0; i < half; i++) {
    const angle = p * base ** ((-2 * i) / d);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    out[i] = x[i] * c - x[i + half] * s;
    out[i + half] = x[i + half] * c + x[i] * s;
  }
  return out;
}

/**
 * Float64 reference for the step: per sequence b and query head h (kv head g = h / (Hq/Hkv)),
 * softmax(q·kᵀ/√D)·v over keys 0..lengths[b]-1, where keys/values 0..lengths[b]-2 come from the
 * past buffers as stored (already rotated) and the last one is the new k/v. With rope, q and the new
 * k are rotated to position lengths[b]-1. Returns [B, Hq·D].
 * pastKey/pastValue: Float32Arrays [B, Hkv, maxLen, D], or functions (offset) → the D values of the
 * row at that element offset (a decoded float16/int8 cache). k = v = null: the new token is already
 * in the past at lengths[b]-1 (as stored, rotated) and is read from there. sequences: the b to
 * compute (default all; the other rows stay 0).
 */
export function referenceGqaStep({ lengths, qHeads, kvHeads, headDim, maxLen, rope, sequences }, pastKey, pastValue, q, k, v) {
  const D = headDim;
  const group = qHeads / kvHeads;
  const base = rope ? (rope.base ?? 10000) : 0;
  const out = new Float64Array(lengths.length * qHeads * D);
  const scale = 1 / Math.sqrt(D);
  const rows = (past) => (typeof past === 'function' ? past : (at) => past.subarray(at, at + D));
  const [keyRow, valueRow] = [rows(pastKey), rows(pastValue)];
  for (const b of sequences ?? lengths.keys()) {
    const L = lengths[b];
    for (let g = 0; g < kvHeads; g++) {
      const cache = (b * kvHeads + g) * maxLen * D;
      const kvAt = (b * kvHeads + g) * D;
      let newK = k ? k.subarray(kvAt, kvAt + D) : keyRow(cache + (L - 1) * D);
      if (rope && k) newK = rotate(newK, L - 1, base);
      const newV = v ? v.subarray(kvAt, kvAt + D) : valueRow(cache + (L - 1) * D);
      for (let j = 0; j < group; j++) {
        const h = g * group + j;
        const qAt = (b * qHeads + h) * D;
        let qh = q.subarray(qAt, qAt + D);
        if (rope) qh = rotate(qh, L - 1, base);
        const scores = new Float64Array(L);
        let max = -Infinity;
        for (let t = 0; t < L; t++) {
          const key = t === L - 1 ? newK : keyRow(cache + t * D);
          let dot = 0;
          for (let i = 0; i < D; i++) dot += qh[i] * key[i];
          scores[t] = dot * scale;
          if (scores[t] > max) max = scores[t];
        }
        let sum = 0;
        for (let t = 0; t < L; t++) sum += scores[t] = Math.exp(scores[t] - max);
        const o = out.subarray(qAt, qAt + D);
        for (let t = 0; t < L; t++) {
          const w = scores[t] / sum;
          const val = t === L - 1 ? newV : valueRow(cache + t * D);
          for (let i = 0; i < D; i++) o[i] += w * val[i];
        }
      }
    }
  }
  return out;
}

/** Max |actual - expected|; with rows ({ length, indices }) only over those rows of that length. */
export function maxAbsError(actual, expected, rows) {
  if (actual.length !== expected.length) return NaN;
  const ranges = rows ? rows.indices.map((r) => [r * rows.length, (r + 1) * rows.length]) : [[0, actual.length]];
  let m = 0;
  for (const [from, to] of ranges) {
    for (let i = from; i < to; i++) {
      const d = Math.abs(actual[i] - expected[i]);
      if (!(d <= m)) m = d; // a NaN sticks
    }
  }
  return m;
}

/**
 * One decode step through onnxruntime-node's GroupQueryAttention.
 * options: lengths (total length per sequence, new token included), qHeads, kvHeads, headDim,
 * threads (intraOpNumThreads, default 1), rope (false | true | { base }), cacheType ('float32' default,
 * 'float16' or 'int8': see the header), float16 (the float16 cache's path: FLOAT16_PATH default, or one
 * of FLOAT16_PATHS), variant (default FASTEST_VARIANT[cacheType], or 'output-only'
 * or 'shared-kv'), maxLen (default max(lengths)), past ({ key, value } Float32Arrays of
 * [B, Hkv, maxLen, D] to use instead of allocating and filling new seeded ones: used as the cache in
 * float32, converted otherwise and then left alone), scales (int8: { key, value } Float32Arrays
 * [Hkv·D] instead of max|past|/127 per kv head and channel), seed.
 * Returns { variant (with ' +rotary' and the float16 path), cacheType, maxLen, pastKey, pastValue (the cache as stored: Float32Array,
 * Uint16Array of half bits or Int8Array), scales (int8), run(q, k, v) → Promise<Float32Array [B, Hq·D]>,
 * reference(q, sequences?) → Float64Array [B, Hq·D] (after a run: the float64 reference over the
 * stored cache, the appended token included), close() }.
 * Both variants leave the new k (rotated, with rope) and v in the past at lengths[b]-1.
 * In shared-kv, run returns the same preallocated array each time (overwritten by the next run).
 */
export async function createOrtGqaStep({ lengths, qHeads, kvHeads, headDim, threads = 1, rope = false, cacheType = 'float32', float16 = FLOAT16_PATH, variant, maxLen, past, scales, seed = 1 }) {
  if (!CACHE_TYPES.includes(cacheType)) throw new Error(`cacheType must be one of ${CACHE_TYPES.join(', ')}, got ${cacheType}`);
  if (!FLOAT16_PATHS.includes(float16)) throw new Error(`float16 must be one of ${FLOAT16_PATHS.join(', ')}, got ${float16}`);
  const halfOp = cacheType === 'float16' && float16 === 'op';
  variant ??= FASTEST_VARIANT[cacheType];
  if (!VARIANTS.includes(variant)) throw new Error(`variant must be one of ${VARIANTS.join(', ')}, got ${variant}`);
  if (qHeads % kvHeads !== 0) throw new Error(`qHeads (${qHeads}) must be a multiple of kvHeads (${kvHeads})`);
  const ort = await import('onnxruntime-node');
  const batch = lengths.length;
  const longest = Math.max(...lengths);
  maxLen ??= longest;
  if (longest > maxLen || Math.min(...lengths) < 1) throw new Error(`lengths must lie in 1..maxLen (${maxLen})`);
  const cacheSize = batch * kvHeads * maxLen * headDim;
  const source = { key: past?.key ?? seededArray(cacheSize, seed), value: past?.value ?? seededArray(cacheSize, seed + 1) };
  if (source.key.length !== cacheSize || source.value.length !== cacheSize) throw new Error(`past buffers must hold ${cacheSize} floats`);

  // The cache as stored, and the writer and reader of one element of it (`which` = 'key' | 'value', `at` = element offset)
  const headOf = (at) => Math.floor(at / (maxLen * headDim)) % kvHeads;
  let inverse;
  if (cacheType === 'int8') {
    scales = scales ?? { key: channelScales(source.key), value: channelScales(source.value) };
    for (const s of [scales.key, scales.value]) if (s.length !== kvHeads * headDim) throw new Error(`scales must hold ${kvHeads * headDim} floats`);
    inverse = { key: scales.key.map((x) => 1 / x), value: scales.value.map((x) => 1 / x) };
  }
  const encode = {
    float32: (which, at, x) => void (stored[which][at] = x),
    float16: (which, at, x) => void (stored[which][at] = toHalf(x)),
    int8: (which, at, x) => void (stored[which][at] = quantizeInt8(x, inverse[which][headOf(at) * headDim + (at % headDim)])),
  }[cacheType];
  const stored = cacheType === 'float32' ? source : { key: new CACHE_ARRAY[cacheType](cacheSize), value: new CACHE_ARRAY[cacheType](cacheSize) };
  for (const which of cacheType === 'float32' ? [] : ['key', 'value']) {
    const [from, to] = [source[which], stored[which]];
    for (let row = 0; row < cacheSize / headDim; row++) {
      const at = row * headDim;
      if (cacheType === 'float16') {
        for (let i = at; i < at + headDim; i++) to[i] = toHalf(from[i]);
        continue;
      }
      const scale = inverse[which].subarray(headOf(at) * headDim, (headOf(at) + 1) * headDim);
      for (let i = 0; i < headDim; i++) to[at + i] = quantizeInt8(from[at + i], scale[i]);
    }
  }
  /** The D values of the stored row at element offset `at`, decoded to float. */
  function decodeRow(which, at) {
    const row = stored[which].subarray(at, at + headDim);
    if (cacheType === 'float32') return row;
    if (cacheType === 'float16') return Float32Array.from(row, fromHalf);
    const s = scales[which].subarray(headOf(at) * headDim, (headOf(at) + 1) * headDim);
    return Float32Array.from(row, (x, i) => x * s[i]);
  }
  /** Per kv head and channel, max|x| / 127 over the valid past (positions 0..lengths[b]-2). */
  function channelScales(data) {
    const max = new Float32Array(kvHeads * headDim);
    for (let b = 0; b < batch; b++) {
      for (let g = 0; g < kvHeads; g++) {
        for (let t = 0; t < lengths[b] - 1; t++) {
          const at = ((b * kvHeads + g) * maxLen + t) * headDim;
          for (let i = 0; i < headDim; i++) max[g * headDim + i] = Math.max(max[g * headDim + i], Math.abs(data[at + i]));
        }
      }
    }
    return max.map((m) => (m > 0 ? m / 127 : 1));
  }

  const session = await ort.InferenceSession.create(gqaStepModel({ batch, qHeads, kvHeads, headDim, maxLen, rope, cacheType, float16 }), {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    logSeverityLevel: 3,
  });

  const cacheDims = [batch, kvHeads, maxLen, headDim];
  const pastKeyTensor = new ort.Tensor(cacheType, stored.key, cacheDims);
  const pastValueTensor = new ort.Tensor(cacheType, stored.value, cacheDims);
  const fixed = {
    past_key: pastKeyTensor,
    past_value: pastValueTensor,
    seqlens_k: new ort.Tensor('int32', Int32Array.from(lengths, (L) => L - 1), [batch]),
    total_sequence_length: new ort.Tensor('int32', Int32Array.of(longest), []),
  };
  if (cacheType === 'int8') {
    fixed.k_scale = new ort.Tensor('float32', scales.key, [kvHeads, 1, headDim]);
    fixed.v_scale = new ort.Tensor('float32', scales.value, [kvHeads, 1, headDim]);
  }
  let tables;
  if (rope) {
    tables = ropeTables(maxLen, headDim, rope.base ?? 10000);
    const tableDims = [maxLen, headDim / 2];
    if (halfOp) {
      // the op rotates with float16 tables; the appended keys below use the same (rounded) values
      const halves = { cos: Uint16Array.from(tables.cos, toHalf), sin: Uint16Array.from(tables.sin, toHalf) };
      tables = { cos: Float32Array.from(halves.cos, fromHalf), sin: Float32Array.from(halves.sin, fromHalf) };
      fixed.cos_cache = new ort.Tensor('float16', halves.cos, tableDims);
      fixed.sin_cache = new ort.Tensor('float16', halves.sin, tableDims);
    } else {
      fixed.cos_cache = new ort.Tensor('float32', tables.cos, tableDims);
      fixed.sin_cache = new ort.Tensor('float32', tables.sin, tableDims);
    }
  }
  const output = new Float32Array(batch * qHeads * headDim);
  const fetches =
    variant === 'shared-kv'
      ? { output: new ort.Tensor('float32', output, [batch, 1, qHeads * headDim]), present_key: pastKeyTensor, present_value: pastValueTensor }
      : ['output'];

  // output-only: the step's k (rotated like GQA does it, half-split, at position lengths[b]-1) and v go
  // into the caller's past at lengths[b]-1, as the shared kernel path would have written them (in
  // float16, from the float16-rounded k and v that the Cast nodes give the op).
  const half = headDim / 2;
  const input = halfOp ? (x) => fromHalf(toHalf(x)) : (x) => x;
  function appendToPast(k, v) {
    for (let b = 0; b < batch; b++) {
      const pos = lengths[b] - 1;
      for (let g = 0; g < kvHeads; g++) {
        const src = (b * kvHeads + g) * headDim;
        const dst = ((b * kvHeads + g) * maxLen + pos) * headDim;
        for (let i = 0; i < headDim; i++) encode('value', dst + i, input(v[src + i]));
        if (!tables) {
          for (let i = 0; i < headDim; i++) encode('key', dst + i, input(k[src + i]));
          continue;
        }
        for (let i = 0; i < half; i++) {
          const c = tables.cos[pos * half + i];
          const s = tables.sin[pos * half + i];
          const x1 = input(k[src + i]);
          const x2 = input(k[src + i + half]);
          encode('key', dst + i, Math.fround(x1 * c - x2 * s));
          encode('key', dst + i + half, Math.fround(x2 * c + x1 * s));
        }
      }
    }
  }

  return {
    variant: `${variant}${rope ? ' +rotary' : ''}${cacheType === 'float16' ? ` (float16 ${float16})` : ''}`,
    cacheType,
    maxLen,
    pastKey: stored.key,
    pastValue: stored.value,
    scales,
    async run(q, k, v) {
      const feeds = {
        ...fixed,
        query: new ort.Tensor('float32', q, [batch, 1, qHeads * headDim]),
        key: new ort.Tensor('float32', k, [batch, 1, kvHeads * headDim]),
        value: new ort.Tensor('float32', v, [batch, 1, kvHeads * headDim]),
      };
      const result = await session.run(feeds, fetches);
      if (variant === 'shared-kv') return output;
      appendToPast(k, v);
      return result.output.data;
    },
    reference: (q, sequences) =>
      referenceGqaStep({ lengths, qHeads, kvHeads, headDim, maxLen, rope, sequences }, (at) => decodeRow('key', at), (at) => decodeRow('value', at), q, null, null),
    close: () => session.release(),
  };
}

// ---------------------------------------------------------------------------------------------
// CLI: the issue's workload.

/** Busy CPU seconds of the whole machine so far (Linux /proc/stat, USER_HZ = 100), or NaN elsewhere. */
function machineBusySeconds() {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = fields[3] + (fields[4] ?? 0); // idle + iowait
    return (fields.slice(0, 8).reduce((a, b) => a + b, 0) - idle) / 100;
  } catch {
    return NaN;
  }
}

/** CPU seconds this process has used (all its threads, ORT's pool included). */
const ownCpuSeconds = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};

async function main() {
  const { values } = parseArgs({
    options: {
      threads: { type: 'string', default: '1' },
      rope: { type: 'boolean', default: false },
      variants: { type: 'string', default: VARIANTS.join(',') },
      'cache-types': { type: 'string', default: 'float32' },
      float16: { type: 'string', default: FLOAT16_PATH },
      steps: { type: 'string', default: '10' },
      warmup: { type: 'string', default: '2' },
      batch: { type: 'string', default: '64' },
      'min-len': { type: 'string', default: '256' },
      'max-len': { type: 'string', default: '4096' },
      json: { type: 'boolean', default: false },
    },
  });
  const threadList = values.threads.split(',').map(Number);
  for (const t of threadList) if (!Number.isInteger(t) || t < 1) throw new Error(`--threads takes integers >= 1, got ${values.threads}`);
  const variants = values.variants.split(',');
  for (const v of variants) if (!VARIANTS.includes(v)) throw new Error(`unknown variant ${v}; known: ${VARIANTS.join(', ')}`);
  const cacheTypes = values['cache-types'].split(',');
  for (const c of cacheTypes) if (!CACHE_TYPES.includes(c)) throw new Error(`unknown cache type ${c}; known: ${CACHE_TYPES.join(', ')}`);
  const float16Paths = values.float16.split(',');
  for (const f of float16Paths) if (!FLOAT16_PATHS.includes(f)) throw new Error(`unknown float16 path ${f}; known: ${FLOAT16_PATHS.join(', ')}`);
  const steps = Number(values.steps);
  const warmup = Number(values.warmup);
  const log = (text) => process.stderr.write(text);
  const MB = 1024 * 1024;

  const shape = { qHeads: 32, kvHeads: 8, headDim: 128, rope: values.rope ? { base: 10000 } : false };
  const lengths = evenLengths(Number(values.batch), Number(values['min-len']), Number(values['max-len']));
  const maxLen = Math.max(...lengths);
  const B = lengths.length;
  const { qHeads, kvHeads, headDim } = shape;
  const kvBytesPerStep = lengths.reduce((a, L) => a + L, 0) * kvHeads * headDim * 2 * 4; // float32
  const cacheBytes = B * kvHeads * maxLen * headDim * 4 * 2;

  log(`filling the padded past (${(cacheBytes / 2 ** 30).toFixed(2)} GiB)...`);
  const t0 = performance.now();
  const past = { key: seededArray(B * kvHeads * maxLen * headDim, 1), value: seededArray(B * kvHeads * maxLen * headDim, 2) };
  const q = seededArray(B * qHeads * headDim, 3);
  const k = seededArray(B * kvHeads * headDim, 4);
  const v = seededArray(B * kvHeads * headDim, 5);
  log(` ${((performance.now() - t0) / 1000).toFixed(1)} s; float64 reference...`);
  const t1 = performance.now();
  // float32 against the exact new token; float16/int8 against their stored cache, computed on their first run
  const expected = { float32: referenceGqaStep({ lengths, maxLen, ...shape }, past.key, past.value, q, k, v) };
  log(` ${((performance.now() - t1) / 1000).toFixed(1)} s\n`);
  // A collector to call before each session, so that one variant's garbage (shared-kv's copied-out
  // ArrayBuffers) does not count against the next.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc');
  const settle = async () => {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 200));
    gc();
  };

  const rows = [];
  for (const threads of threadList) {
   for (const [cacheType, float16] of cacheTypes.flatMap((c) => (c === 'float16' ? float16Paths.map((f) => [c, f]) : [[c]]))) {
    for (const variant of variants) {
      log(`threads ${threads}, ${cacheType} cache${float16 ? ` (${float16})` : ''}, ${variant}${shape.rope ? ' +rotary' : ''}:`);
      await settle();
      const rssBefore = process.memoryUsage().rss;
      const step = await createOrtGqaStep({ lengths, maxLen, threads, cacheType, float16, variant, past, ...shape });
      try {
        const first = await step.run(q, k, v);
        const key = float16 ? `${cacheType} ${float16}` : cacheType;
        expected[key] ??= step.reference(q);
        const maxError = maxAbsError(first, expected[key]);
        for (let i = 1; i < warmup; i++) await step.run(q, k, v);
        const times = [];
        const busy0 = machineBusySeconds();
        const own0 = ownCpuSeconds();
        const wall0 = performance.now();
        for (let i = 0; i < steps; i++) {
          const s = performance.now();
          await step.run(q, k, v);
          times.push(performance.now() - s);
        }
        const wall = (performance.now() - wall0) / 1000;
        // Cores' worth of CPU that other processes used while the steps ran: a shared machine shows here.
        const otherCores = Math.max(0, machineBusySeconds() - busy0 - (ownCpuSeconds() - own0)) / wall;
        times.sort((a, b) => a - b);
        const ms = times[Math.floor(times.length / 2)];
        const row = {
          threads,
          cacheType,
          variant: step.variant,
          medianMs: ms,
          minMs: times[0],
          maxMs: times[times.length - 1],
          kvGBps: (kvBytesPerStep * CACHE_BYTES[cacheType]) / 4 / (ms / 1000) / 1e9,
          maxError,
          otherCores,
          rssMB: process.memoryUsage().rss / MB,
          rssGrowthMB: (process.memoryUsage().rss - rssBefore) / MB,
        };
        rows.push(row);
        log(` median ${ms.toFixed(1)} ms, max error ${maxError.toExponential(2)}, other processes ${otherCores.toFixed(2)} cores\n`);
      } finally {
        await step.close();
      }
    }
   }
  }

  const ort = await import('onnxruntime-node');
  const header = {
    node: process.version,
    onnxruntimeNode: ort.env.versions?.node,
    batch: B,
    lengths: `${Math.min(...lengths)}..${maxLen}, sum ${lengths.reduce((a, L) => a + L, 0)}`,
    qHeads,
    kvHeads,
    headDim,
    rope: Boolean(shape.rope),
    maxLen,
    paddedPastGiB: cacheBytes / 2 ** 30,
    kvBytesPerStep,
    steps,
    warmup,
  };
  if (values.json) {
    console.log(JSON.stringify({ ...header, rows }, null, 2));
    return;
  }
  console.log(
    `\nonnxruntime-node ${header.onnxruntimeNode} GroupQueryAttention, node ${header.node}: B ${B}, lengths ${header.lengths}, Hq ${qHeads}, Hkv ${kvHeads}, D ${headDim}, ` +
      `rotary ${header.rope ? 'on' : 'off'}, padded float32 past ${header.paddedPastGiB.toFixed(2)} GiB (maxLen ${maxLen}), KV read per step ${(kvBytesPerStep / 1e9).toFixed(3)} GB in float32; ` +
      `median of ${steps} timed steps after ${warmup} untimed\n`,
  );
  console.log('| threads | cache | variant | median ms | min..max ms | KV GB/s | max abs error | RSS MB | RSS Δ MB | other load |');
  console.log('|---:|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.threads} | ${r.cacheType} | ${r.variant} | ${r.medianMs.toFixed(1)} | ${r.minMs.toFixed(1)}..${r.maxMs.toFixed(1)} | ${r.kvGBps.toFixed(2)} | ${r.maxError.toExponential(2)} | ${r.rssMB.toFixed(0)} | ${r.rssGrowthMB.toFixed(0)} | ${r.otherCores.toFixed(2)} |`,
    );
  }
  console.log('\n- KV GB/s = sum(lengths)·Hkv·D·2·(4, 2 or 1 bytes per element for the float32, float16, int8 cache) / median step time (the K and V bytes a step must read).');
  console.log('- max abs error: the first step\'s output against the float64 reference in this file (float16, int8: over the cache as stored, decoded, the new token included).');
  console.log('- RSS: resident memory of the whole process after the timed steps (the padded past, inputs and reference included); RSS Δ: its growth from before the session was created (after a GC).');
  console.log('- other load: cores\' worth of CPU that other processes used during the timed steps (/proc/stat minus this process); above ~0.1 the figures are contended.');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
