// Hostile and careless inputs: every argument is read once, checked, and only what was checked is
// computed on. Getters that change their answer, typed arrays that lie about their length, buffers
// detached from inside an option getter, proxies, holes: each is refused with an AttentionError or
// computed exactly as first read, never from stale or foreign memory.
import { describe, expect, it } from 'vitest';
import { AttentionError, createEngineSync, mergeAttention } from '../src/index.js';
import { referenceAttention } from '../src/reference.js';
import { BACKENDS, engineFor, maxError, randomTensor, rng } from './helpers.js';

function code(call: () => unknown): string | undefined {
  try {
    call();
  } catch (e) {
    expect(e).toBeInstanceOf(AttentionError);
    return (e as AttentionError).code;
  }
  return undefined;
}

describe.each(BACKENDS)('hostile inputs on %s', (backend) => {
  const e = engineFor(backend);
  const random = rng(11);
  const q = randomTensor(random, [1, 2, 3, 8]);
  const k = randomTensor(random, [1, 2, 5, 8]);
  const expected = referenceAttention(q, k, k).data;

  it('a data getter is read once: what the checks saw is what is computed', () => {
    let reads = 0;
    const tricky = { get data() { return reads++ === 0 ? q.data : new Float32Array(1); }, dims: q.dims };
    const y = e.attention(tricky, k, k);
    expect(reads).toBe(1);
    expect(maxError(y.data, expected)).toBeLessThan(1e-5);
  });

  it('a Float32Array subclass that lies about its length cannot widen what is read', () => {
    class Liar extends Float32Array {
      override get length(): number {
        return 48;
      }
    }
    const liar = new Liar(8); // 8 real elements, claims 48 = 1·2·3·8
    expect(code(() => e.attention({ data: liar, dims: q.dims }, k, k))).toBe('SHAPE_MISMATCH');
  });

  it('a buffer detached from inside an option getter is seen as it is then', () => {
    const copy = { data: q.data.slice(), dims: q.dims };
    const options = { get causal() { structuredClone(copy.data.buffer, { transfer: [copy.data.buffer] }); return false; } };
    expect(code(() => e.attention(copy, k, k, options))).toBe('SHAPE_MISMATCH');
  });

  it('a Proxy as data, or as dims, is refused or read once', () => {
    expect(code(() => e.attention({ data: new Proxy(q.data, {}), dims: q.dims }, k, k))).toBe('INVALID_DTYPE');
    let dimReads = 0;
    const dims = new Proxy([1, 2, 3, 8], { get(target, key) { if (key === '0') dimReads++; return Reflect.get(target, key); } });
    expect(maxError(e.attention({ data: q.data, dims }, k, k).data, expected)).toBeLessThan(1e-5);
    expect(dimReads).toBe(1);
  });

  it('cache.append counts with a hole, or changing under a Proxy, cannot pass the checks', () => {
    const cache = e.kvCache({ batch: 2, kvHeads: 1, headDim: 4, maxSeq: 5 });
    const kv = randomTensor(random, [2, 1, 4, 4]);
    cache.append(kv, kv);
    // eslint-disable-next-line no-sparse-arrays
    expect(code(() => cache.append(randomTensor(random, [2, 1, 1, 4]), randomTensor(random, [2, 1, 1, 4]), { counts: [, 1] as never }))).toBe('INVALID_OPTION');
    let reads = 0;
    const counts = new Proxy([1, 1], { get(target, key) { if (key === '0') return reads++ === 0 ? 1 : 100; return Reflect.get(target, key); } });
    cache.append(randomTensor(random, [2, 1, 1, 4]), randomTensor(random, [2, 1, 1, 4]), { counts });
    expect(cache.lengths).toEqual([5, 5]);
    expect(code(() => cache.append(randomTensor(random, [2, 1, 1, 4]), randomTensor(random, [2, 1, 1, 4])))).toBe('CACHE_FULL');
    expect(cache.lengths).toEqual([5, 5]);
    cache.dispose();
  });

  it('huge or empty shapes are refused or answered at once, never hang', () => {
    const empty = (dims: number[]) => ({ data: new Float32Array(0), dims });
    expect(code(() => e.attention(empty([1, 1, 2 ** 31, 0]), empty([1, 1, 4, 0]), empty([1, 1, 4, 0])))).toBe('UNSUPPORTED');
    expect(code(() => e.attention(empty([1, 1, 4, 0]), empty([1, 1, 2 ** 32 + 5, 0]), empty([1, 1, 2 ** 32 + 5, 0]), { returnLogSumExp: true }))).toBe('UNSUPPORTED');
    const started = performance.now();
    expect(e.attention(empty([1, 2 ** 14, 2 ** 14, 0]), empty([1, 2 ** 14, 4, 0]), empty([1, 2 ** 14, 4, 0])).data.length).toBe(0);
    expect(performance.now() - started).toBeLessThan(5_000); // a bound against a hang, not a speed claim
  });

  it('a cache far too large, a disposed engine, and lse data of the wrong type are refused', () => {
    expect(code(() => e.kvCache({ batch: 1, kvHeads: 1, headDim: 64, maxSeq: 2 ** 40 }))).toBe('OUT_OF_MEMORY');
    const other = createEngineSync({ backend, threads: 1 });
    const cache = other.kvCache({ batch: 1, kvHeads: 1, headDim: 4, maxSeq: 4 });
    other.dispose();
    const kv = randomTensor(random, [1, 1, 1, 4]);
    expect(code(() => cache.append(kv, kv))).toBe('DISPOSED');
    const chunk = { output: { data: new Float32Array(4), dims: [1, 4] }, logSumExp: { data: 'abc' as never, dims: [1] } };
    expect(code(() => mergeAttention([chunk]))).toBe('INVALID_DTYPE');
  });

  it('refuses a call too large for the memory cap before growing memory', () => {
    if (backend === 'js') return;
    const small = createEngineSync({ backend, threads: 1, maxMemoryBytes: 64 << 20 });
    const reserved = small.stats().reservedBytes;
    const big = { data: new Float32Array(10 << 20), dims: [1, 1, 10 << 14, 64] }; // 40 MiB, twice over the cap
    const one = randomTensor(random, [1, 1, 1, 64]);
    expect(code(() => small.attention(one, big, big))).toBe('OUT_OF_MEMORY');
    expect(small.stats().reservedBytes).toBe(reserved);
    small.dispose();
  });
});
