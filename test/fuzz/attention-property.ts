// The differential property behind `npm run fuzz` and its fixed-seed sample in `npm test`: a random
// attention call (shape, GQA, causal, window, scale, softcap, mask kind and broadcast shape) must give
// the float64 reference's result, within the stated tolerance, on the wasm build and on the js path.
// fast-check generates and shrinks; a failure prints a ready-to-paste regression test.
import fc from 'fast-check';
import type { BackendName } from '../../src/index.js';
import { referenceAttention } from '../../src/reference.js';
import { engineFor, maxAbs, maxError, randomTensor, rng, tolerance } from '../helpers.js';

export interface FuzzCase {
  batch: number;
  kvHeads: number;
  group: number;
  seqQ: number;
  seqKV: number;
  headDim: number;
  valueDim: number;
  causal: boolean;
  scale?: number;
  softcap?: number;
  window?: { left?: number; right?: number };
  /** none, or which dims of [B, Hq, Sq, Skv] the mask keeps (the others broadcast) */
  mask?: { kind: "bool" | "float"; keep: [boolean, boolean, boolean, boolean] };
  seed: number;
}

export const fuzzCase: fc.Arbitrary<FuzzCase> = fc.record({
  batch: fc.integer({ min: 1, max: 2 }),
  kvHeads: fc.integer({ min: 1, max: 3 }),
  group: fc.integer({ min: 1, max: 3 }),
  seqQ: fc.integer({ min: 1, max: 70 }),
  seqKV: fc.integer({ min: 0, max: 140 }),
  headDim: fc.integer({ min: 1, max: 70 }),
  valueDim: fc.integer({ min: 1, max: 40 }),
  causal: fc.boolean(),
  scale: fc.option(fc.double({ min: 0.01, max: 2, noNaN: true }), { nil: undefined }),
  softcap: fc.option(fc.double({ min: 0.5, max: 50, noNaN: true }), { nil: undefined }),
  window: fc.option(fc.record({ left: fc.option(fc.integer({ min: 0, max: 80 }), { nil: undefined }), right: fc.option(fc.integer({ min: 0, max: 80 }), { nil: undefined }) }), { nil: undefined }),
  mask: fc.option(fc.record({ kind: fc.constantFrom('bool' as const, 'float' as const), keep: fc.tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean()) }), { nil: undefined }),
  seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
});

/** The tensors and options of a case. */
export function fuzzInputs(c: FuzzCase) {
  const random = rng(c.seed);
  const qHeads = c.kvHeads * c.group;
  const q = randomTensor(random, [c.batch, qHeads, c.seqQ, c.headDim]);
  const k = randomTensor(random, [c.batch, c.kvHeads, c.seqKV, c.headDim]);
  const v = randomTensor(random, [c.batch, c.kvHeads, c.seqKV, c.valueDim]);
  let mask;
  if (c.mask) {
    const full = [c.batch, qHeads, c.seqQ, c.seqKV];
    const dims = full.map((d, i) => (c.mask!.keep[i] ? d : 1));
    const size = dims.reduce((a, b) => a * b, 1);
    mask = c.mask.kind === 'bool'
      ? { data: Uint8Array.from({ length: size }, () => (random() < 0.8 ? 1 : 0)), dims }
      : { data: Float32Array.from({ length: size }, () => (random() < 0.15 ? -Infinity : random() * 4 - 2)), dims };
  }
  return { q, k, v, options: { causal: c.causal, scale: c.scale, softcap: c.softcap, window: c.window, mask } };
}

/** Runs one case on `backend`; returns an error message, or undefined when it agrees with the reference. */
export function checkFuzzCase(backend: BackendName, c: FuzzCase): string | undefined {
  const { q, k, v, options } = fuzzInputs(c);
  const actual = engineFor(backend).attention(q, k, v, options);
  const expected = referenceAttention(q, k, v, options);
  const scale = c.scale ?? 1 / Math.sqrt(c.headDim);
  const bound = tolerance.attention(c.headDim, c.seqKV, c.softcap ?? scale * c.headDim) * Math.max(maxAbs(v.data), 1e-30);
  const err = maxError(actual.data, expected.data);
  if (!(err <= bound)) return `max error ${err} > ${bound}`;
  return undefined;
}

/** A failing case as a test to paste into test/fuzz/regressions.test.ts. */
export function asRegressionTest(backend: BackendName, c: FuzzCase): string {
  return `it('fuzz regression on ${backend}', () => expect(checkFuzzCase('${backend}', ${JSON.stringify(c)})).toBeUndefined());`;
}
