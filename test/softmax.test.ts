// engine.softmax on every backend against the float64 reference: row lengths around the 4-lane
// vectors, scale, masks of both kinds and broadcast shapes, causal, fully masked rows, big inputs.
import { describe, expect, it } from 'vitest';
import { referenceSoftmax } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, rng, tolerance } from './helpers.js';

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
    ['inputs around 1e4', [4, 50], { magnitude: 1e4 }],
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

  it('gives zeros for a fully masked row', () => {
    const x = randomTensor(rng(3), [3, 8]);
    const mask = { data: Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), dims: [3, 8] };
    const y = engineFor(backend).softmax(x, { mask });
    expect(Array.from(y.data.subarray(8, 16))).toEqual(new Array(8).fill(0));
    expect(y.data[16]).toBe(1);
    expect(Math.abs(y.data.subarray(0, 8).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-6);
  });
});
