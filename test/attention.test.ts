// engine.attention on every backend against the float64 reference: shapes around the kernel tiles
// (4-row micro-tile, 32-row query blocks, 128-key blocks, 8-wide panels), odd head dims, GQA, causal,
// masks of each kind and broadcast shape, softcap, scale, scores around ±1e4, rows that see no key.
import { describe, expect, it } from 'vitest';
import { referenceAttention } from '../src/reference.js';
import { BACKENDS, EPS32, engineFor, maxAbs, maxError, randomTensor, rng, tolerance } from './helpers.js';
import type { TensorLike } from '../src/index.js';

interface Case {
  name: string;
  batch: number;
  qHeads: number;
  kvHeads: number;
  seqQ: number;
  seqKV: number;
  headDim: number;
  valueDim: number;
  causal?: boolean;
  scale?: number;
  softcap?: number;
  magnitude?: number;
  mask?: (random: () => number) => TensorLike;
}

function boolMask(dims: number[], keep = 0.7): (random: () => number) => TensorLike<Uint8Array> {
  return (random) => {
    const size = dims.reduce((a, b) => a * b, 1);
    return { data: Uint8Array.from({ length: size }, () => (random() < keep ? 1 : 0)), dims };
  };
}
function floatMask(dims: number[], withNegInf = false): (random: () => number) => TensorLike<Float32Array> {
  return (random) => {
    const t = randomTensor(random, dims, 3);
    if (withNegInf) for (let i = 0; i < t.data.length; i++) if (random() < 0.3) t.data[i] = -Infinity;
    return t;
  };
}

const cases: Case[] = [];
const base = { batch: 1, qHeads: 2, kvHeads: 2 };
for (const headDim of [1, 3, 17, 64, 80, 96, 100, 128, 256]) {
  cases.push({ name: `headDim ${headDim}`, ...base, seqQ: 33, seqKV: 65, headDim, valueDim: headDim });
}
// the row path below GEMM_MR rows (5 in the simd build, 6 in the relaxed one), whole and partial
// register tiles, and blocks of ATT_BR = 8·GEMM_MR rows (40, 48) on both sides of their edges
for (const seqQ of [1, 4, 5, 6, 7, 13, 39, 40, 41, 47, 48, 49, 97]) {
  for (const seqKV of [1, 7, 8, 63, 64, 65, 131]) {
    cases.push({ name: `Sq ${seqQ} Skv ${seqKV}`, ...base, seqQ, seqKV, headDim: 16, valueDim: 16 });
    cases.push({ name: `Sq ${seqQ} Skv ${seqKV} causal`, ...base, seqQ, seqKV, headDim: 8, valueDim: 12, causal: true });
  }
}
for (const [qHeads, kvHeads] of [[2, 1], [4, 2], [8, 2], [6, 6], [5, 1]]) {
  cases.push({ name: `GQA ${qHeads}/${kvHeads}`, batch: 2, qHeads, kvHeads, seqQ: 9, seqKV: 70, headDim: 32, valueDim: 24, causal: qHeads === 8 });
}
cases.push(
  { name: 'value dim differs (8 -> 10)', ...base, seqQ: 4, seqKV: 6, headDim: 8, valueDim: 10 },
  { name: 'value dim 1, head dim 5', ...base, seqQ: 13, seqKV: 77, headDim: 5, valueDim: 1 },
  { name: 'scale 0.01', ...base, seqQ: 20, seqKV: 40, headDim: 64, valueDim: 64, scale: 0.01 },
  { name: 'scale 3', ...base, seqQ: 20, seqKV: 40, headDim: 16, valueDim: 16, scale: 3 },
  { name: 'softcap 2', ...base, seqQ: 20, seqKV: 70, headDim: 64, valueDim: 64, softcap: 2, magnitude: 2 },
  { name: 'softcap 30 causal', ...base, seqQ: 70, seqKV: 70, headDim: 32, valueDim: 32, softcap: 30, causal: true },
  { name: 'causal Sq > Skv (top-left)', ...base, seqQ: 100, seqKV: 30, headDim: 16, valueDim: 16, causal: true },
  { name: 'causal Sq < Skv (top-left)', ...base, seqQ: 30, seqKV: 150, headDim: 16, valueDim: 16, causal: true },
  { name: 'bool mask [B,Hq,Sq,Skv]', batch: 2, qHeads: 2, kvHeads: 1, seqQ: 35, seqKV: 70, headDim: 16, valueDim: 16, mask: boolMask([2, 2, 35, 70]) },
  { name: 'bool mask [Sq,Skv] + causal', ...base, seqQ: 35, seqKV: 70, headDim: 16, valueDim: 16, causal: true, mask: boolMask([35, 70]) },
  { name: 'bool mask [Skv] (padding)', batch: 1, qHeads: 3, kvHeads: 3, seqQ: 10, seqKV: 67, headDim: 8, valueDim: 8, mask: boolMask([67]) },
  { name: 'bool mask [B,1,1,Skv]', batch: 3, qHeads: 2, kvHeads: 2, seqQ: 10, seqKV: 67, headDim: 8, valueDim: 8, mask: boolMask([3, 1, 1, 67]) },
  { name: 'bool mask [Sq,1] (last dim broadcast)', ...base, seqQ: 12, seqKV: 20, headDim: 8, valueDim: 8, mask: boolMask([12, 1], 0.5) },
  { name: 'bool mask mostly off', ...base, seqQ: 40, seqKV: 130, headDim: 8, valueDim: 8, mask: boolMask([40, 130], 0.05) },
  { name: 'float mask [B,Hq,Sq,Skv]', batch: 2, qHeads: 2, kvHeads: 2, seqQ: 33, seqKV: 65, headDim: 16, valueDim: 16, mask: floatMask([2, 2, 33, 65]) },
  { name: 'float mask [1,Hq,1,Skv] with -inf', batch: 2, qHeads: 2, kvHeads: 2, seqQ: 33, seqKV: 65, headDim: 16, valueDim: 16, mask: floatMask([1, 2, 1, 65], true) },
  { name: 'float mask [Sq,Skv] with -inf, causal, softcap', ...base, seqQ: 33, seqKV: 65, headDim: 16, valueDim: 16, causal: true, softcap: 5, mask: floatMask([33, 65], true) },
  { name: 'float mask [Sq,1]', ...base, seqQ: 9, seqKV: 14, headDim: 8, valueDim: 8, mask: floatMask([9, 1]) },
);

function runCase(backend: (typeof BACKENDS)[number], c: Case, seed: number): void {
  const random = rng(seed);
  const magnitude = c.magnitude ?? 1;
  const q = randomTensor(random, [c.batch, c.qHeads, c.seqQ, c.headDim], magnitude);
  const k = randomTensor(random, [c.batch, c.kvHeads, c.seqKV, c.headDim], magnitude);
  const v = randomTensor(random, [c.batch, c.kvHeads, c.seqKV, c.valueDim]);
  const mask = c.mask?.(random);
  const options = { causal: c.causal, scale: c.scale, softcap: c.softcap, mask };
  const actual = engineFor(backend).attention(q, k, v, options);
  const expected = referenceAttention(q, k, v, options);
  expect(actual.dims).toEqual(expected.dims);
  const scale = c.scale ?? 1 / Math.sqrt(c.headDim);
  const maxScore = c.softcap ?? scale * c.headDim * magnitude * magnitude;
  const err = maxError(actual.data, expected.data);
  expect(err).toBeLessThanOrEqual(tolerance.attention(c.headDim, c.seqKV, maxScore) * maxAbs(v.data));
}

/**
 * q [1, 2, 17, 16] and k [1, 1, 150, 16] whose scores are about ±9600 (the sign alternates by query
 * row) and differ by a few units between keys: q entries in [1, 2], k entries 400 ± 1, integers or not.
 */
function largeScoreInputs(integer: boolean) {
  const random = rng(integer ? 51 : 52);
  const draw = (lo: number, hi: number) => (integer ? lo + Math.floor(random() * (hi - lo + 1)) : lo + random() * (hi - lo));
  const q = { data: new Float32Array(2 * 17 * 16), dims: [1, 2, 17, 16] };
  const k = { data: new Float32Array(150 * 16), dims: [1, 1, 150, 16] };
  for (let i = 0; i < q.data.length; i++) q.data[i] = (Math.floor(i / 16) % 2 === 0 ? 1 : -1) * draw(1, 2);
  for (let i = 0; i < k.data.length; i++) k.data[i] = 400 + draw(-1, 1);
  const v = randomTensor(random, [1, 1, 150, 16]);
  // what the rounding of a score scales with: max over rows and keys of scale·Σ_d |q_d k_d| (scale 1)
  let magnitude = 0;
  for (let i = 0; i < 2 * 17; i++) {
    for (let j = 0; j < 150; j++) {
      let sum = 0;
      for (let d = 0; d < 16; d++) sum += Math.abs(q.data[i * 16 + d] * k.data[j * 16 + d]);
      magnitude = Math.max(magnitude, sum);
    }
  }
  return { q, k, v, magnitude };
}

describe.each(BACKENDS)('attention on %s', (backend) => {
  it.each(cases.map((c, i) => [c.name, c, i] as const))('%s', (_name, c, i) => runCase(backend, c, 1000 + i));

  // Scores of magnitude ~1e4 a few units apart, so each row spreads its weight over several keys.
  // (This case used random inputs of magnitude 50: scores thousands apart, a one-hot result that any
  // kernel finding the best key gets right, checked at 0.08·max|v| from the a-priori score bound
  // headDim·50² = 4e4.)
  // Integer q and k: every product and partial sum is an integer below 2^24, so each score is exact in
  // float32 in any order of summation, fused or not, and scale 1 is exact. What depends on the magnitude
  // S = max|score| is then a rounding of the score itself when a kernel scales it (by log2 e, say) and
  // of the max the same way: each at most S·2^-24 (≈ 6e-4 at 1e4), so each exponent is off by at most
  // δ = 2·S·2^-24 = S·EPS32. A numerator off by e^±δ and a normaliser off by e^±δ move each weight by
  // at most p·(e^{2δ} - 1), and the output by (e^{2δ} - 1)·max|v|; the exp, the sum and P·V add the
  // usual tolerance.attention(headDim, seqKV, 0)·max|v|. At 1e4: 2.4e-3·max|v|, not 0.08.
  it('scores ~±1e4 exact in float32, a few units apart: within two roundings of a score', () => {
    const { q, k, v, magnitude } = largeScoreInputs(true);
    const y = engineFor(backend).attention(q, k, v, { scale: 1 });
    const r = referenceAttention(q, k, v, { scale: 1 });
    expect(Math.max(...r.weights)).toBeLessThan(0.99); // not one-hot
    const bound = (tolerance.attention(16, 150, 0) + Math.expm1(2 * magnitude * EPS32)) * maxAbs(v.data);
    expect(maxError(y.data, r.data)).toBeLessThanOrEqual(bound);
  });

  // Non-integer inputs: now the float32 dot product rounds too, by up to about (headDim + 1)·2^-24·S;
  // the stated tolerance, with S the magnitude the scores have (not the a-priori headDim·magnitude²).
  it('scores ~±1e4 from non-integer inputs, a few units apart: within the stated tolerance', () => {
    const { q, k, v, magnitude } = largeScoreInputs(false);
    const y = engineFor(backend).attention(q, k, v, { scale: 1 });
    const r = referenceAttention(q, k, v, { scale: 1 });
    expect(Math.max(...r.weights)).toBeLessThan(0.99);
    expect(maxError(y.data, r.data)).toBeLessThanOrEqual(tolerance.attention(16, 150, magnitude) * maxAbs(v.data));
  });

  it('returns zeros, not NaN, for rows that see no key', () => {
    const random = rng(7);
    const q = randomTensor(random, [1, 2, 5, 8]);
    const k = randomTensor(random, [1, 2, 70, 8]);
    const v = randomTensor(random, [1, 2, 70, 8]);
    const bool = { data: new Uint8Array(5 * 70).fill(1), dims: [5, 70] };
    bool.data.fill(0, 70, 140); // row 1 sees nothing
    const float = { data: new Float32Array(5 * 70), dims: [5, 70] };
    float.data.fill(-Infinity, 3 * 70, 4 * 70); // row 3 sees nothing
    for (const mask of [bool, float]) {
      const y = engineFor(backend).attention(q, k, v, { mask });
      const r = referenceAttention(q, k, v, { mask });
      expect(y.data.every(Number.isFinite)).toBe(true);
      expect(maxError(y.data, r.data)).toBeLessThan(1e-5);
      const row = mask === bool ? 1 : 3;
      for (let h = 0; h < 2; h++) expect(Array.from(y.data.subarray((h * 5 + row) * 8, (h * 5 + row + 1) * 8))).toEqual(new Array(8).fill(0));
    }
  });

  it('writes into options.out without allocating a result', () => {
    const random = rng(8);
    const q = randomTensor(random, [1, 2, 6, 8]);
    const k = randomTensor(random, [1, 1, 6, 8]);
    const v = randomTensor(random, [1, 1, 6, 8]);
    const out = new Float32Array(2 * 6 * 8);
    const y = engineFor(backend).attention(q, k, v, { causal: true, out });
    expect(y.data).toBe(out);
    expect(maxError(out, referenceAttention(q, k, v, { causal: true }).data)).toBeLessThan(1e-5);
  });

  it('handles zero-size dims with an empty or zero result', () => {
    const e = engineFor(backend);
    const empty = (dims: number[]) => ({ data: new Float32Array(dims.reduce((a, b) => a * b, 1)), dims });
    expect(e.attention(empty([1, 2, 0, 8]), empty([1, 2, 5, 8]), empty([1, 2, 5, 4])).dims).toEqual([1, 2, 0, 4]);
    const y = e.attention(randomTensor(rng(1), [1, 1, 3, 8]), empty([1, 1, 0, 8]), empty([1, 1, 0, 4]));
    expect(Array.from(y.data)).toEqual(new Array(12).fill(0));
  });

  it('gives identical bits on repeated calls', () => {
    const random = rng(9);
    const q = randomTensor(random, [1, 4, 50, 64]);
    const k = randomTensor(random, [1, 2, 90, 64]);
    const v = randomTensor(random, [1, 2, 90, 64]);
    const a = engineFor(backend).attention(q, k, v, { causal: true }).data;
    const b = engineFor(backend).attention(q, k, v, { causal: true }).data;
    expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer))).toBe(true);
  });
});

describe.each(BACKENDS.filter((b) => b !== 'js'))('%s and js agree', (wasm) => {
  it('within float32 rounding on a GQA causal masked call', () => {
    const random = rng(11);
    const q = randomTensor(random, [2, 4, 40, 64]);
    const k = randomTensor(random, [2, 2, 100, 64]);
    const v = randomTensor(random, [2, 2, 100, 64]);
    const mask = floatMask([40, 100], true)(random);
    const a = engineFor(wasm).attention(q, k, v, { causal: true, mask });
    const b = engineFor('js').attention(q, k, v, { causal: true, mask });
    expect(maxError(a.data, b.data)).toBeLessThan(2 * tolerance.attention(64, 100, 8));
  });
});
