// The rope option of attention, the KV cache and the multi-head layer, on every backend against the
// float64 references: engine.attention with rope equals referenceRotary then referenceAttention
// (and referenceAttention's own rope option), for head dims 2 to 128, dims below the head dim,
// both pair layouts, GQA, causal, split-KV, explicit positions [S] and [B, S]; the cache's appends
// and attention over ragged lengths equal attention over each sequence's rotated history alone; the
// layer equals its float64 composition, with and without a cache; refusals leave a cache as it
// was, and a resident q or k is never rotated in place.
import { describe, expect, it } from 'vitest';
import type { KVCache, TensorLike } from '../src/index.js';
import { referenceAttention, referenceMatmul, referenceRotary } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, refused, rng, tolerance } from './helpers.js';

type Dense = { data: Float32Array; dims: number[] };
type Positions = { data: Int32Array | Float32Array; dims: number[] };

interface RopeCase {
  batch: number;
  qHeads: number;
  kvHeads: number;
  seqQ: number;
  seqKV: number;
  headDim: number;
  valueDim?: number;
  dims?: number;
  interleaved?: boolean;
  base?: number;
  causal?: boolean;
  /** Explicit positions: shared [S] or per batch entry [B, S], as Int32Array or Float32Array. */
  positions?: 'shared' | 'perBatch' | 'float';
}

/**
 * The bound of an attention output against the reference, with RoPE: the rotated q and k have
 * entries up to sqrt(2)·M (M = max|q|, max|k|), so scores up to scale·D·2M²; the rotation's own
 * rounding (4·EPS32·sqrt(2)·M per element, tolerance.rotary) moves a score by far less than the
 * sqrt(D + 1)·maxScore term of tolerance.attention already allows.
 */
function ropeBound(headDim: number, seqKV: number, magnitude: number, v: ArrayLike<number>): number {
  const maxScore = (2 * headDim * magnitude * magnitude) / Math.sqrt(headDim);
  return tolerance.attention(headDim, seqKV, maxScore) * maxAbs(v);
}

/** Random integer positions in [0, limit). */
function randomPositions(random: () => number, dims: number[], float: boolean, limit = 5000): Positions {
  const size = dims.reduce((a, b) => a * b, 1);
  const values = Array.from({ length: size }, () => Math.floor(random() * limit));
  return { data: float ? Float32Array.from(values) : Int32Array.from(values), dims };
}

/** [B, S, H·D] as [B, H, S, D]. */
function splitHeads(t: { data: ArrayLike<number>; dims: number[] }, heads: number): Dense {
  const [batch, seq, width] = t.dims;
  const headDim = width / heads;
  const out = new Float32Array(batch * heads * seq * headDim);
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < seq; s++) {
      for (let h = 0; h < heads; h++) {
        for (let d = 0; d < headDim; d++) out[((b * heads + h) * seq + s) * headDim + d] = t.data[(b * seq + s) * width + h * headDim + d];
      }
    }
  }
  return { data: out, dims: [batch, heads, seq, headDim] };
}

/** [B, H, S, D] as [B, S, H·D]. */
function joinHeads(t: { data: ArrayLike<number>; dims: number[] }): Dense {
  const [batch, heads, seq, headDim] = t.dims;
  const out = new Float32Array(t.data.length);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let s = 0; s < seq; s++) {
        for (let d = 0; d < headDim; d++) out[(b * seq + s) * heads * headDim + h * headDim + d] = t.data[((b * heads + h) * seq + s) * headDim + d];
      }
    }
  }
  return { data: out, dims: [batch, seq, heads * headDim] };
}

/** Sequence rows [from, to) of batch entry b of a [B, H, S, D] tensor, as [1, H, to - from, D]. */
function slab(t: Dense, b: number, from: number, to: number): Dense {
  const [, heads, seq, width] = t.dims;
  const out = new Float32Array(heads * (to - from) * width);
  for (let h = 0; h < heads; h++) {
    const start = ((b * heads + h) * seq + from) * width;
    out.set(t.data.subarray(start, start + (to - from) * width), h * (to - from) * width);
  }
  return { data: out, dims: [1, heads, to - from, width] };
}

/** Two [1, H, S_i, D] tensors joined along the sequence. */
function concatRows(a: Dense, b: Dense): Dense {
  const [, heads, seqA, width] = a.dims;
  const seqB = b.dims[2];
  const out = new Float32Array(heads * (seqA + seqB) * width);
  for (let h = 0; h < heads; h++) {
    out.set(a.data.subarray(h * seqA * width, (h + 1) * seqA * width), h * (seqA + seqB) * width);
    out.set(b.data.subarray(h * seqB * width, (h + 1) * seqB * width), (h * (seqA + seqB) + seqA) * width);
  }
  return { data: out, dims: [1, heads, seqA + seqB, width] };
}

const range = (start: number, count: number): Positions => ({ data: Int32Array.from({ length: count }, (_, i) => start + i), dims: [count] });

const attentionCases: Array<[string, RopeCase]> = [];
for (const headDim of [2, 6, 64, 80, 128]) {
  for (const interleaved of [false, true]) {
    attentionCases.push([`headDim ${headDim}${interleaved ? ', interleaved' : ''}`, { batch: 2, qHeads: 2, kvHeads: 2, seqQ: 9, seqKV: 17, headDim, interleaved }]);
  }
}
attentionCases.push(
  ['dims 2 of 6', { batch: 1, qHeads: 2, kvHeads: 1, seqQ: 5, seqKV: 11, headDim: 6, dims: 2 }],
  ['dims 4 of 80, interleaved', { batch: 2, qHeads: 3, kvHeads: 3, seqQ: 7, seqKV: 30, headDim: 80, dims: 4, interleaved: true }],
  ['dims 32 of 128 (0.25 of the head), base 500', { batch: 1, qHeads: 4, kvHeads: 2, seqQ: 12, seqKV: 40, headDim: 128, dims: 32, base: 500 }],
  ['dims 0 is the whole head', { batch: 1, qHeads: 2, kvHeads: 2, seqQ: 4, seqKV: 6, headDim: 10, dims: 0 }],
  ['GQA 4/2, causal', { batch: 2, qHeads: 4, kvHeads: 2, seqQ: 33, seqKV: 33, headDim: 64, valueDim: 32, causal: true }],
  ['GQA 6/2, causal Sq < Skv, interleaved', { batch: 1, qHeads: 6, kvHeads: 2, seqQ: 5, seqKV: 70, headDim: 16, causal: true, interleaved: true }],
  ['MQA 5/1, Sq > Skv (negative default query positions)', { batch: 1, qHeads: 5, kvHeads: 1, seqQ: 20, seqKV: 7, headDim: 8 }],
  ['query rows past one item (70), causal', { batch: 1, qHeads: 2, kvHeads: 1, seqQ: 70, seqKV: 70, headDim: 32, causal: true }],
  ['split-KV: one row over 1100 keys', { batch: 2, qHeads: 4, kvHeads: 2, seqQ: 1, seqKV: 1100, headDim: 64 }],
  ['explicit positions [S]', { batch: 2, qHeads: 2, kvHeads: 2, seqQ: 6, seqKV: 13, headDim: 12, positions: 'shared' }],
  ['explicit positions [B, S], GQA, causal', { batch: 3, qHeads: 4, kvHeads: 2, seqQ: 8, seqKV: 8, headDim: 20, positions: 'perBatch', causal: true }],
  ['explicit Float32Array positions, interleaved, dims 6 of 10', { batch: 2, qHeads: 1, kvHeads: 1, seqQ: 3, seqKV: 9, headDim: 10, dims: 6, interleaved: true, positions: 'float' }],
);

/** q, k, v and the rope option of a case, with the references' rope option beside it. */
function caseInputs(c: RopeCase, seed: number) {
  const random = rng(seed);
  const q = randomTensor(random, [c.batch, c.qHeads, c.seqQ, c.headDim]);
  const k = randomTensor(random, [c.batch, c.kvHeads, c.seqKV, c.headDim]);
  const v = randomTensor(random, [c.batch, c.kvHeads, c.seqKV, c.valueDim ?? c.headDim]);
  let qPositions: Positions | undefined;
  let kPositions: Positions | undefined;
  if (c.positions) {
    const perBatch = c.positions === 'perBatch';
    const float = c.positions === 'float';
    qPositions = randomPositions(random, perBatch ? [c.batch, c.seqQ] : [c.seqQ], float);
    kPositions = randomPositions(random, perBatch ? [c.batch, c.seqKV] : [c.seqKV], float);
  }
  const rope = { dims: c.dims, interleaved: c.interleaved, base: c.base, qPositions, kPositions };
  return { q, k, v, rope };
}

describe.each(BACKENDS)('attention with rope on %s', (backend) => {
  const engine = engineFor(backend);

  it.each(attentionCases.map(([name, c], i) => [name, c, i] as const))('%s', (_name, c, i) => {
    const { q, k, v, rope } = caseInputs(c, 300 + i);
    const actual = engine.attention(q, k, v, { rope, causal: c.causal });
    // the definition: rotate q and k at their positions, then plain attention
    const rotation = { dims: c.dims, interleaved: c.interleaved, base: c.base };
    const qRotated = referenceRotary(q, { ...rotation, positions: rope.qPositions ?? range(c.seqKV - c.seqQ, c.seqQ) });
    const kRotated = referenceRotary(k, { ...rotation, positions: rope.kPositions ?? range(0, c.seqKV) });
    const expected = referenceAttention(qRotated, kRotated, v, { causal: c.causal });
    const bound = ropeBound(c.headDim, c.seqKV, 1, v.data);
    expect(actual.dims).toEqual(expected.dims);
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(bound);
    // the reference's own rope option is the same composition
    const own = referenceAttention(q, k, v, { rope, causal: c.causal });
    expect(maxError(own.data, expected.data)).toBeLessThan(1e-12);
    // the rotation matters: without it the result differs (past the bound) unless nothing rotates
    if ((c.dims ?? c.headDim) > 0) {
      const plain = referenceAttention(q, k, v, { causal: c.causal });
      expect(maxError(plain.data, expected.data)).toBeGreaterThan(bound);
    }
  });

  it('returnWeights and returnLogSumExp see the rotated scores', () => {
    const c: RopeCase = { batch: 2, qHeads: 4, kvHeads: 2, seqQ: 9, seqKV: 21, headDim: 24, dims: 16, causal: true };
    const { q, k, v, rope } = caseInputs(c, 41);
    const actual = engine.attention(q, k, v, { rope, causal: true, returnWeights: true, returnLogSumExp: true });
    const expected = referenceAttention(q, k, v, { rope, causal: true });
    const bound = ropeBound(c.headDim, c.seqKV, 1, v.data);
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(bound);
    expect(maxError(actual.weights!.data, expected.weights)).toBeLessThanOrEqual(bound);
    expect(maxError(actual.logSumExp!.data, expected.logSumExp)).toBeLessThanOrEqual(bound);
  });

  it('attentionAsync gives the bits of the sync call', async () => {
    const c: RopeCase = { batch: 2, qHeads: 4, kvHeads: 1, seqQ: 40, seqKV: 90, headDim: 64, dims: 32, interleaved: true, causal: true, positions: 'perBatch' };
    const { q, k, v, rope } = caseInputs(c, 42);
    const sync = engine.attention(q, k, v, { rope, causal: true });
    const [a, b] = await Promise.all([engine.attentionAsync(q, k, v, { rope, causal: true }), engine.attentionAsync(q, k, v, { rope, causal: true })]);
    expect(a.data).toEqual(sync.data);
    expect(b.data).toEqual(sync.data);
  });

  it('shifting every position alike leaves the scores (nearly) unchanged', () => {
    const c: RopeCase = { batch: 1, qHeads: 2, kvHeads: 2, seqQ: 8, seqKV: 8, headDim: 32 };
    const { q, k, v } = caseInputs(c, 43);
    const base = engine.attention(q, k, v, { rope: {}, causal: true });
    const shifted = engine.attention(q, k, v, { rope: { qPositions: range(1000, 8), kPositions: range(1000, 8) }, causal: true });
    expect(maxError(shifted.data, base.data)).toBeLessThan(1e-4);
  });

  it('never rotates a resident q or k in place, and reads resident positions', () => {
    const c: RopeCase = { batch: 2, qHeads: 2, kvHeads: 1, seqQ: 6, seqKV: 10, headDim: 16, dims: 8 };
    const { q, k, v } = caseInputs(c, 44);
    const qResident = engine.tensor(q.dims);
    const kResident = engine.tensor(k.dims);
    const positions = engine.tensor([c.seqKV]);
    qResident.data.set(q.data);
    kResident.data.set(k.data);
    positions.data.set(Float32Array.from({ length: c.seqKV }, (_, j) => 3 * j));
    const kPositions = { data: Float32Array.from(positions.data), dims: [c.seqKV] };
    const expected = engine.attention(q, k, v, { rope: { dims: 8, kPositions } });
    const actual = engine.attention(qResident, kResident, v, { rope: { dims: 8, kPositions: positions } });
    expect(actual.data).toEqual(expected.data);
    expect(qResident.data).toEqual(q.data);
    expect(kResident.data).toEqual(k.data);
    qResident.release();
    kResident.release();
    positions.release();
  });

  it('reads the rope option and its positions once each', () => {
    const c: RopeCase = { batch: 1, qHeads: 2, kvHeads: 2, seqQ: 4, seqKV: 4, headDim: 8 };
    const { q, k, v } = caseInputs(c, 47);
    const reads: Record<string, number> = {};
    const counted = <T>(name: string, value: T) => () => {
      reads[name] = (reads[name] ?? 0) + 1;
      return value;
    };
    const positions = Object.defineProperties({}, { data: { get: counted('data', range(0, 4).data), enumerable: true }, dims: { get: counted('dims', [4]), enumerable: true } });
    const rope = Object.defineProperties({}, {
      dims: { get: counted('rope.dims', 4), enumerable: true },
      kPositions: { get: counted('rope.kPositions', positions), enumerable: true },
    });
    const actual = engine.attention(q, k, v, { rope });
    expect(reads).toEqual({ 'rope.dims': 1, 'rope.kPositions': 1, data: 1, dims: 1 });
    expect(maxError(actual.data, referenceAttention(q, k, v, { rope: { dims: 4 } }).data)).toBeLessThanOrEqual(ropeBound(8, 4, 1, v.data));
  });

  it('refuses a bad rope option', () => {
    const { q, k, v } = caseInputs({ batch: 2, qHeads: 2, kvHeads: 2, seqQ: 3, seqKV: 5, headDim: 8 }, 45);
    const odd = caseInputs({ batch: 1, qHeads: 1, kvHeads: 1, seqQ: 2, seqKV: 2, headDim: 5 }, 46);
    const attend = (rope: unknown) => () => engine.attention(q, k, v, { rope } as never);
    refused(attend({ dims: 3 }), 'INVALID_OPTION', 'options.rope.dims', /even/);
    refused(attend({ dims: 10 }), 'INVALID_OPTION', 'options.rope.dims', /more than the head dim 8/);
    refused(() => engine.attention(odd.q, odd.k, odd.v, { rope: {} }), 'INVALID_OPTION', 'options.rope.dims', /head dim, its default/);
    refused(attend({ bsae: 100 }), 'INVALID_OPTION', 'options.rope.bsae', /did you mean base/);
    refused(attend({ base: 0 }), 'INVALID_OPTION', 'options.rope.base');
    refused(attend({ interleaved: 1 }), 'INVALID_OPTION', 'options.rope.interleaved');
    refused(attend(null), 'INVALID_OPTION', 'options.rope');
    refused(attend({ qPositions: range(0, 4) }), 'SHAPE_MISMATCH', 'options.rope.qPositions.dims', /\[S\] = \[3\]/);
    refused(attend({ kPositions: { data: new Int32Array(15), dims: [3, 5] } }), 'SHAPE_MISMATCH', 'options.rope.kPositions.dims', /\[B, S\] = \[2, 5\]/);
    refused(attend({ kPositions: { data: new Int32Array(4), dims: [5] } }), 'SHAPE_MISMATCH', 'options.rope.kPositions.data');
    refused(attend({ kPositions: { data: Int32Array.of(0, 1, -2, 3, 4), dims: [5] } }), 'INVALID_OPTION', 'options.rope.kPositions.data', /data\[2\] is -2/);
    refused(attend({ kPositions: { data: Float32Array.of(0, 1, 2.5, 3, 4), dims: [5] } }), 'INVALID_OPTION', 'options.rope.kPositions.data');
    refused(attend({ qPositions: { data: Float32Array.of(0, 1, 2 ** 24), dims: [3] } }), 'INVALID_OPTION', 'options.rope.qPositions.data', /2\^24/);
    refused(attend({ qPositions: { data: new Float64Array(3), dims: [3] } }), 'INVALID_DTYPE', 'options.rope.qPositions.data');
    refused(attend({ qPositions: new Int32Array(3) }), 'INVALID_TENSOR', 'options.rope.qPositions');
  });
});

/** Runs `call`, expects it refused with `code`, and the cache's lengths and a probe attention unchanged. */
function refusedUntouched(cache: KVCache, probe: TensorLike<Float32Array>, call: () => unknown, code: string, argument: string): void {
  const lengths = cache.lengths;
  const before = cache.attention(probe, { rope: {} }).data.slice();
  refused(call, code, argument);
  expect(cache.lengths).toEqual(lengths);
  expect(cache.attention(probe, { rope: {} }).data).toEqual(before);
}

describe.each(BACKENDS)('KV cache with rope on %s', (backend) => {
  const engine = engineFor(backend);

  it.each([
    ['[B, H, n, D], half-split', false, false, 16, 16],
    ['[B, H, n, D], interleaved, dims 6 of 10', false, true, 10, 6],
    ['[B, n, H·D], half-split, dims 8 of 20', true, false, 20, 8],
    ['[B, n, H·D], interleaved, head dim 64', true, true, 64, 64],
  ] as const)('ragged appends then attention equal each sequence alone (%s)', (_name, rowMajor, interleaved, headDim, dims) => {
    const random = rng(headDim * 7 + (interleaved ? 1 : 0));
    const batch = 3;
    const kvHeads = 2;
    const qHeads = 4;
    const prefill = 12;
    const step = 3;
    const counts = [12, 5, 9];
    const rope = { dims, interleaved };
    const cache = engine.kvCache({ batch, kvHeads, headDim, maxSeq: 32 });
    const k1 = randomTensor(random, [batch, kvHeads, prefill, headDim]);
    const v1 = randomTensor(random, [batch, kvHeads, prefill, headDim]);
    const k2 = randomTensor(random, [batch, kvHeads, step, headDim]);
    const v2 = randomTensor(random, [batch, kvHeads, step, headDim]);
    const q = randomTensor(random, [batch, qHeads, step, headDim]);
    const layout = (t: Dense) => (rowMajor ? joinHeads(t) : t);
    cache.append(layout(k1), layout(v1), { counts, rope });
    cache.append(layout(k2), layout(v2), { rope });
    expect(cache.lengths).toEqual(counts.map((c) => c + step));
    const actual = cache.attention(layout(q), { rope });
    const result = rowMajor ? splitHeads(actual, qHeads) : actual;
    for (let b = 0; b < batch; b++) {
      const length = counts[b] + step;
      const kHistory = concatRows(slab(k1, b, 0, counts[b]), slab(k2, b, 0, step));
      const vHistory = concatRows(slab(v1, b, 0, counts[b]), slab(v2, b, 0, step));
      const qb = slab(q, b, 0, step);
      const kRotated = referenceRotary(kHistory, { positions: range(0, length), dims, interleaved });
      const qRotated = referenceRotary(qb, { positions: range(length - step, step), dims, interleaved });
      const expected = referenceAttention(qRotated, kRotated, vHistory, { causal: true, offset: length - step });
      const got = slab(result as Dense, b, 0, step);
      expect(maxError(got.data, expected.data)).toBeLessThanOrEqual(ropeBound(headDim, length, 1, vHistory.data));
    }
    cache.dispose();
  });

  it('prefill then single steps equal causal attention with rope over the whole sequence', async () => {
    const random = rng(61);
    const total = 40;
    const prefill = 33;
    const q = randomTensor(random, [2, 4, total, 32]);
    const k = randomTensor(random, [2, 2, total, 32]);
    const v = randomTensor(random, [2, 2, total, 24]);
    const rope = { dims: 16, base: 1000 };
    const expected = referenceAttention(q, k, v, { causal: true, rope });
    const cache = engine.kvCache({ batch: 2, kvHeads: 2, headDim: 32, valueDim: 24, maxSeq: 64 });
    const rowsOf = (t: Dense, from: number, to: number): Dense => {
      const parts = [0, 1].map((b) => slab(t, b, from, to));
      const data = new Float32Array(parts[0].data.length * 2);
      data.set(parts[0].data, 0);
      data.set(parts[1].data, parts[0].data.length);
      return { data, dims: [2, t.dims[1], to - from, t.dims[3]] };
    };
    cache.append(rowsOf(k, 0, prefill), rowsOf(v, 0, prefill), { rope });
    const outputs = [{ from: 0, to: prefill, out: cache.attention(rowsOf(q, 0, prefill), { rope }) }];
    for (let t = prefill; t < total; t++) {
      cache.append(rowsOf(k, t, t + 1), rowsOf(v, t, t + 1), { rope });
      const out = t % 2 === 0 ? cache.attention(rowsOf(q, t, t + 1), { rope }) : await cache.attentionAsync(rowsOf(q, t, t + 1), { rope });
      outputs.push({ from: t, to: t + 1, out });
    }
    const whole = { data: Float32Array.from(expected.data), dims: expected.dims };
    for (const { from, to, out } of outputs) {
      expect(maxError(out.data, rowsOf(whole, from, to).data)).toBeLessThanOrEqual(ropeBound(32, total, 1, v.data));
    }
    cache.dispose();
  });

  it('reads a resident k for the append without rotating it in place', () => {
    const cache = engine.kvCache({ batch: 1, kvHeads: 1, headDim: 8, maxSeq: 8 });
    const k = randomTensor(rng(62), [1, 1, 4, 8]);
    const v = randomTensor(rng(63), [1, 1, 4, 8]);
    const kResident = engine.tensor(k.dims);
    kResident.data.set(k.data);
    cache.append(kResident, v, { rope: {} });
    expect(kResident.data).toEqual(k.data);
    const q = randomTensor(rng(64), [1, 2, 4, 8]);
    const expected = referenceAttention(q, k, v, { rope: {}, causal: true });
    expect(maxError(cache.attention(q, { rope: {} }).data, expected.data)).toBeLessThanOrEqual(ropeBound(8, 4, 1, v.data));
    kResident.release();
    cache.dispose();
  });

  it('refused appends and attention calls leave the cache as it was', () => {
    const cache = engine.kvCache({ batch: 2, kvHeads: 1, headDim: 6, maxSeq: 10 });
    const entry = (n: number, seed: number) => randomTensor(rng(seed), [2, 1, n, 6]);
    cache.append(entry(3, 1), entry(3, 2), { counts: [3, 2], rope: {} });
    const probe = randomTensor(rng(3), [2, 2, 1, 6]);
    const append = (rope: unknown, counts?: number[]) => () => cache.append(entry(2, 4), entry(2, 5), { counts, rope } as never);
    refusedUntouched(cache, probe, append({ dims: 3 }), 'INVALID_OPTION', 'options.rope.dims');
    refusedUntouched(cache, probe, append({ dims: 8 }), 'INVALID_OPTION', 'options.rope.dims');
    refusedUntouched(cache, probe, append({ base: -1 }), 'INVALID_OPTION', 'options.rope.base');
    refusedUntouched(cache, probe, append({ kPositions: range(0, 2) }), 'INVALID_OPTION', 'options.rope.kPositions');
    refusedUntouched(cache, probe, append({}, [3, 1]), 'INVALID_OPTION', 'options.counts');
    refusedUntouched(cache, probe, () => cache.append(entry(8, 6), entry(8, 7), { rope: {} }), 'CACHE_FULL', 'k');
    refusedUntouched(cache, probe, () => cache.attention(probe, { rope: { qPositions: range(0, 1) } } as never), 'INVALID_OPTION', 'options.rope.qPositions');
    refusedUntouched(cache, probe, () => cache.attention(probe, { rope: { interleaved: 'yes' } } as never), 'INVALID_OPTION', 'options.rope.interleaved');
    expect(cache.lengths).toEqual([3, 2]);
    cache.dispose();
  });
});

describe.each(BACKENDS)('multiHeadAttention with rope on %s', (backend) => {
  const engine = engineFor(backend);
  const embed = 20;
  const weightsFor = (heads: number, kvHeads: number, headDim: number, seed: number) => {
    const random = rng(seed);
    return {
      wq: randomTensor(random, [embed, heads * headDim], 0.4),
      wk: randomTensor(random, [embed, kvHeads * headDim], 0.4),
      wv: randomTensor(random, [embed, kvHeads * headDim], 0.4),
      wo: randomTensor(random, [heads * headDim, 12], 0.4),
      bq: randomTensor(random, [heads * headDim]),
      bk: randomTensor(random, [kvHeads * headDim]),
    };
  };
  type Weights = ReturnType<typeof weightsFor>;

  /** The float64 composition: projections, rotation of q and k, attention per head, output projection. */
  function composed(x: Dense, w: Weights, heads: number, kvHeads: number, rope: { dims?: number; interleaved?: boolean }, causal: boolean) {
    const seq = x.dims[1];
    const project = (m: Dense, bias?: Dense) => {
      const r = referenceMatmul(x, m);
      const width = m.dims[1];
      return { data: r.data.map((value, i) => value + (bias ? bias.data[i % width] : 0)), dims: r.dims };
    };
    const q = referenceRotary(project(w.wq, w.bq), { positions: range(0, seq), heads, ...rope });
    const k = referenceRotary(project(w.wk, w.bk), { positions: range(0, seq), heads: kvHeads, ...rope });
    const v = project(w.wv);
    const attended = referenceAttention(splitHeads(q, heads), splitHeads(k, kvHeads), splitHeads(v, kvHeads), { causal });
    const joined = joinHeads(attended);
    const out = referenceMatmul(joined, w.wo);
    return out.data;
  }

  it.each([
    ['MHA, half-split', 2, 2, 8, {}, false],
    ['GQA 4/2, causal, interleaved', 4, 2, 6, { interleaved: true }, true],
    ['MQA 3/1, causal, dims 4 of 10', 3, 1, 10, { dims: 4 }, true],
  ] as const)('%s, against the float64 composition', (_name, heads, kvHeads, headDim, rope, causal) => {
    const w = weightsFor(heads, kvHeads, headDim, heads * 10 + headDim);
    const x = randomTensor(rng(71), [2, 11, embed]);
    const y = engine.multiHeadAttention(x, w, { heads, kvHeads, causal, rope });
    expect(y.dims).toEqual([2, 11, 12]);
    expect(maxError(y.data, composed(x, w, heads, kvHeads, rope, causal))).toBeLessThan(2e-5);
  });

  it('explicit positions shifted alike give the same layer', () => {
    const w = weightsFor(2, 1, 8, 72);
    const x = randomTensor(rng(73), [1, 9, embed]);
    const plain = engine.multiHeadAttention(x, w, { heads: 2, kvHeads: 1, causal: true, rope: {} });
    const shifted = engine.multiHeadAttention(x, w, { heads: 2, kvHeads: 1, causal: true, rope: { qPositions: range(500, 9), kPositions: range(500, 9) } });
    expect(maxError(shifted.data, plain.data)).toBeLessThan(1e-4);
  });

  it('decoding through a cache equals the full causal layer', () => {
    const w = weightsFor(4, 2, 6, 74);
    const x = randomTensor(rng(75), [1, 14, embed]);
    const rope = { interleaved: true, base: 100 };
    const full = engine.multiHeadAttention(x, w, { heads: 4, kvHeads: 2, causal: true, rope });
    expect(maxError(full.data, composed(x, w, 4, 2, rope, true))).toBeLessThan(2e-5);
    const cache = engine.kvCache({ batch: 1, kvHeads: 2, headDim: 6, maxSeq: 16 });
    const rowsOf = (from: number, to: number): Dense => ({ data: x.data.slice(from * embed, to * embed), dims: [1, to - from, embed] });
    const outputs = [engine.multiHeadAttention(rowsOf(0, 10), w, { heads: 4, kvHeads: 2, cache, rope })];
    for (let t = 10; t < 14; t++) outputs.push(engine.multiHeadAttention(rowsOf(t, t + 1), w, { heads: 4, kvHeads: 2, cache, rope }));
    const stepped = new Float32Array(full.data.length);
    let at = 0;
    for (const out of outputs) {
      stepped.set(out.data, at);
      at += out.data.length;
    }
    expect(maxError(stepped, full.data)).toBeLessThan(2e-5);
    cache.dispose();
  });

  it('a refused rope leaves the layer cache untouched', () => {
    const w = weightsFor(2, 2, 6, 76);
    const x = randomTensor(rng(77), [1, 3, embed]);
    const cache = engine.kvCache({ batch: 1, kvHeads: 2, headDim: 6, maxSeq: 8 });
    engine.multiHeadAttention(x, w, { heads: 2, cache, rope: {} });
    const probe = randomTensor(rng(78), [1, 2, 1, 6]);
    const layer = (rope: unknown) => () => engine.multiHeadAttention(x, w, { heads: 2, cache, rope } as never);
    refusedUntouched(cache, probe, layer({ dims: 5 }), 'INVALID_OPTION', 'options.rope.dims');
    refusedUntouched(cache, probe, layer({ dims: 12 }), 'INVALID_OPTION', 'options.rope.dims');
    refusedUntouched(cache, probe, layer({ qPositions: range(0, 3) }), 'INVALID_OPTION', 'options.rope.qPositions');
    refusedUntouched(cache, probe, layer({ kPositions: range(0, 3) }), 'INVALID_OPTION', 'options.rope.kPositions');
    refusedUntouched(cache, probe, layer({ offset: 3 }), 'INVALID_OPTION', 'options.rope.offset');
    expect(cache.lengths).toEqual([3]);
    refused(() => engine.multiHeadAttention(x, w, { heads: 2, rope: { qPositions: range(0, 4) } }), 'SHAPE_MISMATCH', 'options.rope.qPositions.dims');
    cache.dispose();
  });
});
