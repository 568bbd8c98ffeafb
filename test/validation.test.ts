// Malformed calls are refused with an AttentionError that names the argument, before any kernel
// runs, and leave the engine working and its memory as it was.
import { describe, expect, it } from 'vitest';
import { AttentionError, createEngine, createEngineSync, mergeAttention } from '../src/index.js';
import { BACKENDS, engineFor, randomTensor, refused, rng } from './helpers.js';

const random = rng(5);
const q = randomTensor(random, [1, 2, 4, 8]);
const k = randomTensor(random, [1, 2, 6, 8]);
const v = randomTensor(random, [1, 2, 6, 8]);

describe.each(BACKENDS)('validation on %s', (backend) => {
  const e = engineFor(backend);
  it.each([
    ['q null', () => e.attention(null as never, k, v), 'INVALID_TENSOR', 'q'],
    ['q.data a Float64Array', () => e.attention({ data: new Float64Array(64), dims: [1, 2, 4, 8] } as never, k, v), 'INVALID_DTYPE', 'q.data'],
    ['k.data a plain array', () => e.attention(q, { data: Array.from(k.data), dims: k.dims } as never, v), 'INVALID_DTYPE', 'k.data'],
    ['v.data length wrong', () => e.attention(q, k, { data: new Float32Array(5), dims: v.dims }), 'SHAPE_MISMATCH', 'v.data'],
    ['q rank 3', () => e.attention({ data: q.data, dims: [2, 4, 8] }, k, v), 'INVALID_DIMS', 'q.dims'],
    ['dims not integers', () => e.attention({ data: q.data, dims: [1, 2, 4, 8.5] }, k, v), 'INVALID_DIMS', 'q.dims[3]'],
    ['negative dim', () => e.attention({ data: q.data, dims: [1, -2, 4, 8] }, k, v), 'INVALID_DIMS', 'q.dims[1]'],
    ['head dims differ', () => e.attention(q, { data: new Float32Array(2 * 6 * 4), dims: [1, 2, 6, 4] }, v), 'SHAPE_MISMATCH', 'k.dims[3]'],
    ['kv lengths differ', () => e.attention(q, k, { data: new Float32Array(2 * 5 * 8), dims: [1, 2, 5, 8] }), 'SHAPE_MISMATCH', 'v.dims[2]'],
    ['batch differs', () => e.attention(q, { data: new Float32Array(2 * 2 * 6 * 8), dims: [2, 2, 6, 8] }, v), 'SHAPE_MISMATCH', 'k.dims[0]'],
    ['Hq not a multiple of Hkv', () => e.attention({ data: new Float32Array(3 * 32), dims: [1, 3, 4, 8] }, k, v), 'SHAPE_MISMATCH', 'q.dims[1]'],
    ['scale NaN', () => e.attention(q, k, v, { scale: NaN }), 'INVALID_OPTION', 'options.scale'],
    ['scale Infinity', () => e.attention(q, k, v, { scale: Infinity }), 'INVALID_OPTION', 'options.scale'],
    ['softcap 0', () => e.attention(q, k, v, { softcap: 0 }), 'INVALID_OPTION', 'options.softcap'],
    ['softcap negative', () => e.attention(q, k, v, { softcap: -1 }), 'INVALID_OPTION', 'options.softcap'],
    ['causal a string', () => e.attention(q, k, v, { causal: 'yes' as never }), 'INVALID_OPTION', 'options.causal'],
    ['options a number', () => e.attention(q, k, v, 3 as never), 'INVALID_OPTION', 'options'],
    ['mask of Int32Array', () => e.attention(q, k, v, { mask: { data: new Int32Array(24), dims: [4, 6] } as never }), 'INVALID_DTYPE', 'options.mask.data'],
    ['mask not broadcastable', () => e.attention(q, k, v, { mask: { data: new Uint8Array(20), dims: [4, 5] } }), 'SHAPE_MISMATCH', 'options.mask.dims[1]'],
    ['mask rank 5', () => e.attention(q, k, v, { mask: { data: new Uint8Array(48), dims: [1, 1, 2, 4, 6] } }), 'SHAPE_MISMATCH', 'options.mask.dims'],
    ['out of the wrong size', () => e.attention(q, k, v, { out: new Float32Array(10) }), 'SHAPE_MISMATCH', 'options.out'],
    ['out a Float64Array', () => e.attention(q, k, v, { out: new Float64Array(64) as never }), 'INVALID_DTYPE', 'options.out'],
    ['matmul K mismatch', () => e.matmul({ data: new Float32Array(6), dims: [2, 3] }, { data: new Float32Array(8), dims: [4, 2] }), 'SHAPE_MISMATCH', 'b.dims[0]'],
    ['matmul rank 1', () => e.matmul({ data: new Float32Array(3), dims: [3] }, { data: new Float32Array(3), dims: [3, 1] }), 'INVALID_DIMS', 'a.dims'],
    ['matmul batch mismatch', () => e.matmul({ data: new Float32Array(12), dims: [2, 2, 3] }, { data: new Float32Array(27), dims: [3, 3, 3] }), 'SHAPE_MISMATCH', 'b.dims'],
    ['softmax causal on rank 1', () => e.softmax({ data: new Float32Array(3), dims: [3] }, { causal: true }), 'INVALID_DIMS', 'x.dims'],
    ['softmax scale a string', () => e.softmax({ data: new Float32Array(3), dims: [3] }, { scale: '2' as never }), 'INVALID_OPTION', 'options.scale'],
    ['q.data null', () => e.attention({ data: null, dims: [1, 2, 4, 8] } as never, k, v), 'INVALID_DTYPE', 'q.data'],
    ['q.dims a string', () => e.attention({ data: q.data, dims: '1,2,4,8' } as never, k, v), 'INVALID_DIMS', 'q.dims'],
    ['window.left negative', () => e.attention(q, k, v, { window: { left: -1 } }), 'INVALID_OPTION', 'options.window.left'],
    ['window.right fractional', () => e.attention(q, k, v, { window: { right: 1.5 } }), 'INVALID_OPTION', 'options.window.right'],
    ['window not an object', () => e.attention(q, k, v, { window: 3 as never }), 'INVALID_OPTION', 'options.window'],
    ['returnWeights a string', () => e.attention(q, k, v, { returnWeights: 'yes' as never }), 'INVALID_OPTION', 'options.returnWeights'],
    ['kvCache maxSeq 0', () => e.kvCache({ batch: 1, kvHeads: 1, headDim: 8, maxSeq: 0 }), 'INVALID_OPTION', 'options.maxSeq'],
    ['onnxAttention without Q', () => e.onnxAttention({ K: k, V: v } as never), 'INVALID_TENSOR', 'Q'],
    ['onnxAttention 3D without q_num_heads', () => e.onnxAttention({ Q: { data: new Float32Array(32), dims: [1, 4, 8] }, K: { data: new Float32Array(48), dims: [1, 6, 8] }, V: { data: new Float32Array(48), dims: [1, 6, 8] } }), 'INVALID_OPTION', 'attributes.q_num_heads'],
    ['onnxAttention qk mode 4', () => e.onnxAttention({ Q: q, K: k, V: v }, { qk_matmul_output_mode: 4 }), 'INVALID_OPTION', 'attributes.qk_matmul_output_mode'],
    ['softcap that float32 makes 0', () => e.attention(q, k, v, { softcap: 1e-46 }), 'INVALID_OPTION', 'options.softcap'],
    ['scale that float32 makes infinite', () => e.attention(q, k, v, { scale: 1e39 }), 'INVALID_OPTION', 'options.scale'],
    ['past_value shorter than past_key', () => e.onnxAttention({ Q: q, K: k, V: v, past_key: { data: new Float32Array(2 * 4 * 8), dims: [1, 2, 4, 8] }, past_value: { data: new Float32Array(2 * 8), dims: [1, 2, 1, 8] } }), 'SHAPE_MISMATCH', 'past_value.dims'],
    ['mergeAttention with a ragged output', () => mergeAttention([{ output: { data: new Float32Array(5), dims: [5] }, logSumExp: { data: new Float32Array(2), dims: [2] } }]), 'SHAPE_MISMATCH', 'chunks[0]'],
    ['multiHeadAttention heads 0', () => e.multiHeadAttention({ data: new Float32Array(8), dims: [1, 1, 8] }, {} as never, { heads: 0 }), 'INVALID_OPTION', 'options.heads'],
  ] as const)('refuses %s', (_name, call, code, argument) => refused(call, code, argument));

  it('names expected and actual values in the message', () => {
    refused(() => e.attention(q, { data: new Float32Array(2 * 6 * 4), dims: [1, 2, 6, 4] }, v), 'SHAPE_MISMATCH', 'k.dims[3]', /k\.dims\[3\] \(head dim\) is 4 but q\.dims\[3\] is 8/);
  });

  it('keeps working, and keeps nothing, after refused calls', () => {
    const before = e.stats();
    const good = e.attention(q, k, v);
    for (let i = 0; i < 20; i++) expect(() => e.attention(q, k, v, { scale: NaN })).toThrow(AttentionError);
    expect(e.attention(q, k, v).data).toEqual(good.data);
    expect(e.stats().usedBytes).toBe(before.usedBytes);
  });
});

describe('engines', () => {
  it('createEngine picks a wasm build where SIMD validates, and the js backend on request', async () => {
    const auto = await createEngine();
    expect(['wasm-relaxed-simd', 'wasm-simd']).toContain(auto.backend);
    expect((await createEngine({ backend: 'js' })).backend).toBe('js');
    expect(createEngineSync({ backend: 'wasm' }).backend).toBe(auto.backend);
  });
  it('treats a window wider than the sequence as no window', () => {
    const e = engineFor(BACKENDS[0]);
    const expected = e.attention(q, k, v, { causal: true }).data;
    expect(Array.from(e.attention(q, k, v, { causal: true, window: { left: 2 ** 32, right: 2 ** 31 - 1 } }).data)).toEqual(Array.from(expected));
  });
  it('gives the keys block back when a KV cache cannot get its values block', () => {
    const e = createEngineSync({ backend: 'wasm-simd', threads: 1, maxMemoryBytes: 8 << 20 });
    refused(() => e.kvCache({ batch: 1, kvHeads: 1, headDim: 1024, maxSeq: 1500 }), 'OUT_OF_MEMORY', undefined);
    expect(e.stats().usedBytes).toBe(0);
  });
  it('refuses unknown options', () => {
    refused(() => createEngineSync({ backend: 'gpu' as never }), 'INVALID_OPTION', 'options.backend');
    refused(() => createEngineSync({ threads: 0 }), 'INVALID_OPTION', 'options.threads');
    refused(() => createEngineSync({ maxMemoryBytes: 1 }), 'INVALID_OPTION', 'options.maxMemoryBytes');
    refused(() => createEngineSync({ backend: 'wasm-simd', threads: 300 }), 'INVALID_OPTION', 'options.threads');
  });
  it('refuses every call after dispose', () => {
    for (const backend of BACKENDS) {
      const e = createEngineSync({ backend });
      e.dispose();
      refused(() => e.attention(q, k, v), 'DISPOSED', undefined);
      refused(() => e.matmul(q, k, { transposeB: true }), 'DISPOSED', undefined);
      refused(() => e.softmax(q), 'DISPOSED', undefined);
    }
  });
  it('frees every block of a call: usedBytes returns to zero', () => {
    const e = createEngineSync({ backend: 'wasm-simd' });
    e.attention(q, k, v, { causal: true, mask: { data: new Uint8Array(24).fill(1), dims: [4, 6] } });
    e.matmul(q, k, { transposeB: true });
    e.softmax(q, { causal: true });
    expect(e.stats().usedBytes).toBe(0);
  });
  it('refuses a call that would pass maxMemoryBytes, then keeps working', () => {
    const e = createEngineSync({ backend: 'wasm-simd', maxMemoryBytes: 4 << 20 });
    const big = randomTensor(rng(1), [1, 1, 512, 1024]);
    refused(() => e.attention(big, big, big), 'OUT_OF_MEMORY', undefined);
    expect(e.stats().usedBytes).toBe(0);
    expect(e.attention(q, k, v).dims).toEqual([1, 2, 4, 8]);
  });
});

describe.each(BACKENDS)('resident tensors on %s', (backend) => {
  it('are computed on in place, as inputs and as out, with the same result as copies', () => {
    const e = createEngineSync({ backend });
    const [rq, rk, rv, rout] = [q.dims, k.dims, v.dims, [1, 2, 4, 8]].map((dims) => e.tensor(dims));
    (rq.data as Float32Array).set(q.data);
    (rk.data as Float32Array).set(k.data);
    (rv.data as Float32Array).set(v.data);
    const y = e.attention(rq as never, rk as never, rv as never, { causal: true, out: rout.data as Float32Array });
    expect(y.data).toBe(rout.data);
    expect(Array.from(y.data)).toEqual(Array.from(e.attention(q, k, v, { causal: true }).data));
    // growth keeps the views valid
    e.matmul(randomTensor(rng(2), [600, 600]), randomTensor(rng(3), [600, 600]));
    expect(Array.from(e.attention(rq as never, rk as never, rv as never, { causal: true }).data)).toEqual(Array.from(y.data));
    for (const t of [rq, rk, rv, rout]) t.release();
    expect(e.stats().usedBytes).toBe(0);
    if (backend !== 'js') {
      refused(() => e.attention(rq as never, k, v), 'INVALID_TENSOR', 'q.data');
      const reuse = e.tensor(q.dims); // may land on the released address
      refused(() => e.attention(rq as never, k, v), 'INVALID_TENSOR', 'q.data');
      reuse.release();
    }
  });
  it('refuses an out that overlaps an input, allows softmax in place', () => {
    const e = engineFor(backend);
    const shared = new Float32Array(128);
    const a = { data: shared.subarray(0, 64), dims: [8, 8] };
    refused(() => e.matmul(a, a, { out: shared.subarray(32, 96) }), 'INVALID_OPTION', 'options.out');
    const x = randomTensor(rng(4), [4, 8]);
    const expected = e.softmax(x).data;
    expect(e.softmax(x, { out: x.data }).data).toEqual(expected);
  });
});
