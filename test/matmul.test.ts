// engine.matmul on every backend against the float64 reference, around the GEMM tiles
// (MR = 5 rows in the simd build, 6 in the relaxed one; 8-wide panels, KC = NC = 256 blocks), with
// transposeA, transposeB and broadcast batch dims.
import { describe, expect, it } from 'vitest';
import { referenceMatmul } from '../src/reference.js';
import { BACKENDS, engineFor, maxError, randomTensor, refused, rng, tolerance } from './helpers.js';

const sizes = [1, 3, 4, 5, 7, 8, 9, 17, 33];
const shapes: Array<[number, number, number]> = [];
for (const m of sizes) for (const n of [1, 7, 8, 9, 31]) shapes.push([m, n, (m * 7 + n * 3) % 40 + 1]);
shapes.push([64, 64, 64], [5, 300, 7], [9, 257, 513], [100, 260, 3], [2, 3, 0], [0, 4, 5], [4, 0, 5]);

function check(backend: (typeof BACKENDS)[number], aDims: number[], bDims: number[], transposeB: boolean, seed: number, transposeA = false): void {
  const random = rng(seed);
  const a = randomTensor(random, aDims);
  const b = randomTensor(random, bDims);
  const actual = engineFor(backend).matmul(a, b, { transposeA, transposeB });
  const expected = referenceMatmul(a, b, { transposeA, transposeB });
  expect(actual.dims).toEqual(expected.dims);
  const k = aDims[aDims.length - (transposeA ? 2 : 1)];
  expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(tolerance.reduction(k) * Math.sqrt(k + 1));
}

describe.each(BACKENDS)('matmul on %s', (backend) => {
  it.each(shapes)('M %i N %i K %i', (m, n, k) => check(backend, [m, k], [k, n], false, m * 1000 + n * 10 + k));
  it.each(shapes)('M %i N %i K %i, transposeB', (m, n, k) => check(backend, [m, k], [n, k], true, m * 999 + n * 7 + k));
  it('broadcasts batch dims: [2, 1, 5, 6] x [3, 6, 7]', () => check(backend, [2, 1, 5, 6], [3, 6, 7], false, 1));
  it('broadcasts batch dims: [4, 9, 10] x [10, 3] (transposed [3, 10])', () => check(backend, [4, 9, 10], [3, 10], true, 2));
  // register tiles of 5 (simd) and 6 (relaxed) rows, whole and partial; 8-wide panels; K past one block of 256
  it.each([1, 4, 5, 6, 7, 11, 12, 13])('tile edges: M %i, N 1, 8, 9 and 263, K 257', (m) => {
    for (const n of [1, 8, 9, 263]) check(backend, [m, 257], [257, n], false, 100 + m * 7 + n);
    check(backend, [m, 257], [263, 257], true, 300 + m);
  });
  it.each(shapes)('M %i N %i K %i, transposeA', (m, n, k) => check(backend, [k, m], [k, n], false, m * 997 + n * 5 + k, true));
  it('transposeA and transposeB together, batch dims broadcast: [2, 1, 7, 5] x [3, 9, 7]', () => check(backend, [2, 1, 7, 5], [3, 9, 7], true, 4, true));
  // transposed a is packed by columns: the same tile edges, M past one 128-row chunk, K past a 256 block
  it.each([1, 4, 5, 6, 7, 11, 12, 13, 17, 129])('tile edges, transposeA: M %i, N 1, 9 and 263, K 257', (m) => {
    for (const n of [1, 9, 263]) check(backend, [257, m], [257, n], false, 500 + m * 7 + n, true);
  });
  it('refuses a bad transposeA and names the K dim of a transposed a', () => {
    const engine = engineFor(backend);
    const b = { data: new Float32Array(12), dims: [3, 4] };
    refused(() => engine.matmul({ data: new Float32Array(6), dims: [3, 2] }, b, { transposeA: 1 as never }), 'INVALID_OPTION', 'options.transposeA', /must be a boolean/);
    refused(() => engine.matmul({ data: new Float32Array(6), dims: [2, 3] }, b, { transposeA: true }), 'SHAPE_MISMATCH', 'b.dims[0]', /a\.dims\[0\] is 2/);
  });
  it('multiplies a 300 x 300 x 300 product', () => check(backend, [300, 300], [300, 300], false, 3));
});
