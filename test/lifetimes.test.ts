// What an async call holds, and for how long: resident tensors it uses stay allocated until it
// settles (a release or a cache's dispose meanwhile takes effect after it), and a burst of calls
// that each fit runs in the memory of one call at a time, because each stages its inputs only when
// its turn comes.
import { describe, expect, it } from 'vitest';
import { createEngineSync } from '../src/index.js';
import { referenceAttention } from '../src/reference.js';
import { maxError, randomTensor, rng } from './helpers.js';

describe('async calls and resident memory', () => {
  it('keep a released input and out allocated until they settle; the next tensor does not get their block', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const random = rng(1);
    const qData = randomTensor(random, [1, 4, 300, 32]);
    const q = engine.tensor(qData.dims);
    q.data.set(qData.data);
    const out = engine.tensor(qData.dims);
    const first = engine.attentionAsync(q, q, q, { causal: true });
    const second = engine.attentionAsync(q, q, q, { out }); // waits for the first
    q.release();
    out.release();
    const other = engine.tensor(qData.dims); // must not land on q's or out's block while they are in use
    other.data.fill(7);
    const [a, b] = await Promise.all([first, second]);
    expect(maxError(a.data, referenceAttention(qData, qData, qData, { causal: true }).data)).toBeLessThan(1e-5);
    expect(maxError(b.data, referenceAttention(qData, qData, qData).data)).toBeLessThan(1e-5);
    expect(Array.from(other.data).every((x) => x === 7)).toBe(true);
    other.release();
    expect(engine.stats().usedBytes).toBe(0);
    engine.dispose();
  });

  it('keep a disposed KV cache allocated until its calls settle', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const random = rng(2);
    const cache = engine.kvCache({ batch: 1, kvHeads: 2, headDim: 16, maxSeq: 2048 });
    const kv = randomTensor(random, [1, 2, 2048, 16]);
    cache.append(kv, kv);
    const q = randomTensor(random, [1, 4, 1, 16]);
    const calls = [cache.attentionAsync(q), cache.attentionAsync(q)];
    cache.dispose();
    const filler = engine.tensor([2 * 2048 * 16 * 2]);
    filler.data.fill(1e3);
    const expected = referenceAttention(q, kv, kv).data;
    for (const y of await Promise.all(calls)) expect(maxError(y.data, expected)).toBeLessThan(1e-5);
    filler.release();
    expect(engine.stats().usedBytes).toBe(0);
    engine.dispose();
  });

  it('run a burst of calls that each fit, in the memory of about one', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2, maxMemoryBytes: 64 << 20 });
    const random = rng(3);
    const b = randomTensor(random, [1024, 64]);
    const inputs = Array.from({ length: 20 }, () => randomTensor(random, [2048, 1024])); // 8 MiB each, 160 MiB in all
    const results = await Promise.all(inputs.map((a) => engine.matmulAsync(a, b)));
    expect(results).toHaveLength(20);
    const one = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    expect(Array.from(results[7].data)).toEqual(Array.from(one.matmul(inputs[7], b).data));
    expect(engine.stats().reservedBytes).toBeLessThanOrEqual(32 << 20);
    expect(engine.stats().usedBytes).toBe(0);
    one.dispose();
    engine.dispose();
  });
});
