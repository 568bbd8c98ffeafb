// float16 and int8 pages at their edges, on every backend: what a page stores for zeros, -0, a single
// large value in a row, ties, values at the int8 limits, the largest half and subnormal halves, read
// back through sequence.export() and checked against the reference's quantizeKV and against values
// worked out by hand (and, where the runtime has Float16Array, its rounding); NaN, Infinity and
// halves past 65504 refused before anything is stored; imports that no pool of the dtype could have
// written refused; attention over such rows against the reference.
import { describe, expect, it } from 'vitest';
import { type KVDtype, quantizeKV, referenceAttention } from '../src/reference.js';
import { halfToFloat } from '../src/float16.js';
import { BACKENDS, engineFor, maxAbs, maxError, refused, tolerance } from './helpers.js';

const WIDTH = 8;

/** The rows a one-head pool of `dtype` stores for `rows` (each WIDTH keys, and the same as values), read from its export. */
function stored(pool: ReturnType<ReturnType<typeof engineFor>['kvPool']>, rows: number[][]): { k: number[]; bits: number[]; scales: number[] } {
  const sequence = pool.sequence();
  const data = Float32Array.from(rows.flat());
  sequence.append({ data, dims: [1, rows.length, WIDTH] }, { data, dims: [1, rows.length, WIDTH] });
  const bytes = sequence.export();
  sequence.dispose();
  const n = rows.length * WIDTH;
  const body = bytes.buffer.slice(bytes.byteOffset + 32);
  if (pool.dtype === 'float16') {
    const bits = Array.from(new Uint16Array(body, 0, n));
    return { k: bits.map(halfToFloat), bits, scales: [] };
  }
  const q = Array.from(new Int8Array(body, 0, n));
  const scales = Array.from(new Float32Array(body.slice(2 * n), 0, rows.length));
  return { k: q.map((x, i) => x * scales[Math.floor(i / WIDTH)]), bits: q, scales };
}

const pad = (row: number[]): number[] => [...row, ...new Array<number>(WIDTH - row.length).fill(0.25)];

describe.each(BACKENDS)('%s: page dtypes at their edges', (backend) => {
  const engine = engineFor(backend);
  const poolOf = (dtype: KVDtype) => engine.kvPool({ kvHeads: 1, headDim: WIDTH, pageSize: 3, maxTokens: 64, dtype });

  it('float16: round to nearest even, -0, subnormal halves, the largest half', () => {
    const pool = poolOf('float16');
    const rows = [
      pad([0, -0, 1, -1, 65504, -65504, 2 ** -24, 2 ** -25]), // 2^-25: a tie between 0 and the smallest subnormal -> 0
      pad([3 * 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -14, 2 ** -14 - 2 ** -24, 60000, 0.1, -1e-8]),
    ];
    const { k, bits } = stored(pool, rows);
    expect(bits.slice(0, 8)).toEqual([0x0000, 0x8000, 0x3c00, 0xbc00, 0x7bff, 0xfbff, 0x0001, 0x0000]);
    // 1.5·2^-24 ties to 2·2^-24; 1 + 2^-11 ties to 1 (even); 1 + 3·2^-11 ties to 1 + 2^-9 (even)
    expect(bits.slice(8, 16)).toEqual([0x0002, 0x3c00, 0x3c02, 0x0400, 0x03ff, 0x7b53, 0x2e66, 0x8000]);
    expect(k).toEqual(Array.from(quantizeKV(Float32Array.from(rows.flat()), WIDTH, 'float16')));
    const Half = (globalThis as { Float16Array?: new (values: number[]) => ArrayLike<number> }).Float16Array;
    if (Half) expect(k).toEqual(Array.from(new Half(rows.flat().map(Math.fround))));
    pool.dispose();
  });

  it('int8: absmax / 127 per row, ties to even, zeros, -0, one large value, tiny rows', () => {
    const pool = poolOf('int8');
    const rows = [
      [127, -127, 126.5, 0.5, -0.5, 1.5, 2.5, -0],
      [1e6, 1, -1, 0, 3e3, -4e3, 1e4, 5e3], // one large value: the rest round to 0 or a few steps
      [0, 0, 0, 0, 0, -0, 0, 0],
      [1e-37, -1e-37, 0, 0, 0, 0, 0, 0], // absmax below 127·2^-126: stored as zeros
      [2e-36, -1e-36, 0, 0, 0, 0, 0, 0], // just above it: kept
    ];
    const { k, bits, scales } = stored(pool, rows);
    expect(bits.slice(0, 8)).toEqual([127, -127, 126, 0, 0, 2, 2, 0]);
    expect(scales[0]).toBe(1);
    expect(bits.slice(8, 16)).toEqual([127, 0, 0, 0, 0, -1, 1, 1]);
    expect(scales[1]).toBe(Math.fround(1e6 / 127));
    expect(bits.slice(16, 32)).toEqual(new Array(16).fill(0));
    expect(scales.slice(2, 4)).toEqual([0, 0]);
    expect(bits.slice(32, 34)).toEqual([127, -63]); // -1e-36 · f32(127 / 2e-36) is -63.499996 in float32
    expect(scales[4]).toBe(Math.fround(2e-36 / 127));
    const reference = quantizeKV(Float32Array.from(rows.flat()), WIDTH, 'int8');
    expect(maxError(Float64Array.from(k), reference)).toBe(0);
    pool.dispose();
  });

  it.each(['float32', 'float16', 'int8'] as const)('%s: NaN and Infinity are refused, and float16 beyond ±65504, before anything is stored', (dtype) => {
    const pool = poolOf(dtype);
    const sequence = pool.sequence();
    const good = Float32Array.from(pad([1, 2, 3]));
    sequence.append({ data: good, dims: [1, 1, WIDTH] }, { data: good, dims: [1, 1, WIDTH] });
    const before = [sequence.length, pool.stats().pagesUsed, Array.from(sequence.export())];
    const bad = [NaN, Infinity, -Infinity, ...(dtype === 'float16' ? [65505, -1e5] : [])];
    for (const x of bad) {
      const data = Float32Array.from(pad([1, x]));
      refused(() => sequence.append({ data, dims: [1, 1, WIDTH] }, { data: good, dims: [1, 1, WIDTH] }), 'INVALID_TENSOR', 'k.data');
      refused(() => sequence.append({ data: good, dims: [1, 1, WIDTH] }, { data, dims: [1, 1, WIDTH] }), 'INVALID_TENSOR', 'v.data');
      const q = { data: new Float32Array(WIDTH), dims: [1, 1, WIDTH] };
      refused(() => pool.step([{ sequence, q, k: { data, dims: [1, 1, WIDTH] }, v: { data: good, dims: [1, 1, WIDTH] } }]), 'INVALID_TENSOR', 'items[0].k.data');
    }
    if (dtype === 'float16') {
      // large values are fine in int8 and float32 pages
      const large = Float32Array.from(pad([1e6]));
      for (const other of ['float32', 'int8'] as const) {
        const p = poolOf(other);
        expect(() => p.sequence().append({ data: large, dims: [1, 1, WIDTH] }, { data: large, dims: [1, 1, WIDTH] })).not.toThrow();
        p.dispose();
      }
    }
    expect([sequence.length, pool.stats().pagesUsed, Array.from(sequence.export())]).toEqual(before);
    pool.dispose();
  });

  it.each(['float16', 'int8'] as const)('%s: imports that no pool of the dtype could have written are refused', (dtype) => {
    const pool = poolOf(dtype);
    const sequence = pool.sequence();
    const data = Float32Array.from(pad([1, -2, 3]));
    sequence.append({ data, dims: [1, 1, WIDTH] }, { data, dims: [1, 1, WIDTH] });
    const bytes = sequence.export();
    const tamper = (at: number, write: (view: DataView) => void): Uint8Array => {
      const copy = bytes.slice();
      write(new DataView(copy.buffer, at));
      return copy;
    };
    if (dtype === 'float16') {
      refused(() => pool.import(tamper(32, (v) => v.setUint16(0, 0x7c00, true))), 'INVALID_ARGUMENT', 'bytes', /infinity or NaN/);
      refused(() => pool.import(tamper(32 + 2 * WIDTH, (v) => v.setUint16(2, 0xfe01, true))), 'INVALID_ARGUMENT', 'bytes', /infinity or NaN/);
    } else {
      refused(() => pool.import(tamper(32, (v) => v.setInt8(1, -128))), 'INVALID_ARGUMENT', 'bytes', /-128/);
      for (const scale of [NaN, -1, Infinity, 1e-40]) {
        refused(() => pool.import(tamper(32 + 2 * WIDTH, (v) => v.setFloat32(0, scale, true))), 'INVALID_ARGUMENT', 'bytes', /scale/);
      }
    }
    expect(pool.stats().sequences).toBe(1);
    expect(Array.from(pool.import(bytes).export())).toEqual(Array.from(bytes));
    pool.dispose();
  });

  it('float16: queries too large to carry 2^112 (the kernel then converts halves fully) give the reference too', () => {
    const pool = engine.kvPool({ kvHeads: 1, headDim: WIDTH, pageSize: 4, maxTokens: 64, dtype: 'float16' });
    const sequence = pool.sequence();
    const rows = Float32Array.from({ length: 9 * WIDTH }, (_, i) => Math.sin(i) * 2);
    sequence.append({ data: rows, dims: [1, 9, WIDTH] }, { data: rows, dims: [1, 9, WIDTH] });
    const next = Float32Array.from(pad([0.5, -0.25]));
    for (const magnitude of [1, 2e5]) {
      const q = { data: Float32Array.from({ length: 4 * WIDTH }, (_, i) => Math.cos(i) * magnitude), dims: [4, 1, WIDTH] };
      const s = sequence.fork();
      const [y] = pool.step([{ sequence: s, q, k: { data: next, dims: [1, 1, WIDTH] }, v: { data: next, dims: [1, 1, WIDTH] } }], { softcap: 30 });
      const held = quantizeKV(Float32Array.from([...rows, ...next]), WIDTH, 'float16');
      const expected = referenceAttention({ data: q.data, dims: [1, 4, 1, WIDTH] }, { data: held, dims: [1, 1, 10, WIDTH] }, { data: held, dims: [1, 1, 10, WIDTH] }, { causal: true, offset: 9, softcap: 30 });
      expect(maxError(y.data, expected.data)).toBeLessThanOrEqual(tolerance.attention(WIDTH, 10, 30) * maxAbs(held));
      s.dispose();
    }
    pool.dispose();
  });

  it.each(['float16', 'int8'] as const)('%s: attention over edge rows equals the reference over what the pages hold', (dtype) => {
    const pool = engine.kvPool({ kvHeads: 1, headDim: WIDTH, pageSize: 2, maxTokens: 64, dtype });
    const rows = [pad([0, -0]), pad([1e3, 1, -1]), new Array(WIDTH).fill(0), pad([2 ** -24, -(2 ** -20)]), pad([60000, -60000, 0.5])];
    const data = Float32Array.from(rows.flat());
    const sequence = pool.sequence();
    sequence.append({ data, dims: [1, rows.length, WIDTH] }, { data, dims: [1, rows.length, WIDTH] });
    const q = { data: Float32Array.from({ length: 2 * WIDTH }, (_, i) => ((i % 5) - 2) * 1e-4), dims: [2, 1, WIDTH] };
    const k = { data: Float32Array.from(pad([0.5, -0.25])), dims: [1, 1, WIDTH] };
    const [y] = pool.step([{ sequence, q, k, v: k }]);
    const all = Float32Array.from([...data, ...k.data]);
    const held = quantizeKV(all, WIDTH, dtype);
    const length = rows.length + 1;
    const expected = referenceAttention({ data: q.data, dims: [1, 2, 1, WIDTH] }, { data: held, dims: [1, 1, length, WIDTH] }, { data: held, dims: [1, 1, length, WIDTH] }, { causal: true, offset: length - 1 });
    expect(y.data.every(Number.isFinite)).toBe(true);
    const scale = 1 / Math.sqrt(WIDTH);
    const maxScore = scale * maxAbs(q.data) * maxAbs(held) * WIDTH;
    const tol = tolerance.attention(WIDTH, length, maxScore) + 2.5 * scale * tolerance.quantizedScore(dtype, WIDTH, maxAbs(q.data), maxAbs(held), false) + tolerance.quantizedWeights(dtype, length);
    expect(maxError(y.data, expected.data)).toBeLessThanOrEqual(tol * maxAbs(held));
    pool.dispose();
  });
});
