// engine.rotary on every backend against the float64 reference: both layouts, dims below the head
// dim, x [B, H, S, D] and [B, S, H·D], positions [S] and [B, S], head dims around the 4-lane
// vectors, sequence lengths around the 64-row items; the properties RoPE exists for (norms kept,
// position 0 the identity, q·k a function of the position difference only); ONNX's definition on
// a hand-computed case; in place; refusals.
import { describe, expect, it } from 'vitest';
import { referenceRotary } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, refused, rng, tolerance } from './helpers.js';

interface Case {
  x: number[];
  heads?: number;
  dims?: number;
  interleaved?: boolean;
  /** Positions [B, S] instead of [S]. */
  perBatch?: boolean;
  /** Largest position drawn (exclusive); default 4096. */
  maxPosition?: number;
}

function positionsFor(random: () => number, batch: number, seq: number, o: Case): { data: Int32Array; dims: number[] } {
  const dims = o.perBatch ? [batch, seq] : [seq];
  const data = Int32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => Math.floor(random() * (o.maxPosition ?? 4096)));
  return { data, dims };
}

/** Dot product in float64 of two head vectors [d0, d0 + n) of flat arrays. */
function dot(a: ArrayLike<number>, aAt: number, b: ArrayLike<number>, bAt: number, n: number): number {
  let sum = 0;
  for (let d = 0; d < n; d++) sum += a[aAt + d] * b[bAt + d];
  return sum;
}

describe.each(BACKENDS)('rotary on %s', (backend) => {
  const cases: Array<[string, Case]> = [];
  for (const headDim of [2, 4, 6, 8, 10, 64, 128]) {
    for (const interleaved of [false, true]) cases.push([`headDim ${headDim}${interleaved ? ', interleaved' : ''}`, { x: [2, 3, 5, headDim], interleaved }]);
  }
  for (const seq of [1, 63, 64, 65, 130]) cases.push([`S ${seq} (items of 64 rows)`, { x: [1, 2, seq, 12] }]);
  cases.push(
    ['dims 4 of 10', { x: [2, 2, 7, 10], dims: 4 }],
    ['dims 6 of 10, interleaved', { x: [2, 2, 7, 10], dims: 6, interleaved: true }],
    ['dims 32 of 64', { x: [1, 4, 9, 64], dims: 32 }],
    ['dims 64 of 128, interleaved', { x: [1, 2, 66, 128], dims: 64, interleaved: true }],
    ['dims 2 of 6', { x: [1, 1, 3, 6], dims: 2 }],
    ['dims 0 (the whole head, as ONNX)', { x: [1, 2, 3, 8], dims: 0 }],
    ['positions [B, S]', { x: [3, 2, 70, 16], perBatch: true }],
    ['3D [B, S, H·D]', { x: [2, 5, 4 * 10], heads: 4 }],
    ['3D, interleaved, dims 8 of 18, positions [B, S]', { x: [2, 67, 3 * 18], heads: 3, dims: 8, interleaved: true, perBatch: true }],
    ['positions up to 2^24 - 1', { x: [1, 2, 40, 64], maxPosition: 2 ** 24 }],
    ['empty sequence', { x: [2, 2, 0, 8] }],
  );
  it.each(cases)('%s', (_name, o) => {
    const random = rng(o.x.reduce((a, b) => a * 31 + b, 7) + (o.interleaved ? 1 : 0));
    const x = randomTensor(random, o.x, 3);
    const seq = o.x.length === 4 ? o.x[2] : o.x[1];
    const positions = positionsFor(random, o.x[0], seq, o);
    const options = { positions, heads: o.heads, dims: o.dims, interleaved: o.interleaved };
    const actual = engineFor(backend).rotary(x, options);
    const expected = referenceRotary(x, options);
    expect(actual.dims).toEqual(o.x);
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(tolerance.rotary(maxAbs(x.data)));
    // past dims: the very same bits
    const headDim = o.x.length === 4 ? o.x[3] : o.x[2] / o.heads!;
    const dims = o.dims || headDim;
    for (let at = 0; at < x.data.length; at += headDim) {
      for (let d = dims; d < headDim; d++) expect(actual.data[at + d]).toBe(x.data[at + d]);
    }
  });

  it('keeps each pair norm, and position 0 is the identity', () => {
    const e = engineFor(backend);
    for (const interleaved of [false, true]) {
      const x = randomTensor(rng(11), [2, 3, 33, 20], 2);
      const positions = { data: Int32Array.from({ length: 33 }, (_, s) => s * 977), dims: [33] };
      const y = e.rotary(x, { positions, interleaved }).data;
      for (let at = 0; at < x.data.length; at += 20) {
        for (let i = 0; i < 10; i++) {
          const [p, q] = interleaved ? [at + 2 * i, at + 2 * i + 1] : [at + i, at + i + 10];
          const before = Math.hypot(x.data[p], x.data[q]);
          expect(Math.abs(Math.hypot(y[p], y[q]) - before)).toBeLessThanOrEqual(tolerance.rotary(2));
        }
      }
      const zeros = { data: new Int32Array(33), dims: [33] };
      expect(e.rotary(x, { positions: zeros, interleaved }).data).toEqual(x.data);
    }
  });

  it('q·k after rotation depends only on the position difference', () => {
    const e = engineFor(backend);
    const headDim = 64;
    const seq = 24;
    for (const interleaved of [false, true]) {
      const random = rng(interleaved ? 5 : 6);
      const q = randomTensor(random, [1, 1, seq, headDim]);
      const k = randomTensor(random, [1, 1, seq, headDim]);
      const qPos = Int32Array.from({ length: seq }, () => Math.floor(random() * 5000));
      const kPos = Int32Array.from({ length: seq }, () => Math.floor(random() * 5000));
      const rotate = (t: typeof q, p: Int32Array, shift: number): Float32Array =>
        e.rotary(t, { positions: { data: p.map((v) => v + shift), dims: [seq] }, interleaved }).data;
      const bound = tolerance.reduction(headDim) * Math.sqrt(headDim) * maxAbs(q.data) * maxAbs(k.data);
      const q0 = rotate(q, qPos, 0), k0 = rotate(k, kPos, 0);
      for (const shift of [1, 37, 1000, 123456]) {
        const qt = rotate(q, qPos, shift), kt = rotate(k, kPos, shift);
        for (let i = 0; i < seq; i++) {
          for (let j = 0; j < seq; j++) {
            const before = dot(q0, i * headDim, k0, j * headDim, headDim);
            const after = dot(qt, i * headDim, kt, j * headDim, headDim);
            expect(Math.abs(after - before)).toBeLessThanOrEqual(bound);
          }
        }
      }
      // and it does depend on the difference: a shift of q alone changes it
      const qMoved = rotate(q, qPos, 3);
      expect(Math.abs(dot(qMoved, 0, k0, 0, headDim) - dot(q0, 0, k0, 0, headDim))).toBeGreaterThan(bound);
    }
  });

  // ONNX RotaryEmbedding (opset 23) with cos_cache/sin_cache = cos/sin of p·base^(-2i/dims): x
  // [1, 1, 2, 4] = two tokens (1, 2, 3, 4) at positions 0 and 1, base 10000, so theta = (1, 0.01).
  // Half-split: x1 = x[0:2], x2 = x[2:4]; real = cos·x1 - sin·x2, imag = sin·x1 + cos·x2, out = [real, imag].
  // Interleaved: x1 = x[0::2], x2 = x[1::2]; out[0::2] = real, out[1::2] = imag. Position 0: unchanged.
  it('matches ONNX RotaryEmbedding on a hand-computed case', () => {
    const e = engineFor(backend);
    const x = { data: Float32Array.from([1, 2, 3, 4, 1, 2, 3, 4]), dims: [1, 1, 2, 4] };
    const positions = { data: Int32Array.from([0, 1]), dims: [1, 2] };
    const c1 = 0.5403023058681398, s1 = 0.8414709848078965; // cos 1, sin 1
    const c2 = 0.9999500004166653, s2 = 0.009999833334166664; // cos 0.01, sin 0.01
    const halfSplit = [1, 2, 3, 4, 1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 1 * s1 + 3 * c1, 2 * s2 + 4 * c2];
    expect(halfSplit.slice(4)).toEqual([-1.9841106485555495, 1.959900667496664, 2.4623779024123156, 4.019799668334994]);
    const interleaved = [1, 2, 3, 4, 1 * c1 - 2 * s1, 1 * s1 + 2 * c1, 3 * c2 - 4 * s2, 3 * s2 + 4 * c2];
    expect(interleaved.slice(4)).toEqual([-1.1426396637476532, 1.922075596544176, 2.9598506679133294, 4.029799501669161]);
    // rotary_embedding_dim 2: only (x[0], x[1]) rotate, by theta 1, in either layout
    const partial = [1, 2, 3, 4, 1 * c1 - 2 * s1, 1 * s1 + 2 * c1, 3, 4];
    const close = (actual: Float32Array, expected: number[]): void => expect(maxError(actual, expected)).toBeLessThanOrEqual(tolerance.rotary(4));
    close(e.rotary(x, { positions }).data, halfSplit);
    close(e.rotary(x, { positions, interleaved: true }).data, interleaved);
    close(e.rotary(x, { positions, dims: 2 }).data, partial);
    close(e.rotary(x, { positions, dims: 2, interleaved: true }).data, partial);
    // the same tokens as [B, S, H·D] with one head
    close(e.rotary({ data: x.data, dims: [1, 2, 4] }, { positions, heads: 1 }).data, halfSplit);
  });

  it('writes in place (out = x), into a resident tensor, and async gives the same bits', async () => {
    const e = engineFor(backend);
    const x = randomTensor(rng(21), [2, 3, 67, 10]);
    const positions = { data: Float32Array.from({ length: 67 }, (_, s) => 5 * s), dims: [67] };
    const options = { positions, dims: 8, interleaved: true };
    const expected = e.rotary(x, options).data;
    expect(await e.rotaryAsync(x, options).then((r) => r.data)).toEqual(expected);
    const copy = { data: x.data.slice(), dims: x.dims };
    const result = e.rotary(copy, { ...options, out: copy.data });
    expect(result.data).toBe(copy.data);
    expect(copy.data).toEqual(expected);
    const t = e.tensor(x.dims);
    t.data.set(x.data);
    e.rotary(t, { ...options, out: t });
    expect(t.data).toEqual(expected);
    t.release();
  });

  it('refuses bad dims, positions, options and outputs', () => {
    const e = engineFor(backend);
    const x = { data: new Float32Array(2 * 3 * 4 * 8), dims: [2, 3, 4, 8] };
    const positions = { data: new Int32Array(4), dims: [4] };
    refused(() => e.rotary(x, { positions, dims: 3 }), 'INVALID_OPTION', 'options.dims', /even/);
    refused(() => e.rotary(x, { positions, dims: 10 }), 'INVALID_OPTION', 'options.dims', /head dim 8/);
    refused(() => e.rotary(x, { positions, dims: 2.5 }), 'INVALID_OPTION', 'options.dims');
    refused(() => e.rotary({ data: new Float32Array(20), dims: [1, 1, 4, 5] }, { positions }), 'INVALID_OPTION', 'options.dims', /default/);
    refused(() => e.rotary(x, { positions: { data: Int32Array.from([0, 1, -1, 2]), dims: [4] } }), 'INVALID_OPTION', 'options.positions.data', /\[2\] is -1/);
    refused(() => e.rotary(x, { positions: { data: Float32Array.from([0, 1.5, 2, 3]), dims: [4] } }), 'INVALID_OPTION', 'options.positions.data', /1\.5/);
    refused(() => e.rotary(x, { positions: { data: Float32Array.from([0, 2 ** 24, 2, 3]), dims: [4] } }), 'INVALID_OPTION', 'options.positions.data');
    refused(() => e.rotary(x, { positions: { data: Float32Array.from([0, NaN, 2, 3]), dims: [4] } }), 'INVALID_OPTION', 'options.positions.data');
    refused(() => e.rotary(x, { positions: { data: new Int32Array(5), dims: [5] } }), 'SHAPE_MISMATCH', 'options.positions.dims');
    refused(() => e.rotary(x, { positions: { data: new Int32Array(12), dims: [3, 4] } }), 'SHAPE_MISMATCH', 'options.positions.dims');
    refused(() => e.rotary(x, { positions: { data: new Int32Array(8), dims: [2, 1, 4] } }), 'SHAPE_MISMATCH', 'options.positions.dims');
    refused(() => e.rotary(x, { positions: { data: new Int32Array(3), dims: [4] } }), 'SHAPE_MISMATCH', 'options.positions.data');
    refused(() => e.rotary(x, { positions: { data: new Float64Array(4), dims: [4] } as never }), 'INVALID_DTYPE', 'options.positions.data');
    refused(() => e.rotary(x, { positions: new Int32Array(4) } as never), 'INVALID_TENSOR', 'options.positions');
    refused(() => e.rotary(x, {} as never), 'INVALID_OPTION', 'options.positions');
    refused(() => e.rotary(x, undefined as never), 'INVALID_OPTION', 'options.positions');
    refused(() => e.rotary(x, { positions, dim: 4 } as never), 'INVALID_OPTION', 'options.dim', /did you mean dims/);
    refused(() => e.rotary(x, { positions, interleave: true } as never), 'INVALID_OPTION', 'options.interleave', /interleaved/);
    refused(() => e.rotary(x, { positions, base: 0 }), 'INVALID_OPTION', 'options.base');
    refused(() => e.rotary(x, { positions, base: Infinity }), 'INVALID_OPTION', 'options.base');
    refused(() => e.rotary(x, { positions, interleaved: 1 as never }), 'INVALID_OPTION', 'options.interleaved');
    refused(() => e.rotary(x, { positions, heads: 2 }), 'SHAPE_MISMATCH', 'options.heads');
    refused(() => e.rotary({ data: new Float32Array(24), dims: [1, 4, 6] }, { positions }), 'INVALID_OPTION', 'options.heads');
    refused(() => e.rotary({ data: new Float32Array(24), dims: [1, 4, 6] }, { positions, heads: 4 }), 'SHAPE_MISMATCH', 'options.heads');
    refused(() => e.rotary({ data: new Float32Array(24), dims: [1, 4, 6] }, { positions, heads: 0 }), 'INVALID_OPTION', 'options.heads');
    refused(() => e.rotary({ data: new Float32Array(8), dims: [2, 4] }, { positions }), 'INVALID_DIMS', 'x.dims');
    refused(() => e.rotary({ data: new Float64Array(x.data.length), dims: x.dims } as never, { positions }), 'INVALID_DTYPE', 'x.data');
    refused(() => e.rotary(x, { positions, out: new Float32Array(10) }), 'SHAPE_MISMATCH', 'options.out');
    const shared = new Float32Array(x.data.length + 1);
    refused(() => e.rotary({ data: shared.subarray(1), dims: x.dims }, { positions, out: shared.subarray(0, x.data.length) }), 'INVALID_OPTION', 'options.out');
  });

  it('rejects an async call before anything runs', async () => {
    const e = engineFor(backend);
    const x = { data: new Float32Array(8), dims: [1, 1, 2, 4] };
    await expect(e.rotaryAsync(x, { positions: { data: Int32Array.from([0, -3]), dims: [2] } })).rejects.toMatchObject({ code: 'INVALID_OPTION', argument: 'options.positions.data' });
  });
});
