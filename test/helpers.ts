// Shared test helpers: a seeded generator, tensor makers, the backends under test, and the one
// place where tolerances are stated.
import { expect } from 'vitest';
import { AttentionError, createEngineSync, type BackendName, type Engine } from '../src/index.js';

/** Backends this test process checks (set per vitest project, see vitest.config.ts). */
export const BACKENDS = (process.env.TEST_BACKENDS ?? 'wasm-simd,js').split(',') as BackendName[];

const engines = new Map<BackendName, Engine>();
/** One engine per backend, shared by the tests of a file. */
export function engineFor(backend: BackendName): Engine {
  let engine = engines.get(backend);
  if (!engine) {
    engine = createEngineSync({ backend });
    engines.set(backend, engine);
  }
  return engine;
}

/** mulberry32: small, fast, seeded. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomTensor(random: () => number, dims: number[], magnitude = 1): { data: Float32Array; dims: number[] } {
  const size = dims.reduce((a, b) => a * b, 1);
  const data = new Float32Array(size);
  for (let i = 0; i < size; i++) data[i] = (random() * 2 - 1) * magnitude;
  return { data, dims };
}

export const EPS32 = 2 ** -23;

/**
 * THE tolerances. Every comparison against the float64 reference goes through `expectClose` with
 * a bound of the form  |actual - expected| <= tol * magnitude, where tol grows with the reduction
 * length n as c·eps32·sqrt(n+1) (float32 summation error of random-sign terms; c = 4 for attention,
 * 16 for the rest, margin over what we measure) and magnitude is what the error scales with: max|v|
 * for attention (times the score magnitude, since a score error e changes a probability by a factor
 * e^e), max|a|·max|b|·sqrt(K) for matmul, 1 for softmax (plus the scaled input magnitude).
 */
export const tolerance = {
  reduction: (n: number): number => 16 * EPS32 * Math.sqrt(n + 1),
  attention: (headDim: number, seqKV: number, maxScore: number): number =>
    4 * EPS32 * (Math.sqrt(headDim + 1) * (1 + maxScore) + Math.sqrt(seqKV + 1)),
  softmax: (cols: number, maxScaled: number): number => 16 * EPS32 * (Math.sqrt(cols + 1) + maxScaled),
  /**
   * RoPE, per element: cos and sin rounded to float32 (2^-24 each), two products and a sum, so
   * |error| <= ~3·2^-24·(|x1| + |x2|) <= 3·EPS32·max|x|; 4·EPS32·max|x| whatever the position.
   */
  rotary: (maxInput: number): number => 4 * EPS32 * maxInput,
  /**
   * An analytic float64 gradient against central finite differences (step 1e-5) of the float64
   * forward, relative to the largest gradient: the differences' truncation error is O(step²) and their
   * rounding about 1e-16 / step, both far below it (at most 6.4e-10 measured on the backward's cases).
   */
  finiteDifference: 1e-6,
  /**
   * Scores over float16 and int8 pages, against the reference over the same quantized keys (before
   * the scale): the int8 kernel rounds each q row to 14 bits (half a step of absmax/8191 at most per
   * element; past head dim 1032 the step is absmax/floor((2^31-1) / (254·headDim)), the kernel's
   * queryQuantMax, so that its int32 sums stay exact), and with RoPE a key the pool rotated in
   * float32 may round to the level next to the one the reference's float64 rotation gives (one step:
   * 2^-10·max|k| for float16, max|k|/127 for int8), counted twice per key. A score error e moves an output by up to about
   * 2e·max|v|; callers add 2.5x this (times max|v|) to the attention tolerance.
   */
  quantizedScore: (dtype: 'float32' | 'float16' | 'int8', headDim: number, maxQ: number, maxK: number, rope: boolean): number => {
    if (dtype === 'float32') return 0;
    const levels = Math.min(8191, Math.floor((2 ** 31 - 1) / (254 * Math.max(headDim, 1))));
    const query = dtype === 'int8' ? (headDim * maxQ * maxK) / (2 * levels) : 0;
    const step = dtype === 'int8' ? maxK / 127 : maxK * 2 ** -10;
    return query + (rope ? 2 * maxQ * step : 0);
  },
  /**
   * int8 pages, P·V: each row's weights p·(value scale) are rounded to 15 bits of their block's largest
   * (half a step, 1/65534 of it, at most per weight, independent from key to key), so an output moves by
   * about sqrt(keys/12)/32767 of max|v|; six times that. Callers multiply by max|v|.
   */
  quantizedWeights: (dtype: 'float32' | 'float16' | 'int8', seqKV: number): number => (dtype === 'int8' ? (6 * Math.sqrt((seqKV + 1) / 12)) / 32767 : 0),
  /**
   * Attention over float16 or int8 keys and values against the same attention over the float32 rows
   * they were made from (a quantized KV cache against a float32 one fed the same rows), per output
   * element in units of max|v|. Storing moves an element by half a step at most: 2^-11·max|x| for
   * float16 (for max|x| >= 2^-14), max|x|/254 for int8. A score so moves by |scale|·headDim·max|q|·that
   * for the keys, plus quantizedScore's query rounding, and (as there) an output by 2.5·2 times the
   * score error times max|v|; the values' half step moves an output, a convex combination of values,
   * by that half step at most.
   */
  quantizedHistory: (dtype: 'float16' | 'int8', headDim: number, scale: number, maxQ: number, maxK: number): number => {
    const half = dtype === 'int8' ? 1 / 254 : 2 ** -11;
    const score = Math.abs(scale) * (headDim * maxQ * maxK * half + tolerance.quantizedScore(dtype, headDim, maxQ, maxK, false));
    return 5 * score + half;
  },
  /**
   * Attention's backward (dq, dk, dv) against the float64 reference, relative to the largest gradient
   * of each tensor: the forward's error sources (scores over headDim, weights over seqKV, both growing
   * with the score magnitude) plus dOut·v over valueDim and the sums of dk and dv over every query row
   * that reads a key (seqQ times the group). 4·eps32 per source, as for the forward; measured at most
   * 4.4e-7 on the named cases of attention-backward.test.ts (every build), 20x and more below this.
   */
  attentionBackward: (headDim: number, valueDim: number, rowsPerKey: number, seqKV: number, maxScore: number): number =>
    4 * EPS32 * (Math.sqrt(headDim + 1) * (1 + maxScore) + Math.sqrt(valueDim + 1) + Math.sqrt(seqKV + 1) + Math.sqrt(rowsPerKey + 1)),
  /** ONNX's own: |a - e| <= atol + rtol*|e|. */
  onnx: { rtol: 1e-3, atol: 1e-7 },
};

export function maxAbs(data: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < data.length; i++) m = Math.max(m, Math.abs(data[i]));
  return m;
}

/** Largest |actual - expected| (NaN where one is NaN and the other is not). */
export function maxError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} vs expected ${expected.length}`);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(a) || Number.isNaN(e)) {
      if (Number.isNaN(a) !== Number.isNaN(e)) return NaN;
      continue;
    }
    worst = Math.max(worst, a === e ? 0 : Math.abs(a - e));
  }
  return worst;
}

/** max |actual - expected| / max |expected| (the difference itself when expected is all zeros). */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    diff = Math.max(diff, Math.abs(actual[i] - expected[i]));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

/** Expects `call` to throw an AttentionError with this code and argument (and message, when given). */
export function refused(call: () => unknown, code: string, argument?: string, message?: RegExp): void {
  let error: unknown;
  try {
    call();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(AttentionError);
  expect((error as AttentionError).code).toBe(code);
  expect((error as AttentionError).argument).toBe(argument);
  if (message) expect((error as AttentionError).message).toMatch(message);
}
