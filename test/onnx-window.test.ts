// ONNX Attention-25's sliding window (left_window_size / right_window_size) through
// engine.onnxAttention: the eleven opset-25 cases of ONNX's backend tests
// (onnx/backend/test/case/node/attention.py), with their shapes, attributes, masks and caches,
// on every backend. ONNX draws their inputs from an unseeded np.random.rand, so the values here are
// our own seeded draws from [0, 1); the expected outputs come from the float64 reference, reached
// from the ONNX inputs by the plain expansion below (3D to 4D, past in front of K/V, the mask
// broadcast and padded to [B, Hq, Sq, T], padding keys hidden, the offset per batch).
import { describe, expect, it } from 'vitest';
import { AttentionError, type OnnxAttentionAttributes, type OnnxAttentionInputs, type OnnxOutputTensor, type OnnxTensor } from '../src/index.js';
import { floatsToHalves, halvesToFloats } from '../src/float16.js';
import { referenceAttention } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, rng, tolerance } from './helpers.js';

type OutputName = 'Y' | 'present_key' | 'present_value' | 'qk_matmul_output';

interface WindowCase {
  name: string;
  attributes: OnnxAttentionAttributes;
  inputs: OnnxAttentionInputs;
  /** The node's output list. */
  outputs: OutputName[];
}

const size = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/** np.random.rand(...dims).astype(float32), from a seeded generator. */
function uniform(random: () => number, dims: number[]): OnnxTensor {
  const data = new Float32Array(size(dims));
  for (let i = 0; i < data.length; i++) data[i] = random();
  return { type: 'float32', data, dims };
}

const float16 = (values: Float32Array, dims: number[]): OnnxTensor => ({ type: 'float16', data: floatsToHalves(values), dims });
const filled = (dims: number[], value: number): Float32Array => new Float32Array(size(dims)).fill(value);
const int64 = (values: number[]): OnnxTensor => ({ type: 'int64', data: BigInt64Array.from(values.map(BigInt)), dims: [values.length] });

/** The eleven opset-25 cases, with ONNX's names, shapes and attributes. */
function windowCases(): WindowCase[] {
  const random = rng(25);
  const r = (dims: number[]) => uniform(random, dims);
  // the ext_cache cases: B, H, S_q, S_kv, D = 2, 3, 4, 8, 8 and nonpad_kv_seqlen [6, 7]
  const extCache = (name: string, attn_mask: OnnxTensor): WindowCase => ({
    name,
    attributes: { is_causal: 1, left_window_size: 2 },
    inputs: { Q: r([2, 3, 4, 8]), K: r([2, 3, 8, 8]), V: r([2, 3, 8, 8]), attn_mask, nonpad_kv_seqlen: int64([6, 7]) },
    outputs: ['Y'],
  });
  // gqa_rank4_mask: a bool mask [B, Hq, Sq, Skv] that hides every key of query row 0
  const gqaMask = new Uint8Array(2 * 4 * 4 * 6).fill(1);
  for (let bh = 0; bh < 2 * 4; bh++) gqaMask.fill(0, bh * 4 * 6, bh * 4 * 6 + 6);
  return [
    {
      name: 'local_window',
      attributes: { is_causal: 1, left_window_size: 2 },
      inputs: { Q: r([2, 3, 4, 8]), K: r([2, 3, 6, 8]), V: r([2, 3, 6, 8]) },
      outputs: ['Y'],
    },
    {
      name: 'bidirectional_window',
      attributes: { left_window_size: 1, right_window_size: 2 },
      inputs: { Q: { type: 'float32', data: filled([1, 1, 5, 1], 0), dims: [1, 1, 5, 1] }, K: { type: 'float32', data: filled([1, 1, 5, 1], 0), dims: [1, 1, 5, 1] }, V: { type: 'float32', data: Float32Array.from([0, 1, 2, 3, 4]), dims: [1, 1, 5, 1] } },
      outputs: ['Y'],
    },
    {
      name: 'local_window_default',
      attributes: { left_window_size: -1, right_window_size: -1 },
      inputs: { Q: r([2, 3, 4, 8]), K: r([2, 3, 6, 8]), V: r([2, 3, 6, 8]) },
      outputs: ['Y'],
    },
    {
      name: 'local_window_rank1_boolean_mask',
      attributes: { is_causal: 1, left_window_size: 2 },
      inputs: { Q: r([2, 3, 4, 8]), K: r([2, 3, 6, 8]), V: r([2, 3, 6, 8]), attn_mask: { type: 'bool', data: Uint8Array.from([1, 1, 1, 1, 0, 0]), dims: [6] } },
      outputs: ['Y'],
    },
    {
      name: 'local_window_with_past',
      attributes: { is_causal: 1, left_window_size: 2 },
      inputs: { Q: r([2, 3, 4, 8]), K: r([2, 3, 2, 8]), V: r([2, 3, 2, 8]), past_key: r([2, 3, 8, 8]), past_value: r([2, 3, 8, 8]) },
      outputs: ['Y', 'present_key', 'present_value'],
    },
    // rank 3 is right-aligned as (heads, q, kv), not (batch, q, kv)
    extCache('local_window_ext_cache_rank3_head_mask', r([3, 4, 8])),
    extCache('local_window_ext_cache_rank4_batch_mask', r([2, 1, 4, 8])),
    extCache('local_window_ext_cache_rank2_mask', r([1, 8])),
    {
      // ONNX's data: Q and K zeros, V ones, a zero float16 mask (so Y is all ones)
      name: 'local_window_ext_cache_float16_mask',
      attributes: { is_causal: 1, left_window_size: 2 },
      inputs: {
        Q: float16(filled([2, 3, 4, 8], 0), [2, 3, 4, 8]), K: float16(filled([2, 3, 8, 8], 0), [2, 3, 8, 8]), V: float16(filled([2, 3, 8, 8], 1), [2, 3, 8, 8]),
        attn_mask: float16(filled([1, 8], 0), [1, 8]), nonpad_kv_seqlen: int64([6, 7]),
      },
      outputs: ['Y'],
    },
    {
      name: '3d_local_window',
      attributes: { q_num_heads: 4, kv_num_heads: 1, is_causal: 1, left_window_size: 2 },
      inputs: { Q: r([2, 4, 32]), K: r([2, 6, 8]), V: r([2, 6, 6]) },
      outputs: ['Y'],
    },
    {
      name: 'local_window_gqa_rank4_mask',
      attributes: { is_causal: 1, left_window_size: 2, softcap: 2, softmax_precision: 11, qk_matmul_output_mode: 3 },
      inputs: { Q: r([2, 4, 4, 8]), K: r([2, 2, 6, 8]), V: r([2, 2, 6, 6]), attn_mask: { type: 'bool', data: gqaMask, dims: [2, 4, 4, 6] } },
      outputs: ['Y', 'qk_matmul_output'],
    },
  ];
}

const floats = (t: OnnxTensor | OnnxOutputTensor): Float32Array =>
  t.data instanceof Uint16Array ? halvesToFloats(t.data) : Float32Array.from(t.data as Float32Array);

/** A 3D [B, S, H·D] tensor as 4D [B, H, S, D]; a 4D one as it is. */
function toHeads(t: OnnxTensor, heads: number | undefined): { data: Float32Array; dims: number[] } {
  const data = floats(t);
  if (t.dims.length === 4) return { data, dims: [...t.dims] };
  const [b, s, hd] = t.dims;
  const h = heads!;
  const d = hd / h;
  const out = new Float32Array(data.length);
  for (let bi = 0; bi < b; bi++) for (let si = 0; si < s; si++) for (let hi = 0; hi < h; hi++) for (let di = 0; di < d; di++) {
    out[((bi * h + hi) * s + si) * d + di] = data[(bi * s + si) * hd + hi * d + di];
  }
  return { data: out, dims: [b, h, s, d] };
}

/** 4D [B, H, S, D] back to 3D [B, S, H·D]. */
function toRows(data: Float64Array, dims: number[]): Float64Array {
  const [b, h, s, d] = dims;
  const out = new Float64Array(data.length);
  for (let bi = 0; bi < b; bi++) for (let hi = 0; hi < h; hi++) for (let si = 0; si < s; si++) for (let di = 0; di < d; di++) {
    out[(bi * s + si) * h * d + hi * d + di] = data[((bi * h + hi) * s + si) * d + di];
  }
  return out;
}

/** past [B, H, P, D] then now [B, H, S, D] along the sequence. */
function concatSequence(past: { data: Float32Array; dims: number[] } | undefined, now: { data: Float32Array; dims: number[] }): { data: Float32Array; dims: number[] } {
  const [b, h, s, d] = now.dims;
  const p = past ? past.dims[2] : 0;
  const out = new Float32Array(b * h * (p + s) * d);
  for (let bh = 0; bh < b * h; bh++) {
    if (past) out.set(past.data.subarray(bh * p * d, (bh + 1) * p * d), bh * (p + s) * d);
    out.set(now.data.subarray(bh * s * d, (bh + 1) * s * d), bh * (p + s) * d + p * d);
  }
  return { data: out, dims: [b, h, p + s, d] };
}

/** What ONNX's reference computes for a case, from our float64 reference. */
function expectedOutputs(c: WindowCase): Record<string, { data: Float64Array | Float32Array; dims: number[] }> {
  const { inputs, attributes: a } = c;
  const q = toHeads(inputs.Q, a.q_num_heads);
  const past = inputs.past_key ? toHeads(inputs.past_key, undefined) : undefined;
  const pastValue = inputs.past_value ? toHeads(inputs.past_value, undefined) : undefined;
  const k = concatSequence(past, toHeads(inputs.K, a.kv_num_heads));
  const v = concatSequence(pastValue, toHeads(inputs.V, a.kv_num_heads));
  const [B, Hq, Sq, D] = q.dims;
  const [, Hkv, T] = k.dims;
  const Dv = v.dims[3];
  const P = past ? past.dims[2] : 0;
  const nonpad = inputs.nonpad_kv_seqlen ? Array.from(inputs.nonpad_kv_seqlen.data as BigInt64Array, Number) : undefined;
  // the bias [B, Hq, Sq, T]: the mask broadcast right-aligned (bool: 0 / -inf), a short last dim
  // padded with -inf, and -inf on the padding keys j >= nonpad[b]
  const bias = new Float32Array(B * Hq * Sq * T);
  const m = inputs.attn_mask;
  const maskValues = m ? (m.type === 'bool' ? Float32Array.from(m.data as Uint8Array, (x) => (x ? 0 : -Infinity)) : floats(m)) : undefined;
  for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) for (let i = 0; i < Sq; i++) for (let j = 0; j < T; j++) {
    let value = 0;
    if (m && maskValues) {
      const index = [b, h, i, j].slice(4 - m.dims.length);
      if (j >= m.dims[m.dims.length - 1]) value = -Infinity;
      else {
        let flat = 0;
        m.dims.forEach((d, axis) => (flat = flat * d + (d === 1 ? 0 : index[axis])));
        value = maskValues[flat];
      }
    }
    if (nonpad && j >= nonpad[b]) value = -Infinity;
    bias[((b * Hq + h) * Sq + i) * T + j] = value;
  }
  const left = a.left_window_size ?? -1;
  const right = a.right_window_size ?? -1;
  const window = { left: left >= 0 ? left : undefined, right: right >= 0 ? right : undefined };
  const y = new Float64Array(B * Hq * Sq * Dv);
  const weights = new Float64Array(B * Hq * Sq * T);
  for (let b = 0; b < B; b++) {
    // the offset: the past length with a cache, nonpad[b] - Sq with an external one, else 0
    const offset = nonpad ? nonpad[b] - Sq : P;
    const slice = (t: { data: Float32Array }, per: number) => t.data.subarray(b * per, (b + 1) * per);
    const r = referenceAttention(
      { data: slice(q, Hq * Sq * D), dims: [1, Hq, Sq, D] },
      { data: slice(k, Hkv * T * D), dims: [1, Hkv, T, D] },
      { data: slice(v, Hkv * T * Dv), dims: [1, Hkv, T, Dv] },
      { causal: a.is_causal === 1, scale: a.scale, softcap: a.softcap || undefined, window, offset, mask: { data: bias.subarray(b * Hq * Sq * T, (b + 1) * Hq * Sq * T), dims: [1, Hq, Sq, T] } },
    );
    y.set(r.data, b * Hq * Sq * Dv);
    weights.set(r.weights, b * Hq * Sq * T);
  }
  const threeD = inputs.Q.dims.length === 3;
  return {
    Y: threeD ? { data: toRows(y, [B, Hq, Sq, Dv]), dims: [B, Sq, Hq * Dv] } : { data: y, dims: [B, Hq, Sq, Dv] },
    present_key: k,
    present_value: v,
    qk_matmul_output: { data: weights, dims: [B, Hq, Sq, T] },
  };
}

/** The bound on |actual - expected| for a case's output: ours for float32, ONNX's (per element) for float16. */
function expectClose(c: WindowCase, name: OutputName, actual: OnnxOutputTensor, expected: { data: ArrayLike<number>; dims: number[] }): void {
  expect(actual.dims, name).toEqual(expected.dims);
  const got = floats(actual);
  if (actual.type === 'float16') {
    for (let i = 0; i < got.length; i++) {
      expect(Math.abs(got[i] - expected.data[i]), `${name}[${i}]`).toBeLessThanOrEqual(tolerance.onnx.atol + tolerance.onnx.rtol * Math.abs(expected.data[i]));
    }
    return;
  }
  if (name === 'present_key' || name === 'present_value') {
    expect(got, name).toEqual(expected.data);
    return;
  }
  const kDims = c.inputs.K.dims;
  const headDim = c.inputs.Q.dims.length === 3 ? c.inputs.Q.dims[2] / c.attributes.q_num_heads! : c.inputs.Q.dims[3];
  const seqKV = (c.inputs.past_key?.dims[2] ?? 0) + kDims[kDims.length === 3 ? 1 : 2];
  // inputs in [0, 1): a score is at most scale·headDim (softcap bounds it), plus a mask value below 1
  const maxScore = (c.attributes.softcap || (c.attributes.scale ?? 1 / Math.sqrt(headDim)) * headDim) + 1;
  const magnitude = name === 'Y' ? maxAbs(floats(c.inputs.V)) : 1;
  expect(maxError(got, expected.data), name).toBeLessThanOrEqual(tolerance.attention(headDim, seqKV, maxScore) * magnitude);
}

const cases = windowCases();
const byName = (name: string): WindowCase => cases.find((c) => c.name === name)!;
const withoutWindow = (a: OnnxAttentionAttributes): OnnxAttentionAttributes => {
  const { left_window_size: _left, right_window_size: _right, ...rest } = a;
  return rest;
};

describe('the opset-25 window cases', () => {
  it('are the eleven of ONNX', () => expect(cases.length).toBe(11));
});

describe.each(BACKENDS)('onnxAttention with a window on %s', (backend) => {
  const engine = engineFor(backend);

  it.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const result = engine.onnxAttention(c.inputs, c.attributes, { outputs: c.outputs });
    const expected = expectedOutputs(c);
    for (const name of c.outputs) {
      const actual = result[name];
      expect(actual, name).toBeDefined();
      expect(actual!.type, name).toBe(c.inputs.Q.type);
      expectClose(c, name, actual!, expected[name]);
    }
  });

  it('bidirectional_window gives the values ONNX states', () => {
    const c = byName('bidirectional_window');
    const y = engine.onnxAttention(c.inputs, c.attributes).Y.data as Float32Array;
    expect(maxError(y, [1, 1.5, 2.5, 3, 3.5])).toBeLessThan(1e-6);
  });

  it('local_window_gqa_rank4_mask: a row the mask hides is zero in Y and in the qk output', () => {
    const c = byName('local_window_gqa_rank4_mask');
    const result = engine.onnxAttention(c.inputs, c.attributes, { outputs: c.outputs });
    const [y, qk] = [result.Y, result.qk_matmul_output!];
    for (let bh = 0; bh < 2 * 4; bh++) {
      expect(Array.from(y.data.subarray(bh * 4 * 6, bh * 4 * 6 + 6))).toEqual(new Array(6).fill(0));
      expect(Array.from(qk.data.subarray(bh * 4 * 6, bh * 4 * 6 + 6))).toEqual(new Array(6).fill(0));
    }
  });

  // the window demonstrably matters: without its attributes the same node gives another Y
  it.each(cases.filter((c) => !['local_window_default', 'local_window_ext_cache_float16_mask'].includes(c.name)).map((c) => [c.name, c] as const))(
    '%s differs without the window', (_name, c) => {
      const windowed = floats(engine.onnxAttention(c.inputs, c.attributes).Y);
      const plain = floats(engine.onnxAttention(c.inputs, withoutWindow(c.attributes)).Y);
      expect(maxError(windowed, plain)).toBeGreaterThan(1e-3);
    },
  );

  it('local_window_default (-1, -1) is the node without window attributes', () => {
    const c = byName('local_window_default');
    const windowed = floats(engine.onnxAttention(c.inputs, c.attributes).Y);
    expect(floats(engine.onnxAttention(c.inputs, withoutWindow(c.attributes)).Y)).toEqual(windowed);
  });

  it('the float16 external-cache case with random data', () => {
    const random = rng(16);
    const half = (dims: number[]) => float16(floats(uniform(random, dims)), dims);
    const c: WindowCase = {
      name: 'float16 random',
      attributes: { is_causal: 1, left_window_size: 2 },
      inputs: { Q: half([2, 3, 4, 8]), K: half([2, 3, 8, 8]), V: half([2, 3, 8, 8]), attn_mask: half([1, 8]), nonpad_kv_seqlen: int64([6, 7]) },
      outputs: ['Y'],
    };
    const y = engine.onnxAttention(c.inputs, c.attributes).Y;
    expectClose(c, 'Y', y, expectedOutputs(c).Y);
    expect(maxError(floats(y), floats(engine.onnxAttention(c.inputs, withoutWindow(c.attributes)).Y))).toBeGreaterThan(1e-3);
  });

  // the qk output hides the keys the window hides from mode 2 on, with a cache's offset too
  it.each(['local_window_with_past', 'local_window_ext_cache_rank3_head_mask', 'bidirectional_window', '3d_local_window'])('%s: qk_matmul_output modes 2 and 3', (name) => {
    const c = byName(name);
    const expected = expectedOutputs(c).qk_matmul_output;
    const softmax = engine.onnxAttention(c.inputs, { ...c.attributes, qk_matmul_output_mode: 3 }, { outputs: ['Y', 'qk_matmul_output'] }).qk_matmul_output!;
    expectClose(c, 'qk_matmul_output', softmax, expected);
    const biased = floats(engine.onnxAttention(c.inputs, { ...c.attributes, qk_matmul_output_mode: 2 }, { outputs: ['Y', 'qk_matmul_output'] }).qk_matmul_output!);
    // hidden exactly where the reference gives the key no weight (every visible key has weight > 0 here)
    for (let i = 0; i < biased.length; i++) expect(biased[i] === -Infinity, `[${i}]`).toBe(expected.data[i] === 0);
  });

  it('a right window under is_causal is capped at 0', () => {
    const c = byName('local_window');
    const capped = engine.onnxAttention(c.inputs, { ...c.attributes, right_window_size: 3 }).Y.data;
    expect(capped).toEqual(engine.onnxAttention(c.inputs, c.attributes).Y.data);
  });

  it('refuses window sizes other than -1 or an integer >= 0, and attributes Attention does not have', () => {
    const { Q, K, V } = byName('local_window').inputs;
    const refused = (attributes: Record<string, unknown>, argument: string, message: RegExp) => {
      let error: unknown;
      try {
        engine.onnxAttention({ Q, K, V }, attributes as OnnxAttentionAttributes);
      } catch (e) {
        error = e;
      }
      expect(error, argument).toBeInstanceOf(AttentionError);
      expect((error as AttentionError).code).toBe('INVALID_OPTION');
      expect((error as AttentionError).argument).toBe(argument);
      expect((error as AttentionError).message).toMatch(message);
    };
    for (const bad of [-2, -100, 1.5, NaN, Infinity, '2', true, null]) {
      refused({ is_causal: 1, left_window_size: bad }, 'attributes.left_window_size', /left_window_size must be -1 \(unbounded\) or an integer >= 0/);
      refused({ right_window_size: bad }, 'attributes.right_window_size', /right_window_size must be -1 \(unbounded\) or an integer >= 0/);
    }
    for (const unknown of ['window_size', 'left_window', 'sliding_window', 'local_window_size', 'do_rotary', 'causal']) {
      refused({ [unknown]: 1 }, `attributes.${unknown}`, new RegExp(`attributes\\.${unknown} is not an option`));
    }
  });
});
