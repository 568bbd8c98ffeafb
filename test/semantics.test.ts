// Attention beyond the basics, on every backend against the float64 reference: KV-cache decoding
// (prefill + steps equals full causal attention; ragged batches), sliding windows, returnWeights,
// returnLogSumExp and the exact merge of key chunks, and the multi-head layer against its float64
// composition of matmuls and attention.
import { describe, expect, it } from 'vitest';
import { AttentionError, mergeAttention } from '../src/index.js';
import { referenceAttention, referenceMatmul } from '../src/reference.js';
import { BACKENDS, engineFor, maxError, randomTensor, rng } from './helpers.js';

const TOL = 2e-6;

/** [B, S, H·D] → [B, H, S, D] */
function toHeads(t: { data: ArrayLike<number>; dims: number[] }, h: number): { data: Float32Array; dims: number[] } {
  const [b, s, hd] = t.dims;
  const d = hd / h;
  const out = new Float32Array(b * h * s * d);
  for (let bi = 0; bi < b; bi++) for (let si = 0; si < s; si++) for (let hi = 0; hi < h; hi++) for (let di = 0; di < d; di++) {
    out[((bi * h + hi) * s + si) * d + di] = t.data[(bi * s + si) * hd + hi * d + di];
  }
  return { data: out, dims: [b, h, s, d] };
}

/** [B, H, S, D] → [B, S, H·D] */
function fromHeads(t: { data: ArrayLike<number>; dims: number[] }): { data: Float64Array; dims: number[] } {
  const [b, h, s, d] = t.dims;
  const out = new Float64Array(b * s * h * d);
  for (let bi = 0; bi < b; bi++) for (let hi = 0; hi < h; hi++) for (let si = 0; si < s; si++) for (let di = 0; di < d; di++) {
    out[(bi * s + si) * h * d + hi * d + di] = t.data[((bi * h + hi) * s + si) * d + di];
  }
  return { data: out, dims: [b, s, h * d] };
}

/** Rows [from, to) of the sequence axis (2) of a [B, H, S, D] tensor. */
function rows(t: { data: Float32Array; dims: number[] }, from: number, to: number): { data: Float32Array; dims: number[] } {
  const [b, h, s, d] = t.dims;
  const out = new Float32Array(b * h * (to - from) * d);
  for (let bh = 0; bh < b * h; bh++) out.set(t.data.subarray((bh * s + from) * d, (bh * s + to) * d), bh * (to - from) * d);
  return { data: out, dims: [b, h, to - from, d] };
}

describe.each(BACKENDS)('KV cache on %s', (backend) => {
  const engine = engineFor(backend);

  it.each([
    ['MHA', 2, 2, 16, 16],
    ['GQA 4/2, value dim 8', 4, 2, 16, 8],
    ['MQA, head dim 100', 3, 1, 100, 100],
  ] as const)('prefill + single-token steps equals full causal attention (%s)', (_n, qHeads, kvHeads, headDim, valueDim) => {
    const random = rng(qHeads * 10 + headDim);
    const total = 150;
    const prefill = 70;
    const q = randomTensor(random, [2, qHeads, total, headDim]);
    const k = randomTensor(random, [2, kvHeads, total, headDim]);
    const v = randomTensor(random, [2, kvHeads, total, valueDim]);
    const expected = referenceAttention(q, k, v, { causal: true });
    const cache = engine.kvCache({ batch: 2, kvHeads, headDim, valueDim, maxSeq: 200 });
    cache.append(rows(k, 0, prefill), rows(v, 0, prefill));
    const parts = [cache.attention(rows(q, 0, prefill))];
    for (let t = prefill; t < total; t++) {
      cache.append(rows(k, t, t + 1), rows(v, t, t + 1));
      parts.push(cache.attention(rows(q, t, t + 1)));
    }
    expect(cache.length).toBe(total);
    // reassemble [B, Hq, total, Dv] from the steps
    const actual = new Float32Array(expected.data.length);
    let at = 0;
    for (const part of parts) {
      const n = part.dims[2];
      for (let bh = 0; bh < 2 * qHeads; bh++) actual.set(part.data.subarray(bh * n * valueDim, (bh + 1) * n * valueDim), (bh * total + at) * valueDim);
      at += n;
    }
    expect(maxError(actual, expected.data)).toBeLessThan(TOL);
    cache.dispose();
  });

  it('ragged batches: each sequence attends over its own length', () => {
    const random = rng(21);
    const cache = engine.kvCache({ batch: 3, kvHeads: 2, headDim: 8, maxSeq: 64 });
    const k = randomTensor(random, [3, 2, 40, 8]);
    const v = randomTensor(random, [3, 2, 40, 8]);
    const counts = [40, 17, 29];
    cache.append(k, v, { counts });
    expect(cache.lengths).toEqual(counts);
    const kStep = randomTensor(random, [3, 2, 1, 8]);
    const vStep = randomTensor(random, [3, 2, 1, 8]);
    cache.append(kStep, vStep);
    const q = randomTensor(random, [3, 4, 1, 8]);
    const y = cache.attention(q, { returnLogSumExp: true });
    for (let b = 0; b < 3; b++) {
      const len = counts[b];
      const kb = { data: new Float32Array(2 * (len + 1) * 8), dims: [1, 2, len + 1, 8] };
      const vb = { data: new Float32Array(2 * (len + 1) * 8), dims: [1, 2, len + 1, 8] };
      for (let h = 0; h < 2; h++) {
        kb.data.set(k.data.subarray((b * 2 + h) * 40 * 8, ((b * 2 + h) * 40 + len) * 8), h * (len + 1) * 8);
        kb.data.set(kStep.data.subarray((b * 2 + h) * 8, (b * 2 + h + 1) * 8), (h * (len + 1) + len) * 8);
        vb.data.set(v.data.subarray((b * 2 + h) * 40 * 8, ((b * 2 + h) * 40 + len) * 8), h * (len + 1) * 8);
        vb.data.set(vStep.data.subarray((b * 2 + h) * 8, (b * 2 + h + 1) * 8), (h * (len + 1) + len) * 8);
      }
      const qb = { data: q.data.subarray(b * 32, (b + 1) * 32), dims: [1, 4, 1, 8] };
      const r = referenceAttention(qb, kb, vb, { causal: true, offset: len });
      expect(maxError(y.data.subarray(b * 32, (b + 1) * 32), r.data)).toBeLessThan(TOL);
      expect(maxError(y.logSumExp!.data.subarray(b * 4, (b + 1) * 4), r.logSumExp)).toBeLessThan(TOL);
    }
  });

  it('refuses growth past maxSeq, bad shapes, and use after dispose', () => {
    const cache = engine.kvCache({ batch: 1, kvHeads: 1, headDim: 4, maxSeq: 3 });
    const entry = (n: number) => randomTensor(rng(n), [1, 1, n, 4]);
    cache.append(entry(2), entry(2));
    expect(() => cache.append(entry(2), entry(2))).toThrow(expect.objectContaining({ code: 'CACHE_FULL' }));
    expect(cache.length).toBe(2);
    expect(() => cache.append(randomTensor(rng(1), [1, 2, 1, 4]), entry(1))).toThrow(expect.objectContaining({ code: 'SHAPE_MISMATCH', argument: 'k.dims[1]' }));
    expect(() => cache.attention(randomTensor(rng(1), [1, 1, 1, 5]))).toThrow(AttentionError);
    cache.reset();
    expect(cache.length).toBe(0);
    cache.dispose();
    expect(() => cache.append(entry(1), entry(1))).toThrow(expect.objectContaining({ code: 'DISPOSED' }));
  });
});

describe.each(BACKENDS)('windows, weights and log-sum-exp on %s', (backend) => {
  const engine = engineFor(backend);
  const random = rng(31);
  const q = randomTensor(random, [1, 2, 150, 16]);
  const k = randomTensor(random, [1, 2, 300, 16]);
  const v = randomTensor(random, [1, 2, 300, 16]);

  it.each([
    [{ left: 10 }, false],
    [{ left: 0 }, true],
    [{ left: 70, right: 5 }, false],
    [{ right: 3 }, false],
    [{ left: 129 }, true],
  ] as const)('sliding window %j, causal %s', (window, causal) => {
    const y = engine.attention(q, k, v, { window, causal });
    expect(maxError(y.data, referenceAttention(q, k, v, { window, causal }).data)).toBeLessThan(TOL);
  });

  it('returns the attention weights and the log-sum-exp', () => {
    const mask = { data: Uint8Array.from({ length: 300 }, (_, j) => (j % 9 === 4 ? 0 : 1)), dims: [300] };
    const y = engine.attention(q, k, v, { causal: true, mask, softcap: 4, returnWeights: true, returnLogSumExp: true });
    const r = referenceAttention(q, k, v, { causal: true, mask, softcap: 4 });
    expect(y.weights!.dims).toEqual([1, 2, 150, 300]);
    expect(maxError(y.weights!.data, r.weights)).toBeLessThan(TOL);
    expect(maxError(y.logSumExp!.data, r.logSumExp)).toBeLessThan(1e-5);
  });

  it('merges chunks of keys exactly with mergeAttention', () => {
    const chunk = (from: number, to: number) => {
      const kc = rows(k, from, to);
      const vc = rows(v, from, to);
      const y = engine.attention(q, kc, vc, { returnLogSumExp: true });
      return { output: y, logSumExp: y.logSumExp! };
    };
    const { output, logSumExp } = mergeAttention([chunk(0, 120), chunk(120, 130), chunk(130, 300)]);
    const r = referenceAttention(q, k, v);
    expect(maxError(output.data, r.data)).toBeLessThan(TOL);
    expect(maxError(logSumExp.data, r.logSumExp)).toBeLessThan(1e-5);
  });
});

describe.each(BACKENDS)('multiHeadAttention on %s', (backend) => {
  const engine = engineFor(backend);
  const E = 24;
  const layer = (heads: number, kvHeads: number, headDim: number, valueDim: number, seed: number) => {
    const random = rng(seed);
    return {
      wq: randomTensor(random, [E, heads * headDim], 0.3),
      wk: randomTensor(random, [E, kvHeads * headDim], 0.3),
      wv: randomTensor(random, [E, kvHeads * valueDim], 0.3),
      wo: randomTensor(random, [heads * valueDim, 20], 0.3),
      bq: randomTensor(random, [heads * headDim]),
      bk: randomTensor(random, [kvHeads * headDim]),
      bv: randomTensor(random, [kvHeads * valueDim]),
      bo: randomTensor(random, [20]),
    };
  };
  /** The float64 composition: projections, attention per head, output projection. */
  function composed(x: { data: Float32Array; dims: number[] }, w: ReturnType<typeof layer>, heads: number, kvHeads: number, causal: boolean, context = x) {
    const project = (t: typeof x, m: { data: Float32Array; dims: number[] }, bias: { data: Float32Array }) => {
      const r = referenceMatmul(t, m);
      const width = m.dims[1];
      return { data: r.data.map((value, i) => value + bias.data[i % width]), dims: r.dims };
    };
    const q = project(x, w.wq, w.bq);
    const k = project(context, w.wk, w.bk);
    const v = project(context, w.wv, w.bv);
    const att = referenceAttention(toHeads(q, heads), toHeads(k, kvHeads), toHeads(v, kvHeads), { causal });
    const m = fromHeads(att);
    return project({ data: Float32Array.from(m.data), dims: m.dims }, w.wo, w.bo);
  }

  it.each([
    ['self-attention, causal', 4, 4, 6, 6, true],
    ['GQA 6/2, value dim 5', 6, 2, 4, 5, false],
  ] as const)('%s, against the float64 composition', (_n, h, hkv, d, dv, causal) => {
    const w = layer(h, hkv, d, dv, h + d);
    const x = randomTensor(rng(5), [2, 13, E]);
    const y = engine.multiHeadAttention(x, w, { heads: h, kvHeads: hkv, causal });
    expect(y.dims).toEqual([2, 13, 20]);
    expect(maxError(y.data, composed(x, w, h, hkv, causal).data)).toBeLessThan(1e-5);
  });

  it('cross-attention over a context', () => {
    const w = layer(2, 2, 6, 6, 3);
    const x = randomTensor(rng(6), [1, 5, E]);
    const context = randomTensor(rng(7), [1, 9, E]);
    const y = engine.multiHeadAttention(x, w, { heads: 2, context });
    expect(maxError(y.data, composed(x, w, 2, 2, false, context).data)).toBeLessThan(1e-5);
  });

  it('decoding through a cache equals the full causal layer', () => {
    const w = layer(4, 2, 6, 6, 9);
    const x = randomTensor(rng(8), [1, 12, E]);
    const full = engine.multiHeadAttention(x, w, { heads: 4, kvHeads: 2, causal: true });
    const cache = engine.kvCache({ batch: 1, kvHeads: 2, headDim: 6, maxSeq: 16 });
    const prefill = { data: x.data.subarray(0, 8 * E), dims: [1, 8, E] };
    const parts = [engine.multiHeadAttention(prefill, w, { heads: 4, kvHeads: 2, cache })];
    for (let t = 8; t < 12; t++) parts.push(engine.multiHeadAttention({ data: x.data.subarray(t * E, (t + 1) * E), dims: [1, 1, E] }, w, { heads: 4, kvHeads: 2, cache }));
    const stepped = new Float32Array(full.data.length);
    let at = 0;
    for (const p of parts) {
      stepped.set(p.data, at);
      at += p.data.length;
    }
    expect(maxError(stepped, full.data)).toBeLessThan(1e-5);
  });

  it('refuses weights that do not fit', () => {
    const w = layer(4, 4, 6, 6, 1);
    const x = randomTensor(rng(1), [1, 3, E]);
    expect(() => engine.multiHeadAttention(x, w, { heads: 5 })).toThrow(expect.objectContaining({ argument: 'weights.wq.dims[1]' }));
    expect(() => engine.multiHeadAttention(x, { ...w, wo: randomTensor(rng(1), [7, 20]) }, { heads: 4 })).toThrow(expect.objectContaining({ argument: 'weights.wo.dims[0]' }));
    const cache = engine.kvCache({ batch: 1, kvHeads: 2, headDim: 6, maxSeq: 8 });
    expect(() => engine.multiHeadAttention(x, w, { heads: 4, cache })).toThrow(expect.objectContaining({ code: 'SHAPE_MISMATCH', argument: 'options.cache' }));
    cache.dispose();
  });
});
