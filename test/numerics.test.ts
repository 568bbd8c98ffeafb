// Range: both backends agree with the float64 reference wherever float32 can hold the answer, at
// the edges a review and an adversarial run probed: a q whose scaled value overflows float32 while
// its scores do not, softcaps up to 1e10, scores past 1e10, values near float32's largest.
import { describe, expect, it } from 'vitest';
import { referenceAttention } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, rng } from './helpers.js';

describe.each(BACKENDS)('numerics at the edges of float32 on %s', (backend) => {
  const e = engineFor(backend);
  const random = rng(31);

  it('q = 4e37 with scale 10: scale·q overflows, the scores do not', () => {
    const q = randomTensor(random, [1, 1, 5, 8], 4e37);
    const k = randomTensor(random, [1, 1, 6, 8], 0.1 / 8);
    const v = randomTensor(random, [1, 1, 6, 8]);
    const expected = referenceAttention(q, k, v, { scale: 10 }).data;
    const actual = e.attention(q, k, v, { scale: 10 }).data;
    expect(actual.every(Number.isFinite)).toBe(true);
    expect(maxError(actual, expected)).toBeLessThan(1e-5);
  });

  it('softcap 1e4 and 1e10 keep the scores (c·tanh(s/c) ~ s for s << c)', () => {
    const q = randomTensor(random, [1, 2, 7, 16], 2);
    const k = randomTensor(random, [1, 2, 9, 16], 2);
    const v = randomTensor(random, [1, 2, 9, 16]);
    for (const softcap of [1e4, 1e10]) {
      const expected = referenceAttention(q, k, v, { softcap }).data;
      expect(maxError(e.attention(q, k, v, { softcap }).data, expected), `softcap ${softcap}`).toBeLessThan(1e-5);
    }
  });

  it('scores around 1e11 give the reference, not NaN', () => {
    // one dominant key per row, scores about ±1e11 apart: the softmax is one-hot
    const q = { data: new Float32Array([1e6, 0, 0, 1e6]), dims: [1, 1, 2, 2] };
    const k = { data: new Float32Array([1e6, 0, 0, 1e6, -1e6, 0]), dims: [1, 1, 3, 2] };
    const v = randomTensor(random, [1, 1, 3, 4]);
    const expected = referenceAttention(q, k, v, { scale: 0.1 }).data;
    const actual = e.attention(q, k, v, { scale: 0.1 }).data;
    expect(actual.every(Number.isFinite)).toBe(true);
    expect(maxError(actual, expected)).toBeLessThan(1e-6 * maxAbs(v.data));
  });

  it('v filled with 1e38 stays finite and right', () => {
    const q = randomTensor(random, [1, 1, 4, 8]);
    const k = randomTensor(random, [1, 1, 300, 8]);
    const v = { data: new Float32Array(300 * 8).fill(1e38), dims: [1, 1, 300, 8] };
    const actual = e.attention(q, k, v).data;
    expect(actual.every(Number.isFinite)).toBe(true);
    expect(maxError(actual, referenceAttention(q, k, v).data)).toBeLessThan(1e38 * 1e-5);
  });
});
