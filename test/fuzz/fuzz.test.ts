// Differential fuzzing of attention: wasm and js against the float64 reference (attention-property.ts).
// npm test runs a fixed-seed sample; `npm run fuzz` runs many more with a fresh seed:
//   npm run fuzz                      5000 cases per backend, fresh seed
//   FUZZ_RUNS=20000 FUZZ_SEED=123 npm run fuzz
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BACKENDS } from '../helpers.js';
import { asRegressionTest, checkFuzzCase, fuzzCase } from './attention-property.js';

const runs = Number(process.env.FUZZ_RUNS ?? 2000);
// npm test: a fixed seed; npm run fuzz: a fresh one each run (printed), unless FUZZ_SEED says which
const seed = Number(process.env.FUZZ_SEED ?? (process.env.FUZZ_FRESH_SEED ? Date.now() % 2 ** 31 : 20261126));

describe.each(BACKENDS)('differential fuzzing on %s', (backend) => {
  it(`agrees with the float64 reference on ${runs} random calls (seed ${seed})`, () => {
    const result = fc.check(fc.property(fuzzCase, (c) => checkFuzzCase(backend, c) === undefined), { numRuns: runs, seed });
    if (result.failed) {
      const c = result.counterexample![0];
      console.log(`shrunk failing case (${checkFuzzCase(backend, c)}); paste into test/fuzz/regressions.test.ts:\n${asRegressionTest(backend, c)}`);
    }
    console.log(`fuzz ${backend}: ${result.numRuns} cases tried, ${result.failed ? 1 : 0} failures, seed ${seed}`);
    expect(result.failed).toBe(false);
  }, 600_000);
});
