// Packed weights (engine.packWeights) and matmul against them, on every backend: the float64 reference
// with bias and activation, the register tiles' and panels' edges (M 1 to 13 around the 5- and 6-row
// tiles and the 16-row switch to K blocks, N around the 8-wide panels, K past one block of 256),
// batch dims of a, the same bits for 1 and 2 threads, and every refusal leaving no trace.
import { describe, expect, it } from 'vitest';
import { type Activation, AttentionError, createEngineSync } from '../src/index.js';
import { referenceMatmul } from '../src/reference.js';
import { BACKENDS, engineFor, maxError, randomTensor, refused, rng, tolerance } from './helpers.js';

const ACTIVATIONS: Array<Activation | undefined> = [undefined, 'relu', 'gelu_tanh', 'silu'];

function check(backend: (typeof BACKENDS)[number], aDims: number[], k: number, n: number, options: { transposeA?: boolean; transposeB?: boolean; bias?: boolean; activation?: Activation }, seed: number): void {
  const random = rng(seed);
  const a = randomTensor(random, aDims);
  const b = randomTensor(random, options.transposeB ? [n, k] : [k, n]);
  const bias = options.bias ? randomTensor(random, [n]).data : undefined;
  const engine = engineFor(backend);
  const w = engine.packWeights(b, { transposeB: options.transposeB });
  expect(w.dims).toEqual([k, n]);
  const actual = engine.matmul(a, w, { transposeA: options.transposeA, bias, activation: options.activation });
  const expected = referenceMatmul(a, b, { transposeA: options.transposeA, transposeB: options.transposeB, bias, activation: options.activation });
  w.release();
  expect(actual.dims).toEqual(expected.dims);
  // the activations are 1-Lipschitz up to 1.13 (GELU), so the product's bound carries over
  expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(1.2 * tolerance.reduction(k) * Math.sqrt(k + 1));
}

describe.each(BACKENDS)('matmul with packed weights on %s', (backend) => {
  it.each([1, 2, 4, 5, 6, 7, 11, 12, 13, 16, 17, 40])('M %i: N 1, 8, 9, 263; K 1, 7, 257', (m) => {
    for (const n of [1, 8, 9, 263]) for (const k of [1, 7, 257]) check(backend, [m, k], k, n, {}, m * 1000 + n * 7 + k);
  });
  it.each(ACTIVATIONS)('bias and activation %s, transposed weights, a [2, 3, 5, 70]', (activation) => {
    check(backend, [2, 3, 5, 70], 70, 37, { bias: true, activation, transposeB: true }, 17);
    check(backend, [1, 300], 300, 20, { bias: false, activation }, 18);
  });
  it('M 130, K 1500: the last 2-row item packs all of its A (2 x 1500 floats, more than one K block of a tile)', () => {
    check(backend, [130, 1500], 1500, 20, { bias: true }, 31);
    check(backend, [1500, 130], 1500, 20, { transposeA: true }, 32);
  });
  it.each([1, 6, 17, 130])('transposeA: a [2, K, M] with M %i against packed weights, bias and silu', (m) => {
    check(backend, [2, 257, m], 257, 19, { transposeA: true, bias: true, activation: 'silu' }, 40 + m);
    check(backend, [7, m], 7, 9, { transposeA: true, transposeB: true }, 50 + m);
  });
  it('activations of large inputs: relu, silu and gelu saturate without NaN', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array([1]), dims: [1, 1] });
    const x = { data: new Float32Array([-1e30, -100, -1, -0, 0, 1, 100, 1e30]), dims: [8, 1] };
    for (const activation of ['relu', 'gelu_tanh', 'silu'] as const) {
      const y = engine.matmul(x, w, { activation }).data;
      const expected = referenceMatmul(x, { data: new Float32Array([1]), dims: [1, 1] }, { activation }).data;
      for (let i = 0; i < 8; i++) expect(Math.abs(y[i] - expected[i])).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(expected[i])));
    }
    w.release();
  });
  it('keeps its own copy: writing w after packing changes nothing; subnormal weights are packed as 0', () => {
    const engine = engineFor(backend);
    const b = { data: new Float32Array([1, 2, 1e-40, 3]), dims: [2, 2] };
    const w = engine.packWeights(b);
    b.data.fill(100);
    expect([...engine.matmul({ data: new Float32Array([1, 1]), dims: [1, 2] }, w).data]).toEqual([1, 5]);
    expect([...engine.matmul({ data: new Float32Array([0, 1e30]), dims: [1, 2] }, w).data]).toEqual([0, Math.fround(3 * Math.fround(1e30))]);
    w.release();
  });
  it('refuses bad calls before anything runs, and a refused call leaves no memory behind', () => {
    const engine = engineFor(backend);
    const before = engine.stats().usedBytes;
    refused(() => engine.packWeights({ data: new Float32Array(8), dims: [2, 2, 2] }), 'INVALID_DIMS', 'w.dims');
    refused(() => engine.packWeights({ data: new Float32Array(0), dims: [0, 3] }), 'INVALID_DIMS', 'w.dims');
    refused(() => engine.packWeights({ data: new Float64Array(4), dims: [2, 2] }), 'INVALID_DTYPE', 'w.data');
    refused(() => engine.packWeights({ data: new Float32Array(4), dims: [2, 2] }, { transpose: true } as never), 'INVALID_OPTION', 'options.transpose');
    expect(engine.stats().usedBytes).toBe(before);
    const w = engine.packWeights({ data: new Float32Array(12), dims: [3, 4] });
    const a = { data: new Float32Array(6), dims: [2, 3] };
    refused(() => engine.matmul({ data: new Float32Array(4), dims: [2, 2] }, w), 'SHAPE_MISMATCH', 'a.dims[1]');
    refused(() => engine.matmul(a, w, { transposeB: true }), 'INVALID_OPTION', 'options.transposeB');
    refused(() => engine.matmul(a, w, { bias: new Float32Array(3) }), 'SHAPE_MISMATCH', 'options.bias.dims');
    refused(() => engine.matmul(a, w, { activation: 'gelu' as Activation }), 'INVALID_OPTION', 'options.activation');
    refused(() => engine.matmul(a, { data: new Float32Array(12), dims: [3, 4] }, { bias: new Float32Array(4) }), 'UNSUPPORTED', 'options.bias');
    refused(() => engine.matmul(a, { data: new Float32Array(12), dims: [3, 4] }, { activation: 'relu' }), 'UNSUPPORTED', 'options.activation');
    const other = createEngineSync({ backend });
    refused(() => other.matmul(a, w), 'INVALID_TENSOR', 'b');
    other.dispose();
    w.release();
    expect(w.released).toBe(true);
    refused(() => engine.matmul(a, w), 'INVALID_TENSOR', 'b');
    expect(engine.stats().usedBytes).toBe(before);
  });
  it('a release during an async call takes effect when the call settles', async () => {
    const engine = engineFor(backend);
    const before = engine.stats().usedBytes;
    const random = rng(5);
    const b = randomTensor(random, [64, 40]);
    const a = randomTensor(random, [3, 64]);
    const w = engine.packWeights(b);
    const pending = engine.matmulAsync(a, w, { activation: 'silu' });
    w.release();
    const y = await pending;
    expect(maxError(y.data, referenceMatmul(a, b, { activation: 'silu' }).data)).toBeLessThanOrEqual(tolerance.reduction(64) * 8);
    expect(engine.stats().usedBytes).toBe(before);
  });
});

describe.each(BACKENDS.filter((b) => b !== 'js'))('packed matmul on %s threads', (backend) => {
  it('gives the same bits on 1 and 2 threads (M 1, 3, 40; N 2048 split in column chunks)', () => {
    const random = rng(9);
    const b = randomTensor(random, [1024, 2048]);
    const bias = randomTensor(random, [2048]).data;
    const outputs = [1, 2].map((threads) => {
      const engine = createEngineSync({ backend, threads });
      const w = engine.packWeights(b);
      const ys = [1, 3, 40].map((m) => engine.matmul(randomTensor(rng(m), [m, 1024]), w, { bias, activation: 'gelu_tanh' }).data);
      engine.dispose();
      return ys;
    });
    for (let i = 0; i < 3; i++) expect(Buffer.from(outputs[1][i].buffer).equals(Buffer.from(outputs[0][i].buffer))).toBe(true);
  });
});

it('PackedWeights cannot be forged', () => {
  const engine = engineFor(BACKENDS[0]);
  const fake = Object.create((engine.packWeights({ data: new Float32Array(1), dims: [1, 1] }) as object).constructor.prototype);
  let error: unknown;
  try {
    engine.matmul({ data: new Float32Array(1), dims: [1, 1] }, fake);
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(AttentionError);
});
