// A refused call leaves no trace, and names what the caller passed: the layer checks everything
// before it touches a cache, softmax and attention agree with the reference where float32 holds
// the answer, the ONNX entry point names attributes and inputs (and gives the outputs a node asks
// for), and a misspelt option is refused instead of ignored.
import { describe, expect, it } from 'vitest';
import { createEngineSync } from '../src/index.js';
import { referenceAttention } from '../src/reference.js';
import { BACKENDS, engineFor, maxError, randomTensor, refused, rng } from './helpers.js';

describe.each(BACKENDS)('refusals on %s', (backend) => {
  const e = engineFor(backend);

  it('multiHeadAttention with a cache checks the attention options before appending', () => {
    const random = rng(1);
    const weights = { wq: randomTensor(random, [16, 16]), wk: randomTensor(random, [16, 8]), wv: randomTensor(random, [16, 8]), wo: randomTensor(random, [16, 16]) };
    const cache = e.kvCache({ batch: 1, kvHeads: 2, headDim: 4, maxSeq: 32 });
    const x = randomTensor(random, [1, 3, 16]);
    for (let i = 0; i < 3; i++) refused(() => e.multiHeadAttention(x, weights, { heads: 4, kvHeads: 2, cache, scale: NaN }), 'INVALID_OPTION', 'options.scale');
    refused(() => e.multiHeadAttention(x, weights, { heads: 4, kvHeads: 2, cache, window: { left: -1 } }), 'INVALID_OPTION', 'options.window.left');
    expect(cache.length).toBe(0);
    e.multiHeadAttention(x, weights, { heads: 4, kvHeads: 2, cache });
    expect(cache.length).toBe(3);
    cache.dispose();
  });

  it('softmax: scale checked against float32, and a scaled input past float32 still gives the reference', () => {
    const x = { data: new Float32Array([3e38, 1e38]), dims: [2] };
    refused(() => e.softmax(x, { scale: 1e39 }), 'INVALID_OPTION', 'options.scale');
    expect(Array.from(e.softmax(x, { scale: 2 }).data)).toEqual([1, 0]);
    expect(Array.from(e.softmax({ data: new Float32Array([1e38, 1, 2]), dims: [3] }, { scale: 10 }).data)).toEqual([1, 0, 0]);
  });

  it('refuses misspelt options, naming the nearest one', () => {
    const q = randomTensor(rng(2), [1, 1, 2, 4]);
    refused(() => e.attention(q, q, q, { casual: true } as never), 'INVALID_OPTION', 'options.casual', /did you mean causal/);
    refused(() => e.matmul(q, q, { transposeb: true } as never), 'INVALID_OPTION', 'options.transposeb', /transposeB/);
    refused(() => e.softmax(q, { sclae: 2 } as never), 'INVALID_OPTION', 'options.sclae', /scale/);
    refused(() => createEngineSync({ thread: 2 } as never), 'INVALID_OPTION', 'options.thread', /threads/);
    refused(() => e.kvCache({ batch: 1, kvHeads: 1, headDim: 4, maxSeq: 4, maxseq: 5 } as never), 'INVALID_OPTION', 'options.maxseq');
  });

  it('checks the size of returnWeights before any kernel runs, in human units', () => {
    const q = { data: new Float32Array(200_000 * 64), dims: [1, 1, 200_000, 64] };
    refused(() => e.attention(q, q, q, { returnWeights: true }), 'OUT_OF_MEMORY', 'options.returnWeights', /149\.0 GiB/);
  });

  it('says a { data, dims } tensor is needed when given a bare array', () => {
    const q = randomTensor(rng(3), [1, 1, 2, 4]);
    refused(() => e.attention(q.data as never, q, q), 'INVALID_TENSOR', 'q', /pass a tensor/);
  });
});

describe.each(BACKENDS)('the ONNX entry point on %s', (backend) => {
  const e = engineFor(backend);
  const random = rng(4);
  const Q = randomTensor(random, [1, 2, 3, 4]);
  const K = randomTensor(random, [1, 2, 5, 4]);
  const V = randomTensor(random, [1, 2, 5, 4]);

  it('names the attribute or input at fault', () => {
    refused(() => e.onnxAttention({ Q, K, V }, { softcap: NaN }), 'INVALID_OPTION', 'attributes.softcap');
    refused(() => e.onnxAttention({ Q, K, V }, { scale: NaN }), 'INVALID_OPTION', 'attributes.scale');
    refused(() => e.onnxAttention({ Q, K, V }, { scale: 1e39 }), 'INVALID_OPTION', 'attributes.scale');
    refused(() => e.onnxAttention({ Q, K, V, attn_mask: { data: new Float32Array(3), dims: [1, 1, 3, 0] } }), 'SHAPE_MISMATCH', 'attn_mask.data');
    refused(() => e.onnxAttention({ Q, K, V, attn_mask: { data: new Float32Array(12), dims: [1, 2, 2, 3] } }), 'SHAPE_MISMATCH', 'attn_mask.dims[2]');
    // a mask shorter than the keys is padded with -inf: with no column at all, every key is hidden
    const empty = e.onnxAttention({ Q, K, V, attn_mask: { data: new Float32Array(0), dims: [1, 1, 3, 0] } });
    expect(Array.from(empty.Y.data).every((y) => y === 0)).toBe(true);
    refused(() => e.onnxAttention({ Q, K, V }, { is_casual: 1 } as never), 'INVALID_OPTION', 'attributes.is_casual', /is_causal/);
    refused(() => e.onnxAttention({ Q, K, V }, { softmax_precision: 99 }), 'INVALID_OPTION', 'attributes.softmax_precision');
    refused(() => e.onnxAttention({ Q: { type: 'int64', data: Q.data, dims: Q.dims }, K, V } as never), 'INVALID_DTYPE', 'Q.type');
    refused(() => e.onnxAttention({ Q, K: { type: 'float16', data: new Uint16Array(40), dims: K.dims }, V }), 'INVALID_DTYPE', 'K.type');
  });

  it('gives the outputs the node asks for: qk_matmul_output with the default mode 0', () => {
    const result = e.onnxAttention({ Q, K, V }, { is_causal: 1 }, { outputs: ['Y', 'qk_matmul_output'] });
    expect(result.qk_matmul_output?.dims).toEqual([1, 2, 3, 5]);
    // mode 0: scale · Q·Kᵀ, before any mask
    const scale = 1 / Math.sqrt(4);
    let dot = 0;
    for (let d = 0; d < 4; d++) dot += Q.data[2 * 4 + d] * K.data[4 * 4 + d];
    expect(result.qk_matmul_output!.data[2 * 5 + 4]).toBeCloseTo(dot * scale, 5);
    const y = referenceAttention(Q, K, V, { causal: true }).data;
    expect(maxError(result.Y.data as Float32Array, y)).toBeLessThan(1e-5);
    expect(e.onnxAttention({ Q, K, V }).qk_matmul_output).toBeUndefined();
    refused(() => e.onnxAttention({ Q, K, V }, {}, { outputs: ['Z' as never] }), 'INVALID_OPTION', 'request.outputs');
  });
});
