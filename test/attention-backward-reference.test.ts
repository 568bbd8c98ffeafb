// The float64 attention backward (referenceAttentionBackward, the oracle for every fast backward path)
// against central finite differences of the float64 forward: every element of q, k and v nudged by
// ±1e-5, the change of sum(dOut ∘ out) over twice the step, compared with dq, dk and dv. Cases: GQA,
// Sq != Skv, causal with an offset, windows, bool and additive masks (a fully masked row: zero
// gradient, never NaN), softcap, RoPE (half-split and interleaved, part of the head), odd head dims and
// Dv != Dk; then a seeded run of random cases mixing them.
import { describe, expect, it } from 'vitest';
import { type ReferenceAttentionOptions, referenceAttention, referenceAttentionBackward } from '../src/reference.js';
import { relativeError, rng, tolerance } from './helpers.js';

type Numbers = { data: Float64Array; dims: number[] };

const STEP = 1e-5;

function tensor(random: () => number, dims: number[]): Numbers {
  return { data: Float64Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => random() * 2 - 1), dims };
}

/** Central differences of sum(dOut ∘ attention) with respect to every element of `x` (one of q, k, v). */
function numericGradient(x: Numbers, loss: () => number): Float64Array {
  const grad = new Float64Array(x.data.length);
  for (let i = 0; i < x.data.length; i++) {
    const keep = x.data[i];
    x.data[i] = keep + STEP;
    const up = loss();
    x.data[i] = keep - STEP;
    const down = loss();
    x.data[i] = keep;
    grad[i] = (up - down) / (2 * STEP);
  }
  return grad;
}

interface Case {
  batch?: number;
  qHeads: number;
  kvHeads: number;
  seqQ: number;
  seqKV: number;
  headDim: number;
  valueDim?: number;
  options?: ReferenceAttentionOptions;
}

function check(c: Case, seed: number): void {
  const random = rng(seed);
  const B = c.batch ?? 1;
  const Dv = c.valueDim ?? c.headDim;
  const q = tensor(random, [B, c.qHeads, c.seqQ, c.headDim]);
  const k = tensor(random, [B, c.kvHeads, c.seqKV, c.headDim]);
  const v = tensor(random, [B, c.kvHeads, c.seqKV, Dv]);
  const dOut = tensor(random, [B, c.qHeads, c.seqQ, Dv]);
  const options = c.options ?? {};
  const loss = (): number => {
    const out = referenceAttention(q, k, v, options).data;
    let sum = 0;
    for (let i = 0; i < out.length; i++) sum += out[i] * dOut.data[i];
    return sum;
  };
  const grads = referenceAttentionBackward(q, k, v, dOut, options);
  expect(grads.dq.dims).toEqual(q.dims);
  expect(grads.dk.dims).toEqual(k.dims);
  expect(grads.dv.dims).toEqual(v.dims);
  for (const [name, x, analytic] of [['dq', q, grads.dq.data], ['dk', k, grads.dk.data], ['dv', v, grads.dv.data]] as const) {
    for (const g of analytic) expect(Number.isFinite(g), `${name} holds ${g}`).toBe(true);
    expect(relativeError(analytic, numericGradient(x, loss)), name).toBeLessThanOrEqual(tolerance.finiteDifference);
  }
}

describe('referenceAttentionBackward against finite differences of referenceAttention', () => {
  it('plain: B2 H2 Sq3 Skv4 D5 Dv3', () => check({ batch: 2, qHeads: 2, kvHeads: 2, seqQ: 3, seqKV: 4, headDim: 5, valueDim: 3 }, 1));
  it('GQA (4 q heads on 2 kv heads), causal with the cache offset Skv - Sq', () => check({ qHeads: 4, kvHeads: 2, seqQ: 3, seqKV: 6, headDim: 4, options: { causal: true, offset: 3 } }, 2));
  it('a sliding window (left 1, right 1) and a scale', () => check({ qHeads: 2, kvHeads: 1, seqQ: 5, seqKV: 5, headDim: 3, options: { window: { left: 1, right: 1 }, scale: 0.7 } }, 3));
  it('softcap 2 on large scores (tanh saturating)', () => check({ qHeads: 1, kvHeads: 1, seqQ: 3, seqKV: 4, headDim: 6, options: { softcap: 2, scale: 3 } }, 4));
  it('an additive mask broadcast over heads', () => {
    const random = rng(50);
    const mask = tensor(random, [1, 1, 3, 4]);
    check({ qHeads: 2, kvHeads: 2, seqQ: 3, seqKV: 4, headDim: 2, options: { mask } }, 5);
  });
  it('a bool mask that hides every key of one row: that row gives zero gradient, never NaN', () => {
    const mask = { data: Uint8Array.from([1, 0, 1, 0, 0, 0, 0, 1, 1, 1]), dims: [1, 1, 2, 5] };
    check({ qHeads: 1, kvHeads: 1, seqQ: 2, seqKV: 5, headDim: 3, options: { mask } }, 6);
    // row 1 sees only key 4: it still gets a gradient; a causal row 0 with offset -1 sees nothing
    const random = rng(7);
    const q = tensor(random, [1, 1, 2, 3]);
    const k = tensor(random, [1, 1, 2, 3]);
    const v = tensor(random, [1, 1, 2, 3]);
    const dOut = tensor(random, [1, 1, 2, 3]);
    const grads = referenceAttentionBackward(q, k, v, dOut, { causal: true, offset: -1 });
    expect([...grads.dq.data.subarray(0, 3)]).toEqual([0, 0, 0]);
    for (const x of [...grads.dq.data, ...grads.dk.data, ...grads.dv.data]) expect(Number.isNaN(x)).toBe(false);
  });
  it('RoPE on part of the head, half-split, with given positions', () => check({
    qHeads: 2, kvHeads: 1, seqQ: 2, seqKV: 3, headDim: 6,
    options: { causal: true, offset: 1, rope: { dims: 4, base: 100, qPositions: { data: [5, 9], dims: [2] }, kPositions: { data: [0, 3, 7], dims: [3] } } },
  }, 8));
  it('RoPE interleaved over the whole head, default positions', () => check({ qHeads: 1, kvHeads: 1, seqQ: 3, seqKV: 3, headDim: 4, options: { rope: { interleaved: true } } }, 9));
  it.each([1, 17])('head dim %i, value dim 2', (headDim) => check({ qHeads: 2, kvHeads: 1, seqQ: 2, seqKV: 3, headDim, valueDim: 2 }, 10 + headDim));
  it('random cases (seeded): shapes, GQA, causal, windows, masks, softcap, rope', () => {
    const random = rng(2026);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
    for (let n = 0; n < 24; n++) {
      const kvHeads = pick([1, 2]);
      const qHeads = kvHeads * pick([1, 2, 3]);
      const seqQ = pick([1, 2, 3, 4]);
      const seqKV = pick([1, 3, 5]);
      const headDim = pick([1, 2, 3, 4, 6]);
      const options: ReferenceAttentionOptions = {};
      if (random() < 0.4) Object.assign(options, { causal: true, offset: seqKV - seqQ });
      if (random() < 0.3) options.window = { left: pick([0, 1, 2]), right: pick([0, 1]) };
      if (random() < 0.3) options.softcap = pick([0.5, 3]);
      if (random() < 0.3) options.mask = tensor(random, [1, 1, seqQ, seqKV]);
      if (random() < 0.3 && headDim % 2 === 0) options.rope = { dims: headDim, interleaved: random() < 0.5 };
      check({ batch: pick([1, 2]), qHeads, kvHeads, seqQ, seqKV, headDim, valueDim: pick([1, 2, headDim]), options }, 3000 + n);
    }
  });
});
