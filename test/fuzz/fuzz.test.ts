// Differential fuzzing of attention: wasm and js against the float64 reference (attention-property.ts).
// npm test runs a fixed-seed sample; `npm run fuzz` runs many more with a fresh seed:
//   npm run fuzz                      5000 cases per backend, fresh seed
//   FUZZ_RUNS=20000 FUZZ_SEED=123 npm run fuzz
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createEngineSync } from '../../src/index.js';
import { BACKENDS } from '../helpers.js';
import { asRegressionTest, checkFuzzCase, fuzzCase, fuzzInputs } from './attention-property.js';

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

describe('thread pool under fuzzing', () => {
  it('gives the same bits on 1 thread, on 3 (sync, pool forced for every size) and async', async () => {
    const one = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const three = createEngineSync({ backend: 'wasm-simd', threads: 3 });
    (three as unknown as { runtime: { pool: { minParallelFlops: number } } }).runtime.pool.minParallelFlops = 0;
    const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    await fc.assert(
      fc.asyncProperty(fuzzCase, async (c) => {
        const { q, k, v, options } = fuzzInputs(c);
        const expected = bits(one.attention(q, k, v, options).data);
        return bits(three.attention(q, k, v, options).data).equals(expected) && bits((await three.attentionAsync(q, k, v, options)).data).equals(expected);
      }),
      { numRuns: Math.min(runs, 300), seed },
    );
    one.dispose();
    three.dispose();
  }, 600_000);
});
