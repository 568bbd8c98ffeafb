// Resident tensors are handles: their data is rebuilt from the memory as it is now (valid after
// growth, shared memory or not), a released tensor and any view of it are refused, a part of a
// tensor's view is refused (nothing tells which tensor it came from), and aliasing with `out` is
// decided by address ranges.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { createEngineSync } from '../src/index.js';
import { referenceAttention } from '../src/reference.js';
import { BACKENDS, maxError, randomTensor, refused, rng } from './helpers.js';

describe.each(BACKENDS)('resident tensors on %s', (backend) => {
  it('refuse a released tensor and its views, and (wasm) any part of a tensor\'s view, also once its address is reused', () => {
    const e = createEngineSync({ backend, threads: 1 });
    const t = e.tensor([1, 1, 4, 8]);
    t.data.set(randomTensor(rng(1), [32]).data);
    const part = t.data.subarray(0, 8);
    const k = randomTensor(rng(2), [1, 1, 3, 8]);
    if (backend !== 'js') refused(() => e.attention({ data: part as Float32Array, dims: [1, 1, 1, 8] }, k, k), 'INVALID_TENSOR', 'q.data');
    t.release();
    const reuse = e.tensor([1, 1, 4, 8]); // lands on the released address
    reuse.data.fill(1);
    // on js a tensor's memory is an ordinary array that no other tensor reuses: only wasm has to refuse the part
    if (backend !== 'js') refused(() => e.attention({ data: part as Float32Array, dims: [1, 1, 1, 8] }, k, k), 'INVALID_TENSOR', 'q.data');
    refused(() => e.attention(t as never, k, k), 'INVALID_TENSOR', 'q.data');
    const view = { data: reuse.data as Float32Array, dims: [1, 1, 4, 8] };
    reuse.release();
    refused(() => e.attention(view, k, k), 'INVALID_TENSOR', 'q.data');
    refused(() => t.data, 'DISPOSED');
    e.dispose();
  });

  it('take the tensor itself as an input and as out, and return out as the result', () => {
    const e = createEngineSync({ backend, threads: 1 });
    const q = e.tensor([1, 2, 5, 8]);
    q.data.set(randomTensor(rng(3), [80]).data);
    const k = randomTensor(rng(4), [1, 2, 7, 8]);
    const out = e.tensor([1, 2, 5, 8]);
    const y = e.attention(q as never, k, k, { out: out as never });
    expect(y.data).toBe(out.data);
    expect(maxError(y.data, referenceAttention({ data: q.data, dims: q.dims }, k, k).data)).toBeLessThan(1e-5);
    refused(() => e.attention(q as never, k, k, { out: q as never }), 'INVALID_OPTION', 'options.out');
    for (const t of [q, out]) t.release();
    e.dispose();
  });

  it('let a KV cache take a separate resident out before and after memory grows (address ranges, not buffers)', () => {
    const e = createEngineSync({ backend, threads: 1 });
    const cache = e.kvCache({ batch: 1, kvHeads: 1, headDim: 8, maxSeq: 16 });
    const k = randomTensor(rng(5), [1, 1, 4, 8]);
    cache.append(k, k);
    const q = randomTensor(rng(6), [1, 2, 1, 8]);
    const out = e.tensor([1, 2, 1, 8]);
    const first = Array.from(cache.attention(q, { out: out as never }).data);
    const big = e.tensor([4 << 20]); // grows memory
    const second = Array.from(cache.attention(q, { out: out.data as Float32Array }).data);
    expect(second).toEqual(first);
    big.release();
    out.release();
    cache.dispose();
    e.dispose();
  });
});

describe('resident tensors without SharedArrayBuffer (a page that is not cross-origin isolated)', () => {
  it('stay valid after memory grows, and a KV cache keeps working', () => {
    const script = `
      delete globalThis.SharedArrayBuffer;
      const { createEngineSync } = await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)});
      const e = createEngineSync({ backend: 'wasm-simd' });
      const cache = e.kvCache({ batch: 1, kvHeads: 1, headDim: 4, maxSeq: 8 });
      const t = e.tensor([1, 1, 2, 4]);
      t.data.fill(0.5);
      const before = Array.from(e.attention(t, t, t).data);
      const reserved = e.stats().reservedBytes;
      const big = e.tensor([8 << 20]);
      const grown = e.stats().reservedBytes > reserved;
      const after = Array.from(e.attention(t, t, t).data);
      const kv = { data: new Float32Array(4).fill(1), dims: [1, 1, 1, 4] };
      cache.append(kv, kv);
      const y = cache.attention({ data: new Float32Array(4).fill(1), dims: [1, 1, 1, 4] }).data;
      console.log(JSON.stringify({ grown, same: JSON.stringify(before) === JSON.stringify(after), y: Array.from(y), threads: e.threads }));`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(child.stderr).toBe('');
    const result = JSON.parse(child.stdout);
    expect(result).toEqual({ grown: true, same: true, y: [1, 1, 1, 1], threads: 1 });
  });
});
