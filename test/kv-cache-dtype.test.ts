// A float16 or int8 KV cache (engine.kvCache({ dtype })) on every backend: appends in both layouts
// ([B, Hkv, n, D] and [B, n, Hkv·D]), ragged counts and RoPE, then attention (decode and prefill,
// GQA, odd head dims, Dv != Dk, windows, softcap, causal: false, sync and async) against the float64
// reference over the history as quantizeKV says the pages hold it; the layer over a quantized cache
// against the same layer over a float32 cache; refusals that change neither the lengths nor the
// engine's memory; reset and dispose.
import { describe, expect, it } from 'vitest';
import { AttentionError, type Engine, type KVCache } from '../src/index.js';
import type { CacheAttentionOptions } from '../src/features/kv-cache.js';
import { referenceAttention, referenceRotary } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, refused, rng, tolerance } from './helpers.js';
import { Mirror, type Shape, type T } from './kv-pool-mirror.js';

const QUANTIZED = ['float16', 'int8'] as const;
type Quantized = (typeof QUANTIZED)[number];
type Layout = '4d' | '3d';
type RopeOption = NonNullable<CacheAttentionOptions['rope']>;

/** Sequence b's first `count` rows of x, [B, H, n, W] or [B, n, H·W], as [H, count, W]. */
function rowsOf(x: T, layout: Layout, b: number, count: number, heads: number, width: number): T {
  const n = layout === '4d' ? x.dims[2] : x.dims[1];
  const data = new Float32Array(heads * count * width);
  for (let h = 0; h < heads; h++) {
    for (let t = 0; t < count; t++) {
      const from = layout === '4d' ? ((b * heads + h) * n + t) * width : (b * n + t) * heads * width + h * width;
      data.set(x.data.subarray(from, from + width), (h * count + t) * width);
    }
  }
  return { data, dims: [heads, count, width] };
}

/** A tensor of `heads` heads and n positions per sequence, in the layout. */
const tensorIn = (random: () => number, layout: Layout, batch: number, heads: number, n: number, width: number, magnitude = 1): T =>
  randomTensor(random, layout === '4d' ? [batch, heads, n, width] : [batch, n, heads * width], magnitude);

/** A quantized cache's history as the reference sees it: one Mirror (kv-pool-mirror.ts) per sequence. */
class CacheMirror {
  readonly sequences: Mirror[];
  constructor(readonly shape: Shape & { dtype: Quantized }, batch: number) {
    this.sequences = Array.from({ length: batch }, () => new Mirror(shape));
  }

  get lengths(): number[] {
    return this.sequences.map((m) => m.length);
  }

  append(k: T, v: T, layout: Layout, counts: readonly number[], rope: RopeOption | undefined): void {
    const { kvHeads, headDim, valueDim } = this.shape;
    this.sequences.forEach((mirror, b) => {
      if (counts[b] > 0) mirror.append(rowsOf(k, layout, b, counts[b], kvHeads, headDim), rowsOf(v, layout, b, counts[b], kvHeads, valueDim), { rope });
    });
  }

  /** The reference output of cache.attention(q, options) laid out as q is, and its tolerance. */
  attention(q: T, layout: Layout, options: CacheAttentionOptions): { expected: Float64Array; tol: number } {
    const { qHeads, kvHeads, headDim, valueDim, dtype } = this.shape;
    const n = layout === '4d' ? q.dims[2] : q.dims[1];
    const batch = this.sequences.length;
    const expected = new Float64Array(batch * qHeads * n * valueDim);
    let tol = 0;
    this.sequences.forEach((mirror, b) => {
      const length = mirror.length;
      const block = rowsOf(q, layout, b, n, qHeads, headDim);
      const positions = { data: Int32Array.from({ length: n }, (_, i) => length - n + i), dims: [n] };
      const qb = options.rope ? referenceRotary({ data: block.data, dims: [1, ...block.dims] }, { positions, ...options.rope }).data : block.data;
      const k = Float64Array.from(mirror.keys.flat());
      const v = Float64Array.from(mirror.values.flat());
      const out = referenceAttention(
        { data: qb, dims: [1, qHeads, n, headDim] }, { data: k, dims: [1, kvHeads, length, headDim] }, { data: v, dims: [1, kvHeads, length, valueDim] },
        { causal: options.causal ?? true, offset: length - n, scale: options.scale, softcap: options.softcap, window: options.window },
      ).data;
      for (let h = 0; h < qHeads; h++) {
        for (let i = 0; i < n; i++) {
          const to = layout === '4d' ? ((b * qHeads + h) * n + i) * valueDim : (b * n + i) * qHeads * valueDim + h * valueDim;
          expected.set(out.subarray((h * n + i) * valueDim, (h * n + i + 1) * valueDim), to);
        }
      }
      // as Mirror.step: the float32 attention's tolerance plus the quantized pages' score error
      const scale = options.scale ?? 1 / Math.sqrt(headDim);
      const maxScore = Math.abs(scale) * maxAbs(qb) * maxAbs(k) * headDim;
      const scoreError = Math.abs(scale) * tolerance.quantizedScore(dtype, headDim, maxAbs(qb), maxAbs(k), options.rope !== undefined);
      const bound = tolerance.attention(headDim, length, options.softcap ?? maxScore) + 2.5 * scoreError + tolerance.quantizedWeights(dtype, length);
      tol = Math.max(tol, bound * Math.max(maxAbs(v), 1e-30));
    });
    return { expected, tol };
  }
}

interface Case {
  qHeads: number;
  kvHeads: number;
  headDim: number;
  valueDim: number;
  batch: number;
  layout: Layout;
  /** Each step: new positions per sequence (all of them, or counts[b] when ragged), then queries (the newest `queries` of each). */
  steps: Array<{ n: number; counts?: number[]; queries: number }>;
  options?: CacheAttentionOptions;
  /** RoPE on the appends (and, then, on the attention). */
  rope?: RopeOption;
  /** Default 64; below 16 the cache's pages hold maxSeq positions (odd page sizes). */
  maxSeq?: number;
}

const decode = (count: number): Case['steps'] => Array.from({ length: count }, () => ({ n: 1, queries: 1 }));

const cases: Array<[string, Case]> = [
  ['GQA 8/2, D 64, 4D: prefill 20, then decode', { qHeads: 8, kvHeads: 2, headDim: 64, valueDim: 64, batch: 2, layout: '4d', steps: [{ n: 20, queries: 20 }, ...decode(3)] }],
  ['MHA 3/3, D 3, Dv 5, 3D, ragged counts', {
    qHeads: 3, kvHeads: 3, headDim: 3, valueDim: 5, batch: 3, layout: '3d',
    steps: [{ n: 9, counts: [9, 4, 0], queries: 0 }, { n: 12, counts: [3, 12, 10], queries: 10 }, { n: 1, counts: [1, 0, 1], queries: 1 }, ...decode(2)],
  }],
  ['MQA 4/1, D 17, window 5, softcap 20, scale 0.3', {
    qHeads: 4, kvHeads: 1, headDim: 17, valueDim: 17, batch: 2, layout: '4d',
    steps: [{ n: 11, queries: 11 }, ...decode(2), { n: 9, queries: 9 }], options: { window: { left: 5 }, softcap: 20, scale: 0.3 },
  }],
  ['D 80, Dv 48, RoPE dims 32, 3D: prefill 12 then decode past a page', {
    qHeads: 4, kvHeads: 2, headDim: 80, valueDim: 48, batch: 2, layout: '3d', rope: { dims: 32 },
    steps: [{ n: 12, queries: 12 }, ...decode(5)],
  }],
  ['RoPE interleaved, base 500000, ragged, window 3', {
    qHeads: 2, kvHeads: 1, headDim: 16, valueDim: 8, batch: 2, layout: '4d', rope: { base: 500000, interleaved: true }, options: { window: { left: 3, right: 2 } },
    steps: [{ n: 10, counts: [10, 6], queries: 6 }, { n: 2, counts: [1, 2], queries: 1 }, ...decode(2)],
  }],
  ['causal: false, GQA 6/2, D 5', { qHeads: 6, kvHeads: 2, headDim: 5, valueDim: 7, batch: 2, layout: '4d', options: { causal: false }, steps: [{ n: 9, queries: 9 }, { n: 3, queries: 3 }, ...decode(1)] }],
  // pages of maxSeq positions: int8 value pairs straddling odd pages
  ['pages of 13 (maxSeq 13), 3D, ragged, causal: false, RoPE dims 4 of 9', {
    qHeads: 6, kvHeads: 2, headDim: 9, valueDim: 5, batch: 3, layout: '3d', maxSeq: 13, rope: { dims: 4 }, options: { causal: false },
    steps: [{ n: 7, counts: [7, 3, 0], queries: 0 }, { n: 4, counts: [4, 4, 4], queries: 3 }, { n: 2, counts: [2, 1, 2], queries: 1 }],
  }],
  ['pages of 5 (maxSeq 5), group 3, window 1, softcap 3', {
    qHeads: 3, kvHeads: 1, headDim: 7, valueDim: 3, batch: 2, layout: '4d', maxSeq: 5, options: { window: { left: 1 }, softcap: 3 },
    steps: [{ n: 3, queries: 3 }, ...decode(2)],
  }],
];

const runs = BACKENDS.flatMap((backend) => QUANTIZED.map((dtype) => [backend, dtype] as const));

describe.each(runs)('a %s KV cache of %s', (backend, dtype) => {
  const engine: Engine = engineFor(backend);

  it.each(cases)('appends then attention equal the reference over the quantized history: %s', async (_, c) => {
    const random = rng(c.headDim * 7 + c.qHeads);
    const shape = { qHeads: c.qHeads, kvHeads: c.kvHeads, headDim: c.headDim, valueDim: c.valueDim, dtype };
    const cache = engine.kvCache({ batch: c.batch, kvHeads: c.kvHeads, headDim: c.headDim, valueDim: c.valueDim, maxSeq: c.maxSeq ?? 64, dtype });
    expect(cache.dtype).toBe(dtype);
    const mirror = new CacheMirror(shape, c.batch);
    const options: CacheAttentionOptions = { ...c.options, rope: c.rope };
    for (const [s, step] of c.steps.entries()) {
      const k = tensorIn(random, c.layout, c.batch, c.kvHeads, step.n, c.headDim, 2);
      const v = tensorIn(random, c.layout, c.batch, c.kvHeads, step.n, c.valueDim);
      const counts = step.counts ?? new Array<number>(c.batch).fill(step.n);
      cache.append(k, v, { counts: step.counts, rope: c.rope });
      mirror.append(k, v, c.layout, counts, c.rope);
      expect(cache.lengths).toEqual(mirror.lengths);
      expect(cache.length).toBe(Math.max(...mirror.lengths));
      if (step.queries === 0) continue;
      const q = tensorIn(random, c.layout, c.batch, c.qHeads, step.queries, c.headDim, 2);
      const out = s % 2 === 0 ? cache.attention(q, options) : await cache.attentionAsync(q, options);
      const { expected, tol } = mirror.attention(q, c.layout, options);
      const n = step.queries;
      expect(out.dims).toEqual(c.layout === '4d' ? [c.batch, c.qHeads, n, c.valueDim] : [c.batch, n, c.qHeads * c.valueDim]);
      expect(maxError(out.data, expected)).toBeLessThanOrEqual(tol);
    }
    cache.dispose();
  });

  it('a history long enough to be cut along its keys (flash-decoding) still equals the reference', () => {
    const shape = { qHeads: 4, kvHeads: 1, headDim: 8, valueDim: 8, dtype };
    const random = rng(3);
    const cache = engine.kvCache({ batch: 2, kvHeads: 1, headDim: 8, maxSeq: 1100, dtype });
    const mirror = new CacheMirror(shape, 2);
    const k = tensorIn(random, '4d', 2, 1, 1030, 8);
    const v = tensorIn(random, '4d', 2, 1, 1030, 8);
    cache.append(k, v, { counts: [1030, 700] });
    mirror.append(k, v, '4d', [1030, 700], undefined);
    const q = tensorIn(random, '4d', 2, 4, 1, 8);
    const { expected, tol } = mirror.attention(q, '4d', {});
    expect(maxError(cache.attention(q).data, expected)).toBeLessThanOrEqual(tol);
    cache.dispose();
  });

  it('the layer over a quantized cache agrees with the layer over a float32 cache', () => {
    const random = rng(11);
    const [batch, embed, heads, kvHeads, headDim] = [2, 24, 4, 2, 6];
    const w = (rows: number, cols: number): T => randomTensor(random, [rows, cols], 1 / Math.sqrt(rows));
    const weights = { wq: w(embed, heads * headDim), wk: w(embed, kvHeads * headDim), wv: w(embed, kvHeads * headDim), wo: w(heads * headDim, embed) };
    const make = (d: 'float32' | Quantized): KVCache => engine.kvCache({ batch, kvHeads, headDim, maxSeq: 40, dtype: d });
    const [exact, quantized, byHand] = [make('float32'), make(dtype), make(dtype)];
    const options = { heads, kvHeads, rope: { base: 10000 }, softcap: 30 };
    for (const seq of [10, 1, 1, 7, 1]) {
      const x = randomTensor(random, [batch, seq, embed]);
      const want = engine.multiHeadAttention(x, weights, { ...options, cache: exact });
      const got = engine.multiHeadAttention(x, weights, { ...options, cache: quantized });
      expect(got.dims).toEqual(want.dims);
      // the layer's step is append then attention, [B, S, H·D] rows as they are: the same bits by hand
      byHand.append(engine.matmul(x, weights.wk), engine.matmul(x, weights.wv), { rope: options.rope });
      const attended = byHand.attention(engine.matmul(x, weights.wq), { rope: options.rope, softcap: 30 });
      expect(Array.from(got.data)).toEqual(Array.from(engine.matmul(attended, weights.wo).data));
      // what the cache holds, from the projections (RoPE moves an element by at most sqrt(2)·max)
      const project = (weight: T): number => Math.SQRT2 * maxAbs(matmul(x, weight));
      const [maxQ, maxK, maxV] = [project(weights.wq), project(weights.wk), maxAbs(matmul(x, weights.wv))];
      const perValue = tolerance.quantizedHistory(dtype, headDim, 1 / Math.sqrt(headDim), maxQ, maxK) + 2 * tolerance.attention(headDim, exact.length, 30);
      // an output sums heads·Dv attended values times wo
      const bound = perValue * maxV * heads * headDim * maxAbs(weights.wo.data);
      expect(maxError(got.data, want.data)).toBeLessThanOrEqual(bound);
      expect(quantized.lengths).toEqual(exact.lengths);
    }
    for (const cache of [exact, quantized, byHand]) cache.dispose();
  });

  it('refuses what the paged kernel cannot do, naming the option, and nothing changes', () => {
    const random = rng(5);
    const cache = engine.kvCache({ batch: 2, kvHeads: 1, headDim: 4, maxSeq: 8, dtype });
    const kv = tensorIn(random, '4d', 2, 1, 3, 4);
    cache.append(kv, kv);
    const used = engine.stats().usedBytes;
    const q = tensorIn(random, '4d', 2, 2, 1, 4);
    const refusals: Array<[CacheAttentionOptions, string]> = [
      [{ mask: { data: new Uint8Array(6).fill(1), dims: [2, 1, 1, 3] } }, 'options.mask'],
      [{ returnWeights: true }, 'options.returnWeights'],
      [{ returnLogSumExp: true }, 'options.returnLogSumExp'],
      [{ out: new Float32Array(8) }, 'options.out'],
      [{ causal: false, window: { left: 1 } }, 'options.window'],
      [{ causal: false, window: { right: 1 } }, 'options.window'],
    ];
    for (const [options, argument] of refusals) {
      refused(() => cache.attention(q, options), 'UNSUPPORTED', argument, /use dtype 'float32'/);
      expect(cache.lengths).toEqual([3, 3]);
    }
    // what a float32 cache checks, checked the same way
    refused(() => cache.attention(q, { returnWeights: 1 as never }), 'INVALID_OPTION', 'options.returnWeights');
    refused(() => cache.attention(q, { scale: NaN }), 'INVALID_OPTION', 'options.scale');
    refused(() => cache.attention(q, { window: { left: -1 } }), 'INVALID_OPTION', 'options.window.left');
    refused(() => cache.attention(q, { rope: { qPositions: { data: new Int32Array(1), dims: [1] } } as never }), 'INVALID_OPTION', 'options.rope.qPositions');
    refused(() => cache.attention(tensorIn(random, '4d', 2, 2, 4, 4)), 'SHAPE_MISMATCH', 'q.dims[2]');
    // a layer refused before it appends
    const x = randomTensor(random, [2, 1, 8]);
    const weights = { wq: randomTensor(random, [8, 8]), wk: randomTensor(random, [8, 4]), wv: randomTensor(random, [8, 4]), wo: randomTensor(random, [8, 8]) };
    refused(() => engine.multiHeadAttention(x, weights, { heads: 2, kvHeads: 1, cache, mask: { data: new Uint8Array(8).fill(1), dims: [2, 1, 1, 4] } }), 'UNSUPPORTED', 'options.mask');
    expect(cache.lengths).toEqual([3, 3]);
    expect(engine.stats().usedBytes).toBe(used);
    // the float32 cache takes them all
    const dense = engine.kvCache({ batch: 2, kvHeads: 1, headDim: 4, maxSeq: 8 });
    dense.append(kv, kv);
    expect(dense.attention(q, { returnWeights: true, returnLogSumExp: true }).weights!.dims).toEqual([2, 2, 1, 3]);
    dense.dispose();
    cache.dispose();
  });

  it('refuses what does not fit or cannot be stored, and nothing changes', () => {
    const random = rng(6);
    const before = engine.stats().usedBytes;
    refused(() => engine.kvCache({ batch: 1, kvHeads: 1, headDim: 4, maxSeq: 8, dtype: 'int4' as never }), 'INVALID_OPTION', 'options.dtype', /'float32', 'float16', 'int8'/);
    expect(engine.stats().usedBytes).toBe(before);
    const cache = engine.kvCache({ batch: 2, kvHeads: 2, headDim: 4, maxSeq: 20, dtype });
    const kv = tensorIn(random, '3d', 2, 2, 18, 4);
    cache.append(kv, kv, { counts: [18, 5] });
    const used = engine.stats().usedBytes;
    const more = tensorIn(random, '3d', 2, 2, 3, 4);
    refused(() => cache.append(more, more), 'CACHE_FULL', 'k');
    const big = tensorIn(random, '3d', 2, 2, 2, 4);
    big.data[9] = NaN;
    refused(() => cache.append(big, big, { counts: [2, 2] }), 'INVALID_TENSOR', 'k.data', /data\[9\] is NaN/);
    if (dtype === 'float16') {
      big.data[9] = 70000;
      refused(() => cache.append(tensorIn(random, '3d', 2, 2, 2, 4), big, { counts: [2, 1] }), 'INVALID_TENSOR', 'v.data', /data\[9\] is 70000, beyond float16/);
    }
    // a layer whose step does not fit: refused before its projections
    const x = randomTensor(random, [2, 3, 8]);
    const weights = { wq: randomTensor(random, [8, 8]), wk: randomTensor(random, [8, 8]), wv: randomTensor(random, [8, 8]), wo: randomTensor(random, [8, 8]) };
    refused(() => engine.multiHeadAttention(x, weights, { heads: 2, kvHeads: 2, cache }), 'CACHE_FULL', 'k');
    expect(cache.lengths).toEqual([18, 5]);
    expect(engine.stats().usedBytes).toBe(used);
    // still usable, up to maxSeq exactly
    const last = tensorIn(random, '3d', 2, 2, 2, 4);
    cache.append(last, last, { counts: [2, 0] });
    expect(cache.lengths).toEqual([20, 5]);
    cache.dispose();
  });

  it('reset forgets every position and keeps the memory; dispose gives it back', async () => {
    const random = rng(8);
    const before = engine.stats().usedBytes;
    const shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8, dtype };
    const cache = engine.kvCache({ batch: 2, kvHeads: 1, headDim: 8, maxSeq: 40, dtype });
    expect(engine.stats().usedBytes).toBe(before); // pages are taken as the sequences grow
    const kv = tensorIn(random, '4d', 2, 1, 30, 8);
    cache.append(kv, kv);
    const used = engine.stats().usedBytes;
    if (backend !== 'js') expect(used).toBeGreaterThan(before);
    cache.reset();
    expect(cache.lengths).toEqual([0, 0]);
    expect(engine.stats().usedBytes).toBe(used);
    const mirror = new CacheMirror(shape, 2);
    const k = tensorIn(random, '4d', 2, 1, 5, 8);
    const v = tensorIn(random, '4d', 2, 1, 5, 8);
    cache.append(k, v);
    mirror.append(k, v, '4d', [5, 5], undefined);
    const q = tensorIn(random, '4d', 2, 2, 2, 8);
    const { expected, tol } = mirror.attention(q, '4d', {});
    // an async call keeps the pages until it settles, even when the cache is disposed meanwhile
    const pending = cache.attentionAsync(q);
    cache.dispose();
    expect(maxError((await pending).data, expected)).toBeLessThanOrEqual(tol);
    expect(engine.stats().usedBytes).toBe(before);
    expect(() => cache.append(k, v)).toThrow(AttentionError);
    refused(() => cache.attention(q), 'DISPOSED', undefined);
  });
});

describe.each(BACKENDS)('quantized KV cache memory on %s', (backend) => {
  it('is the pages: int8 and float16 hold a full cache in far less than float32', () => {
    const engine = engineFor(backend);
    const random = rng(9);
    const usedBy = (dtype: 'float32' | Quantized): number => {
      const before = engine.stats().usedBytes;
      const cache = engine.kvCache({ batch: 2, kvHeads: 2, headDim: 64, maxSeq: 256, dtype });
      const kv = tensorIn(random, '4d', 2, 2, 256, 64);
      cache.append(kv, kv);
      const used = engine.stats().usedBytes - before;
      cache.dispose();
      expect(engine.stats().usedBytes).toBe(before);
      return used;
    };
    const [f32, f16, i8] = [usedBy('float32'), usedBy('float16'), usedBy('int8')];
    if (backend === 'js') return expect([f32, f16, i8]).toEqual([0, 0, 0]); // the js backend reserves no WASM memory
    expect(f32).toBeGreaterThanOrEqual(2 * 2 * 256 * 128 * 4);
    expect(f16).toBeLessThanOrEqual(0.55 * f32);
    expect(i8).toBeLessThanOrEqual(0.3 * f32);
  });
});

/** x [B, S, E] · w [E, C] in float64, as [B·S·C]. */
function matmul(x: T, w: T): Float64Array {
  const [rows, inner] = [x.data.length / x.dims[x.dims.length - 1], w.dims[0]];
  const cols = w.dims[1];
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let i = 0; i < inner; i++) for (let c = 0; c < cols; c++) out[r * cols + c] += x.data[r * inner + i] * w.data[i * cols + c];
  return out;
}
