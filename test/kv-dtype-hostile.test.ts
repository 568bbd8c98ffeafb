// Adversarial tests of the KV pool's and KV cache's float16 and int8 pages (src/ops/paged-attention/
// pages.ts, assembly/attention-paged*.ts, src/features/kv-pool.ts, kv-cache.ts): odd page sizes and
// dims against the float64 reference over the quantized history, values and queries at the edges of
// the int8 kernel's integer arithmetic (tiny values, tiny, huge, NaN and infinite queries), imports
// no pool could have written, forks writing one partly filled page, refusals in the middle of a step,
// a failing async attention racing an append, head dims the kernel's scratch cannot hold, and bit
// identity over thread counts. Written by an adversarial run; titles that say "was" failed before
// their fix.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { AttentionError, createEngineSync, type Engine, type KVPool } from '../src/index.js';
import type { PoolStepOptions } from '../src/features/kv-pool.js';
import { quantizeKV, referenceAttention } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, refused, rng, tolerance } from './helpers.js';
import { Mirror, type Shape, type StepData, type T, stepData } from './kv-pool-mirror.js';

const QUANTIZED = ['float16', 'int8'] as const;
/** The wasm backend this process checks (the relaxed build in the relaxed-simd project). */
const WASM = BACKENDS.find((b) => b !== 'js') ?? 'wasm-simd';

interface OddCase extends Shape {
  pageSize: number;
  options?: PoolStepOptions;
  /** Positions of each step, per sequence (rows), steps in order (columns). */
  plan: number[][];
}

// Odd page sizes (int8 value pairs straddling pages), odd dims, Dv != Dk, GQA groups from 1 to 12
// (more than 8 rows of a position: the tile path), windows, softcap, RoPE, the split-KV path.
const oddCases: Array<[string, OddCase]> = [
  ['pages of 1, D 1, Dv 3, group 1', { qHeads: 2, kvHeads: 2, headDim: 1, valueDim: 3, pageSize: 1, plan: [[3, 1, 2, 1], [1, 4, 1, 1]] }],
  ['pages of 3, D 7, Dv 9, group 3, softcap 2', { qHeads: 3, kvHeads: 1, headDim: 7, valueDim: 9, pageSize: 3, options: { softcap: 2 }, plan: [[5, 1, 1, 7], [2, 1, 3, 1]] }],
  ['pages of 5, D 15, Dv 17, group 5, window 4', { qHeads: 10, kvHeads: 2, headDim: 15, valueDim: 17, pageSize: 5, options: { window: { left: 4 } }, plan: [[11, 1, 1, 3], [1, 6, 1, 1]] }],
  ['pages of 7, D 33, Dv 1, group 7, RoPE', { qHeads: 7, kvHeads: 1, headDim: 33, valueDim: 1, pageSize: 7, options: { rope: { dims: 16 } }, plan: [[9, 1, 1, 13], [1, 1, 8, 1]] }],
  ['group 12 (tile path on a decode step), pages of 3, D 9, Dv 15', { qHeads: 12, kvHeads: 1, headDim: 9, valueDim: 15, pageSize: 3, plan: [[10, 1, 1, 2], [1, 7, 1, 1]] }],
  ['group 8, D 4, Dv 3, pages of 5, window 2, softcap 5, RoPE interleaved', { qHeads: 16, kvHeads: 2, headDim: 4, valueDim: 3, pageSize: 5, options: { window: { left: 2 }, softcap: 5, rope: { interleaved: true } }, plan: [[6, 1, 1], [1, 1, 9]] }],
  ['split-KV, pages of 7, group 2, D 17, Dv 9, window 600', { qHeads: 2, kvHeads: 1, headDim: 17, valueDim: 9, pageSize: 7, options: { window: { left: 600 } }, plan: [[1030, 1, 3], [1, 1100, 1]] }],
  ['head dim 1100 (q rounded to fewer than 14 bits), pages of 3', { qHeads: 2, kvHeads: 1, headDim: 1100, valueDim: 5, pageSize: 3, plan: [[4, 1, 1], [1, 3, 1]] }],
];

describe.each(BACKENDS)('quantized pages on %s', (backend) => {
  const engine = engineFor(backend);

  describe.each(QUANTIZED)('%s', (dtype) => {
    it.each(oddCases)('odd shapes and paths equal the reference: %s', async (_, c) => {
      const shape: Shape = { ...c, dtype };
      const random = rng(c.headDim * 11 + c.pageSize * 5 + c.qHeads);
      const pool = engine.kvPool({ kvHeads: c.kvHeads, headDim: c.headDim, valueDim: c.valueDim, pageSize: c.pageSize, maxTokens: 4000, dtype });
      const sequences = c.plan.map(() => ({ sequence: pool.sequence(), mirror: new Mirror(shape) }));
      const options = c.options ?? {};
      for (let s = 0; s < c.plan[0].length; s++) {
        const data = c.plan.map((row) => stepData(random, shape, row[s]));
        const items = sequences.map((x, i) => ({ sequence: x.sequence, ...data[i] }));
        const outputs = s % 2 === 0 ? pool.step(items, options) : await pool.stepAsync(items, options);
        sequences.forEach((x, i) => {
          const { expected, tol } = x.mirror.step(data[i], options);
          expect(maxError(outputs[i].data, expected)).toBeLessThanOrEqual(tol);
        });
      }
      pool.dispose();
    });

    it('forks writing one partly filled page in one step (copy-on-write) equal their own histories, pairs straddling', () => {
      const shape: Shape = { qHeads: 2, kvHeads: 2, headDim: 5, valueDim: 7, dtype };
      const random = rng(7);
      const pool = engine.kvPool({ kvHeads: 2, headDim: 5, valueDim: 7, pageSize: 5, maxTokens: 200, dtype });
      const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
      const first = stepData(random, shape, 3);
      pool.step([{ sequence: a.sequence, ...first }]);
      a.mirror.step(first);
      const forks = [a, { sequence: a.sequence.fork(), mirror: a.mirror.clone() }, { sequence: a.sequence.fork(), mirror: a.mirror.clone() }];
      expect(pool.stats().pagesUsed).toBe(1);
      // all three write into the shared page: two copies, the last holder writes in place
      for (const n of [[1, 2, 4], [3, 1, 1]]) {
        const data = forks.map((_, i) => stepData(random, shape, n[i]));
        const ys = pool.step(forks.map((x, i) => ({ sequence: x.sequence, ...data[i] })));
        forks.forEach((x, i) => {
          const { expected, tol } = x.mirror.step(data[i]);
          expect(maxError(ys[i].data, expected)).toBeLessThanOrEqual(tol);
        });
      }
      expect(pool.stats().pagesUsed).toBe(3 * 2);
      for (const x of forks) x.sequence.dispose();
      expect(pool.stats().pagesUsed).toBe(0);
      pool.dispose();
    });

    it('export and import across page sizes keep the bits, and the next step equals the reference', () => {
      const shape: Shape = { qHeads: 3, kvHeads: 1, headDim: 9, valueDim: 3, dtype };
      const random = rng(8);
      const from = engine.kvPool({ kvHeads: 1, headDim: 9, valueDim: 3, pageSize: 3, maxTokens: 100, dtype });
      const a = { sequence: from.sequence(), mirror: new Mirror(shape) };
      for (const n of [4, 1, 2]) {
        const d = stepData(random, shape, n);
        from.step([{ sequence: a.sequence, ...d }]);
        a.mirror.step(d);
      }
      const bytes = a.sequence.export();
      for (const pageSize of [1, 2, 5, 7]) {
        const to = engine.kvPool({ kvHeads: 1, headDim: 9, valueDim: 3, pageSize, maxTokens: 100, dtype });
        const b = to.import(bytes);
        expect(Array.from(b.export())).toEqual(Array.from(bytes));
        const mirror = a.mirror.clone();
        const d = stepData(random, shape, 2);
        const [y] = to.step([{ sequence: b, ...d }]);
        const { expected, tol } = mirror.step(d);
        expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
        to.dispose();
      }
      // tampered: truncated, another dtype's code, an unknown code
      const other = engine.kvPool({ kvHeads: 1, headDim: 9, valueDim: 3, pageSize: 4, maxTokens: 100, dtype });
      refused(() => other.import(bytes.subarray(0, bytes.length - 1)), 'INVALID_ARGUMENT', 'bytes');
      for (const code of [0, dtype === 'int8' ? 1 : 2, 3]) {
        const copy = bytes.slice();
        new DataView(copy.buffer).setUint32(8, code, true);
        refused(() => other.import(copy), 'INVALID_ARGUMENT', 'bytes', /dtype|float/);
      }
      expect(other.stats()).toMatchObject({ pagesUsed: 0, sequences: 0, bytes: 0 });
      other.dispose();
      from.dispose();
    });

    it('a step refused in its last item (float16 beyond range, NaN, a wrong shape) changes nothing', () => {
      const shape: Shape = { qHeads: 2, kvHeads: 1, headDim: 6, valueDim: 6, dtype };
      const random = rng(9);
      const pool = engine.kvPool({ kvHeads: 1, headDim: 6, pageSize: 3, maxTokens: 100, dtype });
      const a = pool.sequence();
      const b = pool.sequence();
      a.append(stepData(random, shape, 2).k, stepData(random, shape, 2).v);
      const c = a.fork();
      const snapshot = () => ({ pool: pool.stats(), used: engine.stats().usedBytes, a: Array.from(a.export()), c: Array.from(c.export()), b: b.length });
      const before = snapshot();
      const bad: Array<[StepData, string, string]> = [];
      const big = stepData(random, shape, 2);
      big.v.data[7] = dtype === 'float16' ? 65504.5 : NaN;
      bad.push([big, 'INVALID_TENSOR', 'items[2].v.data']);
      const wrong = stepData(random, shape, 2);
      wrong.q = { data: new Float32Array(2 * 1 * 6), dims: [2, 1, 6] };
      bad.push([wrong, 'SHAPE_MISMATCH', 'items[2].q.dims[1]']);
      for (const [data, code, argument] of bad) {
        refused(() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }, { sequence: b, ...stepData(random, shape, 4) }, { sequence: c, ...data }]), code, argument);
        expect(snapshot()).toEqual(before);
      }
      pool.dispose();
    });

    it('NaN or an infinity in q reaches only its own row, as NaN, on every path (was: int8 wasm quantized it away; js gave zeros)', () => {
      for (const group of [4, 12]) {
        const random = rng(10 + group);
        const shape: Shape = { qHeads: group, kvHeads: 1, headDim: 20, valueDim: 4, dtype };
        const pool = engine.kvPool({ kvHeads: 1, headDim: 20, valueDim: 4, pageSize: 4, maxTokens: 100, dtype });
        const a = pool.sequence();
        const history = stepData(random, shape, 9);
        a.append(history.k, history.v);
        for (const bad of [NaN, Infinity, -Infinity]) {
          const d = stepData(random, shape, 1);
          d.q.data[20 * 1 + 19] = bad; // head 1, last dim (the kernel's scalar tail)
          d.q.data[20 * 2 + 3] = bad; // head 2, a vector lane
          const [y] = pool.step([{ sequence: a.fork(), ...d }]);
          for (let h = 0; h < group; h++) {
            const row = Array.from(y.data.subarray(4 * h, 4 * h + 4));
            if (h === 1 || h === 2) expect(row.every(Number.isNaN), `head ${h}, q ${bad}`).toBe(true);
            else expect(row.every(Number.isFinite), `head ${h}, q ${bad}`).toBe(true);
          }
        }
        pool.dispose();
      }
    });
  });

  describe('int8 pages at the edges of the integer kernel', () => {
    /** One-head int8 pool over these key and value rows; the last row goes in with the step of q (one position, `heads` query heads). */
    function attend(keys: number[][], values: number[][], q: number[][], pageSize = 4): { y: Float32Array; expected: Float64Array; held: { k: Float64Array; v: Float64Array } } {
      const headDim = keys[0].length;
      const valueDim = values[0].length;
      const n = keys.length;
      const pool = engine.kvPool({ kvHeads: 1, headDim, valueDim, pageSize, maxTokens: 4 * n + 8, dtype: 'int8' });
      const sequence = pool.sequence();
      const k = Float32Array.from(keys.flat());
      const v = Float32Array.from(values.flat());
      if (n > 1) sequence.append({ data: k.slice(0, (n - 1) * headDim), dims: [1, n - 1, headDim] }, { data: v.slice(0, (n - 1) * valueDim), dims: [1, n - 1, valueDim] });
      const qData = Float32Array.from(q.flat());
      const [out] = pool.step([{ sequence, q: { data: qData, dims: [q.length, 1, headDim] }, k: { data: k.slice((n - 1) * headDim), dims: [1, 1, headDim] }, v: { data: v.slice((n - 1) * valueDim), dims: [1, 1, valueDim] } }]);
      pool.dispose();
      const held = { k: quantizeKV(k, headDim, 'int8'), v: quantizeKV(v, valueDim, 'int8') };
      const expected = referenceAttention({ data: qData, dims: [1, q.length, 1, headDim] }, { data: held.k, dims: [1, 1, n, headDim] }, { data: held.v, dims: [1, 1, n, valueDim] }, { causal: true, offset: n - 1 }).data;
      return { y: out.data, expected, held };
    }

    it('values of 1e-33 (value scales near float32\'s smallest normals) are not dropped (was: wasm gave 0: 32767 / max weight overflowed)', () => {
      for (const magnitude of [1e-35, 1e-33, 1e-30, 1e-25]) {
        const keys = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 1, 0, 0], [0.5, 0, 0, 1]];
        const values = keys.map((_, j) => [(j + 1) * magnitude, -(j % 3) * magnitude, 0.5 * magnitude]);
        const { y, expected, held } = attend(keys, values, [[1, 0.5, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]);
        const tol = (tolerance.attention(4, keys.length, 2) + tolerance.quantizedScore('int8', 4, 2, 1, false) + tolerance.quantizedWeights('int8', keys.length)) * maxAbs(held.v);
        expect(maxError(y, expected), `values of ${magnitude}`).toBeLessThanOrEqual(tol);
      }
    });

    it('a tiny q against huge keys keeps its scores (was: wasm rounded q to zeros when 8191 / max|q| overflowed)', () => {
      for (const [qMagnitude, kMagnitude] of [[1e-35, 1e37], [1e-37, 1e37], [3e-30, 1e31], [1e-37, 3e38]]) {
        const keys = [[kMagnitude, 0, 0, 0, 0], [-kMagnitude, 0, 0, 0, 0], [0, kMagnitude, 0, 0, 0], [0.5 * kMagnitude, 0.5 * kMagnitude, 0, 0, 0]];
        const values = [[1, 0], [0, 1], [-1, 0], [0, -1]];
        const q = [[qMagnitude, 0.5 * qMagnitude, 0, 0, 0], [0, -qMagnitude, 0, 0, 0]]; // scale·q stays normal (the wasm kernels flush subnormals)
        const { y, expected } = attend(keys, values, q);
        // the scores are O(1) to O(10): a loose bound that zeroed scores (uniform weights) fail by far
        expect(maxError(y, expected), `q ${qMagnitude}, k ${kMagnitude}`).toBeLessThanOrEqual(2e-3);
      }
    });

    it('a huge q against huge keys it is orthogonal to scores 0, not NaN (was: 0 · (q scale · k scale = Infinity))', () => {
      const keys = [[0, 3e38, 0, 0], [0, -3e38, 0, 0], [0, 0, 1e38, 0]];
      const values = [[1, 0], [0, 1], [1, 1]];
      const { y, expected } = attend(keys, values, [[3e38, 0, 0, 0], [2e38, 0, 0, 3e38]]);
      expect(Array.from(y).every(Number.isFinite)).toBe(true);
      expect(maxError(y, expected)).toBeLessThanOrEqual(1e-5);
    });

    it('zero, tiny and subnormal queries give uniform weights; rows of 1e-38 and all-zero rows are zeros', () => {
      const keys = [[1, 2, 3], [1e-38, -1e-38, 0], [0, 0, 0], [-3, 2, 1], [65504.5, -1, 0]];
      const values = [[1, 2], [3, 4], [5, 6], [7, 8], [1e-38, 0]];
      const { y, expected } = attend(keys, values, [[0, 0, 0], [1e-40, 0, -1e-40], [1e-30, 0, 0]], 3);
      expect(maxError(y, expected)).toBeLessThanOrEqual(1e-5 * 8);
    });
  });

  it('an int8 import whose scale no pool could write (past f32(3.4e38 / 127)) is refused (was: imported, then infinite values)', () => {
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 2, maxTokens: 16, dtype: 'int8' });
    const a = pool.sequence();
    const data = Float32Array.of(3e38, -1, 0, 1);
    a.append({ data, dims: [1, 1, 4] }, { data, dims: [1, 1, 4] });
    const bytes = a.export();
    // the largest scale a pool writes: max|x| = 3.4028235e38 over 127
    expect(new DataView(bytes.buffer).getFloat32(32 + 8, true)).toBe(Math.fround(3e38 / 127));
    for (const at of [32 + 8, 32 + 12]) {
      for (const scale of [Math.fround(3.4028234663852886e38 / 127) * 2, 3e38, -0]) {
        const copy = bytes.slice();
        new DataView(copy.buffer).setFloat32(at, scale, true);
        refused(() => pool.import(copy), 'INVALID_ARGUMENT', 'bytes', /scale/);
      }
    }
    const largest = bytes.slice();
    new DataView(largest.buffer).setFloat32(32 + 8, Math.fround(3.4028234663852886e38 / 127), true);
    const b = pool.import(largest);
    expect(pool.stats().sequences).toBe(2);
    const [y] = pool.step([{ sequence: b, q: { data: Float32Array.of(1, 0, 0, 0), dims: [1, 1, 4] }, k: { data: Float32Array.of(0, 0, 0, 1), dims: [1, 1, 4] }, v: { data: Float32Array.of(0, 0, 0, 1), dims: [1, 1, 4] } }]);
    expect(Array.from(y.data).every(Number.isFinite)).toBe(true);
    pool.dispose();
  });

  it.each(['float32', 'float16', 'int8'] as const)('%s: keys RoPE rotates past what a page holds are refused before anything is stored (was: stored as infinities)', async (dtype) => {
    // [x, x] rotated by an angle a: [x(cos a - sin a), x(sin a + cos a)], up to √2·x at position 1
    const big = dtype === 'float16' ? 60000 : 3e38;
    const pool = engine.kvPool({ kvHeads: 1, headDim: 2, pageSize: 4, maxTokens: 16, dtype });
    const a = pool.sequence();
    const ok = { data: Float32Array.of(1, 2), dims: [1, 1, 2] };
    pool.step([{ sequence: a, q: ok, k: ok, v: ok }], { rope: {} });
    const snapshot = () => ({ pool: pool.stats(), used: engine.stats().usedBytes, a: Array.from(a.export()) });
    const before = snapshot();
    const k = { data: Float32Array.of(big, big), dims: [1, 1, 2] };
    refused(() => pool.step([{ sequence: a, q: ok, k, v: ok }], { rope: {} }), 'INVALID_TENSOR', 'items[0].k.data', /rotated by RoPE/);
    const error = await pool.stepAsync([{ sequence: a, q: ok, k, v: ok }], { rope: {} }).then(() => undefined, (e: unknown) => e);
    expect((error as AttentionError).code).toBe('INVALID_TENSOR');
    expect(snapshot()).toEqual(before);
    // the batcher: the call at fault fails alone
    const b = pool.sequence();
    const batcher = pool.batcher();
    const results = await Promise.allSettled([batcher.step(a, ok, k, ok, { rope: {} }), batcher.step(b, ok, ok, ok, { rope: {} })]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled']);
    expect([a.length, b.length]).toEqual([1, 1]);
    // without the rotation the same keys are fine
    pool.step([{ sequence: a, q: ok, k, v: ok }]);
    expect(a.length).toBe(2);
    expect(pool.import(a.export()).length).toBe(2);
    pool.dispose();
    if (dtype === 'float32') return;
    const cache = engine.kvCache({ batch: 2, kvHeads: 1, headDim: 2, maxSeq: 8, dtype });
    cache.append({ data: Float32Array.of(1, 2, 3, 4), dims: [2, 1, 1, 2] }, { data: Float32Array.of(1, 2, 3, 4), dims: [2, 1, 1, 2] }, { rope: {} });
    const used = engine.stats().usedBytes;
    const kk = { data: Float32Array.of(1, 1, big, big), dims: [2, 1, 1, 2] };
    refused(() => cache.append(kk, kk, { rope: {} }), 'INVALID_TENSOR', 'k.data', /rotated by RoPE/);
    expect([cache.lengths, engine.stats().usedBytes]).toEqual([[1, 1], used]);
    cache.dispose();
  });

  it('a pool whose head dim the kernel cannot hold refuses its steps before any kernel runs (was: a RangeError out of the kernel)', () => {
    for (const dtype of ['float32', 'int8'] as const) {
      // 16385: attention's limit; 2^21: past what the kernel's scratch can address (it trapped)
      for (const [headDim, valueDim] of [[16385, 1], [4, 16385], [2 ** 21, 1]]) {
        const pool = engine.kvPool({ kvHeads: 1, headDim, valueDim, pageSize: 1, maxTokens: 2, dtype });
        const a = pool.sequence();
        const step = { sequence: a, q: { data: new Float32Array(headDim), dims: [1, 1, headDim] }, k: { data: new Float32Array(headDim), dims: [1, 1, headDim] }, v: { data: new Float32Array(valueDim), dims: [1, 1, valueDim] } };
        const before = { pool: pool.stats(), used: engine.stats().usedBytes };
        refused(() => pool.step([step]), 'UNSUPPORTED', 'items');
        expect({ pool: pool.stats(), used: engine.stats().usedBytes }).toEqual(before);
        expect(a.length).toBe(0);
        pool.dispose();
      }
    }
  });
});

describe('resident keys and values without SharedArrayBuffer (a page that is not cross-origin isolated)', () => {
  it('are stored as given when the step takes a new slab and memory grows (was: NaN read from the detached view)', () => {
    const script = `
      delete globalThis.SharedArrayBuffer;
      const { createEngineSync } = await import(${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)});
      const results = {};
      for (const dtype of ['float32', 'float16', 'int8']) {
        const e = createEngineSync({ backend: 'wasm-simd' });
        const D = 64;
        const pools = [0, 1].map(() => e.kvPool({ kvHeads: 1, headDim: D, pageSize: 16, maxTokens: 100000, dtype }));
        const [a, b] = pools.map((pool) => pool.sequence());
        const k = e.tensor([1, 4, D]);
        const v = e.tensor([1, 4, D]);
        const kData = Float32Array.from({ length: 4 * D }, (_, i) => (i % 7) - 3);
        const vData = Float32Array.from({ length: 4 * D }, (_, i) => (i % 5) - 2);
        k.data.set(kData);
        v.data.set(vData);
        const q = { data: new Float32Array(4 * D).fill(0.1), dims: [1, 4, D] };
        const reserved = e.stats().reservedBytes;
        const [y] = pools[0].step([{ sequence: a, q, k, v }]); // takes the pool's first slab: memory grows
        const grown = e.stats().reservedBytes > reserved;
        const [z] = pools[1].step([{ sequence: b, q, k: { data: kData, dims: [1, 4, D] }, v: { data: vData, dims: [1, 4, D] } }]);
        const c = pools[0].sequence();
        const k2 = e.tensor([1, 3000, D]);
        k2.data.fill(0.5); // 0.5: float32 0x3f000000, half 0x3800, int8 127
        c.append(k2, k2); // more pages: memory grows again
        results[dtype] = { grown, same: JSON.stringify(Array.from(y.data)) === JSON.stringify(Array.from(z.data)),
          exports: JSON.stringify(Array.from(a.export())) === JSON.stringify(Array.from(b.export())),
          appended: Array.from(c.export().subarray(32, 36)), threads: e.threads };
      }
      console.log(JSON.stringify(results));`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(child.stderr).toBe('');
    const result = JSON.parse(child.stdout) as Record<string, unknown>;
    for (const dtype of ['float32', 'float16', 'int8']) expect(result[dtype], dtype).toEqual({ grown: true, same: true, exports: true, appended: { float32: [0, 0, 0, 0x3f], float16: [0, 0x38, 0, 0x38], int8: [127, 127, 127, 127] }[dtype], threads: 1 });
  });
});

describe('quantized pools on 1, 2 and 3 threads', () => {
  it.each(QUANTIZED)('%s: the same bits (decode, tile path, split-KV, prefill)', async (dtype) => {
    const shape: Shape = { qHeads: 12, kvHeads: 2, headDim: 20, valueDim: 12, dtype };
    const run = async (engine: Engine): Promise<number[][]> => {
      const random = rng(31);
      const pool: KVPool = engine.kvPool({ kvHeads: 2, headDim: 20, valueDim: 12, pageSize: 5, maxTokens: 8000, dtype });
      const sequences = Array.from({ length: 4 }, () => pool.sequence());
      const outputs: number[][] = [];
      for (const n of [1100, 1, 3, 40]) {
        const ys = await pool.stepAsync(sequences.map((sequence, i) => ({ sequence, ...stepData(random, i % 2 === 0 ? { ...shape, qHeads: 4 } : shape, i === 3 ? 1 : n) })), { softcap: 8, rope: {} });
        outputs.push(...ys.map((y) => Array.from(y.data)));
      }
      pool.dispose();
      return outputs;
    };
    const engines = [1, 2, 3].map((threads) => createEngineSync({ backend: WASM, threads }));
    const [one, two, three] = [await run(engines[0]), await run(engines[1]), await run(engines[2])];
    expect(two).toEqual(one);
    expect(three).toEqual(one);
    for (const e of engines) e.dispose();
  });
});

describe('a quantized KV cache whose async attention fails while an append runs', () => {
  it.each(QUANTIZED)('%s: the append stays (was: the failed attention put the sequences back, dropping it)', async (dtype) => {
    const engine = createEngineSync({ backend: WASM, maxMemoryBytes: 4 * 2 ** 20 });
    const empty = engine.stats().usedBytes;
    const D = 16;
    const cache = engine.kvCache({ batch: 2, kvHeads: 1, headDim: D, maxSeq: 64, dtype });
    const random = rng(40);
    const rows = (n: number): T => ({ data: Float32Array.from({ length: 2 * n * D }, () => random() - 0.5), dims: [2, 1, n, D] });
    const first = [rows(15), rows(15)];
    cache.append(first[0], first[1]);
    // a q of 4096 heads: its staging does not fit in 4 MiB, so the call is refused once it runs
    const heads = 4096;
    const failing = cache.attentionAsync({ data: new Float32Array(2 * heads * 4 * D), dims: [2, heads, 4, D] });
    const more = [rows(3), rows(3)];
    cache.append(more[0], more[1]);
    expect(cache.lengths).toEqual([18, 18]);
    const error = await failing.then(() => undefined, (e: unknown) => e);
    expect((error as AttentionError).code).toBe('OUT_OF_MEMORY');
    expect(cache.lengths).toEqual([18, 18]);
    // the cache holds what was appended: attention over it equals that of a cache fed the same rows
    const twin = engine.kvCache({ batch: 2, kvHeads: 1, headDim: D, maxSeq: 64, dtype });
    twin.append(first[0], first[1]);
    twin.append(more[0], more[1]);
    const q = rows(18);
    expect(Array.from(cache.attention(q).data)).toEqual(Array.from(twin.attention(q).data));
    cache.append(rows(1), rows(1));
    expect(cache.lengths).toEqual([19, 19]);
    cache.dispose();
    twin.dispose();
    expect(engine.stats().usedBytes).toBe(empty);
    engine.dispose();
  });
});
