// engine.softmax on every backend against the float64 reference: row lengths around the 4-lane
// vectors, scale, masks of both kinds and broadcast shapes, causal, fully masked rows, big inputs.
import { describe, expect, it } from 'vitest';
import { referenceSoftmax, referenceSoftmaxBackward } from '../src/reference.js';
import { BACKENDS, EPS32, engineFor, maxAbs, maxError, randomTensor, refused, rng, tolerance } from './helpers.js';

describe.each(BACKENDS)('softmax on %s', (backend) => {
  const cases: Array<[string, number[], { scale?: number; causal?: boolean; mask?: 'bool' | 'float'; maskDims?: number[]; magnitude?: number }]> = [];
  for (const cols of [1, 2, 3, 4, 5, 8, 15, 64, 65, 1000]) cases.push([`cols ${cols}`, [3, cols], {}]);
  cases.push(
    ['rank 1', [37], {}],
    ['rank 4, scale 0.125', [2, 3, 5, 40], { scale: 0.125 }],
    ['causal', [2, 9, 9], { causal: true }],
    ['causal, more cols than rows', [7, 20], { causal: true }],
    ['bool mask broadcast [cols]', [2, 6, 33], { mask: 'bool', maskDims: [33] }],
    ['bool mask [rows, 1]', [4, 6, 10], { mask: 'bool', maskDims: [6, 1] }],
    ['float mask [2, 1, 6, 33] with causal', [2, 3, 6, 33], { mask: 'float', maskDims: [2, 1, 6, 33], causal: true }],
  );
  it.each(cases)('%s', (_name, dims, o) => {
    const random = rng(dims.reduce((a, b) => a * 31 + b, 5));
    const x = randomTensor(random, dims, o.magnitude ?? 4);
    let mask;
    if (o.mask === 'bool') mask = { data: Uint8Array.from({ length: o.maskDims!.reduce((a, b) => a * b, 1) }, () => (random() < 0.6 ? 1 : 0)), dims: o.maskDims! };
    if (o.mask === 'float') {
      mask = randomTensor(random, o.maskDims!, 2);
      mask.data[0] = -Infinity;
    }
    const options = { scale: o.scale, causal: o.causal, mask };
    const actual = engineFor(backend).softmax(x, options);
    const expected = referenceSoftmax(x, options);
    expect(actual.dims).toEqual(dims);
    expect(actual.data.every(Number.isFinite)).toBe(true);
    const cols = dims[dims.length - 1];
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(tolerance.softmax(cols, maxAbs(x.data) * (o.scale ?? 1)));
  });

  // Inputs of magnitude 1e4 that differ by a few units within a row, so every row spreads its weight
  // over several columns (with a wide spread the result is one-hot and any bug that finds the max
  // passes). The bound follows from float32 rounding: the scaled input s = scale·x is rounded once,
  // an error of at most S·2^-24 (S = max|s|, 1e4·2^-24 ≈ 6e-4 at 1e4); we allow one more rounding of
  // that size (a kernel may also scale by log2 e, or round the max the same way), so each exponent is
  // off by at most δ = 2·S·2^-24 = S·EPS32. Subtracting the row max is exact for every term that
  // matters (Sterbenz: within a factor 2 of the max once S > 208; farther terms underflow to 0).
  // A numerator off by a factor e^±δ and a sum off by another e^±δ move each weight by at most
  // p·(e^{2δ} - 1) <= e^{2δ} - 1; the exp and the sum themselves add the usual tolerance.softmax(cols, 0).
  // At 1e4 that is 2.4e-3; it was 16·EPS32·1e4 = 0.019 here, which passed 1% errors in every weight.
  it.each([
    ['scale 1', 1],
    ['scale 0.7 (the scaling rounds)', 0.7],
  ] as const)('inputs around ±1e4, a few units apart, %s', (_name, scale) => {
    const random = rng(17);
    const rows = 6;
    const cols = 50;
    const x = { data: new Float32Array(rows * cols), dims: [rows, cols] };
    for (let r = 0; r < rows; r++) {
      const center = [1e4, -1e4, 9999.5, -7777, 1e4, -1e4][r];
      for (let j = 0; j < cols; j++) x.data[r * cols + j] = center + (random() * 12 - 6);
    }
    x.data[4 * cols + 7] = 1e4 + 300; // row 4: one column far above the rest (one-hot)
    const actual = engineFor(backend).softmax(x, { scale });
    const expected = referenceSoftmax(x, { scale });
    expect(actual.data.every(Number.isFinite)).toBe(true);
    const S = maxAbs(x.data) * scale;
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(tolerance.softmax(cols, 0) + Math.expm1(2 * S * EPS32));
  });

  it('gives zeros for a fully masked row', () => {
    const x = randomTensor(rng(3), [3, 8]);
    const mask = { data: Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), dims: [3, 8] };
    const y = engineFor(backend).softmax(x, { mask });
    expect(Array.from(y.data.subarray(8, 16))).toEqual(new Array(8).fill(0));
    expect(y.data[16]).toBe(1);
    expect(Math.abs(y.data.subarray(0, 8).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-6);
  });
});

describe.each(BACKENDS)('softmaxBackward on %s', (backend) => {
  it('matches the float64 reference and central differences of the float64 softmax, with scale, mask and causal rows', () => {
    const engine = engineFor(backend);
    const random = rng(31);
    for (const [rows, cols] of [[1, 1], [3, 5], [17, 64], [9, 130]]) {
      const x = randomTensor(random, [2, rows, cols], 3);
      const dy = randomTensor(random, [2, rows, cols]);
      const mask = { data: Uint8Array.from({ length: cols }, (_, j) => (j % 5 === 3 ? 0 : 1)), dims: [cols] };
      const options = { scale: 0.7, mask, causal: true };
      const y = engine.softmax(x, options);
      const dx = engine.softmaxBackward(y, dy, { scale: 0.7 });
      expect(dx.dims).toEqual(x.dims);
      const expected = referenceSoftmaxBackward(y, dy, { scale: 0.7 });
      expect(maxError(dx.data, expected.data)).toBeLessThanOrEqual(tolerance.reduction(cols) * (1 + maxAbs(expected.data)));
      // against finite differences of the float64 softmax: the whole chain rule, masked columns 0
      const x64 = { data: Float64Array.from(x.data), dims: x.dims };
      const loss = () => referenceSoftmax(x64, options).data.reduce((s, v, i) => s + v * dy.data[i], 0);
      for (let i = 0; i < x64.data.length; i += Math.max(1, Math.floor(x64.data.length / 40))) {
        const keep = x64.data[i];
        x64.data[i] = keep + 1e-5;
        const up = loss();
        x64.data[i] = keep - 1e-5;
        const down = loss();
        x64.data[i] = keep;
        expect(Math.abs(dx.data[i] - (up - down) / 2e-5)).toBeLessThanOrEqual(1e-5 + tolerance.reduction(cols));
      }
    }
  });

  it('writes into dy when asked (out: dy), and refuses mismatched dims and an out that overlaps y', () => {
    const engine = engineFor(backend);
    const y = engine.softmax(randomTensor(rng(2), [4, 8]));
    const dy = randomTensor(rng(3), [4, 8]);
    const want = engine.softmaxBackward(y, dy).data;
    const inPlace = engine.softmaxBackward(y, dy, { out: dy.data });
    expect(inPlace.data).toBe(dy.data);
    expect(Array.from(inPlace.data)).toEqual(Array.from(want));
    refused(() => engine.softmaxBackward(y, { data: new Float32Array(32), dims: [8, 4] }), 'SHAPE_MISMATCH', 'dy.dims');
    refused(() => engine.softmaxBackward(y, dy, { out: y.data }), 'INVALID_OPTION', 'options.out');
  });
});
