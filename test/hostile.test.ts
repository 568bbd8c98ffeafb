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

describe('found by an adversarial run', () => {
  const random = rng(21);
  const dims = [1, 1, 4, 8];
  const fill = (x: number) => ({ data: new Float32Array(32).fill(x), dims });

  it('refuses a tensor of another engine, and a forged handle, as input and as out', () => {
    const a = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const b = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const j = createEngineSync({ backend: 'js' });
    const ta = a.tensor(dims);
    const tb = b.tensor(dims);
    tb.data.fill(7);
    expect(code(() => b.attention(ta as never, fill(1), fill(1)))).toBe('INVALID_TENSOR');
    expect(code(() => b.attention(fill(0.5), fill(0.5), fill(1), { out: ta as never }))).toBe('INVALID_TENSOR');
    expect(code(() => b.attention(j.tensor(dims) as never, fill(1), fill(1)))).toBe('INVALID_TENSOR');
    const forged = Object.create(Object.getPrototypeOf(ta), { dims: { value: dims }, type: { value: 'float32' }, length: { value: 32 }, ptr: { value: 2 ** 31 } });
    expect(code(() => b.attention(forged, fill(1), fill(1)))).toBe('INVALID_TENSOR');
    expect(Array.from(tb.data).every((x) => x === 7)).toBe(true);
    for (const e of [a, b, j]) e.dispose();
  });

  it('js: refuses an out that overlaps a resident input through a subarray', () => {
    const e = createEngineSync({ backend: 'js' });
    const q = e.tensor([1, 1, 16, 8]);
    q.data.set(randomTensor(random, [128]).data);
    const k = randomTensor(random, [1, 1, 16, 8]);
    const v = randomTensor(random, [1, 1, 16, 4]); // out [1, 1, 16, 4]: 64 floats, inside q's 128
    expect(code(() => e.attention(q as never, k, v, { out: (q.data as Float32Array).subarray(8, 72) }))).toBe('INVALID_OPTION');
    e.dispose();
  });

  it('a layer refuses bad attention options and a full cache before any projection runs', () => {
    const e = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const x = randomTensor(random, [1, 512, 128]);
    const w = () => randomTensor(random, [128, 128]);
    const weights = { wq: w(), wk: w(), wv: w(), wo: w() };
    const cache = e.kvCache({ batch: 1, kvHeads: 4, headDim: 32, maxSeq: 8 });
    const reserved = e.stats().reservedBytes;
    expect(code(() => e.multiHeadAttention(x, weights, { heads: 4, scale: NaN }))).toBe('INVALID_OPTION');
    expect(code(() => e.multiHeadAttention(x, weights, { heads: 4, cache }))).toBe('CACHE_FULL');
    expect(e.stats().reservedBytes).toBe(reserved); // the 512-row projections never ran
    expect(cache.length).toBe(0);
    e.dispose();
  });

  it('ONNX: typed-array subclasses cannot change what is read; nonpad_kv_seqlen is checked', () => {
    const e = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const d = [2, 2, 3, 4];
    const base = { Q: randomTensor(random, d), K: randomTensor(random, d), V: randomTensor(random, d) };
    class LyingLength extends BigInt64Array {
      override get length(): number {
        return 2;
      }
    }
    expect(code(() => e.onnxAttention({ ...base, nonpad_kv_seqlen: { data: new LyingLength([3n]), dims: [2] } as never }))).toBe('SHAPE_MISMATCH');
    expect(code(() => e.onnxAttention({ ...base, nonpad_kv_seqlen: { data: new BigInt64Array([3n, 3n]), dims: [5] } as never }))).toBe('SHAPE_MISMATCH');
    class Hundreds extends Float32Array {
      override *[Symbol.iterator](): IterableIterator<number> {
        for (let i = 0; i < 48; i++) yield 100;
      }
    }
    const plain = e.onnxAttention(base).Y.data;
    const subclass = e.onnxAttention({ ...base, Q: { data: new Hundreds(base.Q.data), dims: d } }).Y.data;
    expect(Array.from(subclass)).toEqual(Array.from(plain));
    expect(code(() => e.onnxAttention({ ...base, Q: { get data(): never { throw new Error('boom'); }, dims: d } as never }))).toBe('INVALID_TENSOR');
    expect(code(() => e.onnxAttention(base, { q_num_heads: 7 }))).toBe('SHAPE_MISMATCH');
    e.dispose();
  });

  it('raw errors become AttentionErrors: detaching getters, throwing ownKeys, huge empty broadcasts', () => {
    const e = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const detach = (buffer: ArrayBufferLike) => structuredClone(buffer, { transfer: [buffer as ArrayBuffer] });
    const m = { data: new Uint8Array(16).fill(1), dims: [4, 4] };
    expect(code(() => e.attention(fill(1), fill(1), fill(1), { mask: m, get causal() { detach(m.data.buffer); return false; } }))).toBe('SHAPE_MISMATCH');
    const cache = e.kvCache({ batch: 1, kvHeads: 1, headDim: 8, maxSeq: 8 });
    const k = fill(1);
    expect(code(() => cache.append(k, fill(1), { get counts() { detach(k.data.buffer); return [4]; } } as never))).toBe('SHAPE_MISMATCH');
    expect(cache.length).toBe(0);
    const throwing = new Proxy({}, { ownKeys() { throw new TypeError('boom'); } });
    expect(code(() => e.attention(fill(1), fill(1), fill(1), throwing))).toBe('INVALID_OPTION');
    expect(code(() => createEngineSync(throwing))).toBe('INVALID_OPTION');
    expect(e.matmul({ data: new Float32Array(0), dims: [2 ** 33, 0, 4] }, { data: new Float32Array(0), dims: [4, 0] }).data.length).toBe(0);
    expect(e.softmax({ data: new Float32Array(0), dims: [2 ** 20, 2 ** 20, 1, 0] }, { mask: { data: new Uint8Array(0), dims: [1, 0] } }).data.length).toBe(0);
    expect(code(() => e.attention(fill(1), fill(1), fill(1), { scale: 1e-50 }))).toBe('INVALID_OPTION');
    e.dispose();
  });

  it('an async out detached while the call runs fails the call with an AttentionError', async () => {
    const e = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const t = randomTensor(random, [1, 8, 256, 64]);
    const out = new Float32Array(8 * 256 * 64);
    const call = e.attentionAsync(t, t, t, { out });
    structuredClone(out.buffer, { transfer: [out.buffer] });
    await expect(call).rejects.toMatchObject({ code: 'INVALID_TENSOR' });
    expect(e.stats().usedBytes).toBe(0);
    e.dispose();
  });

  it('refuses a misspelt option defined by a class getter, inherited, or not enumerable', () => {
    const e = createEngineSync({ backend: 'js' });
    class Misspelt {
      get casual(): boolean {
        return true;
      }
    }
    expect(code(() => e.attention(fill(1), fill(1), fill(1), new Misspelt() as never))).toBe('INVALID_OPTION');
    expect(code(() => e.attention(fill(1), fill(1), fill(1), Object.create({ casual: true })))).toBe('INVALID_OPTION');
    expect(code(() => e.attention(fill(1), fill(1), fill(1), Object.defineProperty({}, 'casual', { value: true, enumerable: false })))).toBe('INVALID_OPTION');
    class Spelt {
      get causal(): boolean {
        return true;
      }
    }
    expect(Array.from(e.attention(fill(1), fill(1), fill(1), new Spelt() as never).data)).toEqual(Array.from(e.attention(fill(1), fill(1), fill(1), { causal: true }).data));
    expect(code(() => createEngineSync({ backend: 'js', threads: 1e9 }))).toBe('INVALID_OPTION');
    expect(createEngineSync({ backend: 'js', threads: 4 }).threads).toBe(1);
    e.dispose();
  });
});
