// Long-run health: NaN stays in the rows it reaches, subnormal inputs are read as documented, WASM
// memory stops growing under mixed calls and every block is given back, several engines (and engines
// inside worker threads) do not disturb each other.
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { createEngineSync } from '../src/index.js';
import { referenceAttention, referenceMatmul, referenceSoftmax } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, rng, tolerance } from './helpers.js';

describe.each(BACKENDS)('numerics on %s', (backend) => {
  const engine = engineFor(backend);

  it('a NaN in q reaches only its own row', () => {
    const random = rng(41);
    const q = randomTensor(random, [1, 2, 40, 16]);
    const k = randomTensor(random, [1, 2, 150, 16]);
    const v = randomTensor(random, [1, 2, 150, 16]);
    q.data[(1 * 40 + 7) * 16 + 3] = NaN; // head 1, row 7
    const y = engine.attention(q, k, v, { causal: true });
    const clean = referenceAttention({ data: q.data.map((x) => (Number.isNaN(x) ? 0 : x)), dims: q.dims }, k, v, { causal: true });
    for (let row = 0; row < 80; row++) {
      const out = y.data.subarray(row * 16, (row + 1) * 16);
      if (row === 40 + 7) expect(out.every(Number.isNaN)).toBe(true);
      else expect(maxError(out, clean.data.subarray(row * 16, (row + 1) * 16))).toBeLessThan(2e-6);
    }
  });

  it('a NaN in k reaches only the rows that see that key', () => {
    const random = rng(42);
    const q = randomTensor(random, [1, 1, 200, 8]);
    const k = randomTensor(random, [1, 1, 200, 8]);
    const v = randomTensor(random, [1, 1, 200, 8]);
    k.data[150 * 8] = NaN; // key 150: causal rows 150.. see it
    const y = engine.attention(q, k, v, { causal: true });
    const r = referenceAttention(q, k, v, { causal: true });
    for (let row = 0; row < 200; row++) {
      const out = y.data.subarray(row * 8, (row + 1) * 8);
      if (row >= 150) expect(out.every(Number.isNaN)).toBe(true);
      else expect(maxError(out, r.data.subarray(row * 8, (row + 1) * 8))).toBeLessThan(2e-6);
    }
  });
});

// The documented semantics of subnormal float32 inputs (|x| < 2^-126): the wasm backends read those of
// attention (q, k, v), matmul (a, b) and softmax (x) as zero (x86 is many times slower on them
// otherwise); the js backend and the float64 reference use them as they are. So each backend must give
// the reference result of the inputs as it reads them. The inputs mix normal values with subnormal
// ones, and put subnormals against huge values (1e-38 · 1e38), where reading them as zero changes the
// result by far more than the tolerance; each test asserts that it does, so it tells the two apart.

/** A copy with every subnormal value replaced by zero. */
function flushed(t: { data: Float32Array; dims: number[] }): { data: Float32Array; dims: number[] } {
  return { data: t.data.map((x) => (Math.abs(x) < 2 ** -126 ? 0 : x)), dims: t.dims };
}

/** Placed in the engine's memory (engine.tensor) when `resident`, else as given. */
function place(engine: ReturnType<typeof engineFor>, t: { data: Float32Array; dims: number[] }, resident: boolean) {
  if (!resident) return { tensor: t, release: () => {} };
  const r = engine.tensor(t.dims);
  r.data.set(t.data);
  return { tensor: r as { data: Float32Array; dims: number[] }, release: () => r.release() };
}

describe.each(BACKENDS)('subnormal inputs on %s', (backend) => {
  const engine = engineFor(backend);
  /** The inputs as this backend reads them. */
  const asRead = (t: { data: Float32Array; dims: number[] }) => (backend === 'js' ? t : flushed(t));

  it.each([false, true])('attention (resident q, k, v: %s): the reference of the inputs as read', (resident) => {
    const random = rng(43);
    const headDim = 16;
    const signed = (m: number) => (random() * 2 - 1) * m;
    // dim 0: q subnormal against k huge; dim 1: q huge against k subnormal; other dims normal, in [-1, 1]
    const fill = (dims: number[], at: (d: number) => number) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => at(i % headDim)), dims });
    const q = fill([1, 2, 30, headDim], (d) => (d === 0 ? signed(1e-38) : d === 1 ? signed(1.5e38) : signed(1)));
    const k = fill([1, 2, 70, headDim], (d) => (d === 0 ? signed(1.5e38) : d === 1 ? signed(1e-38) : signed(1)));
    // v: column 0 all subnormal, and 30% of the others
    const v = fill([1, 2, 70, headDim], (d) => (d === 0 || random() < 0.3 ? signed(1e-38) : signed(1)));
    const raw = referenceAttention(q, k, v);
    const expected = referenceAttention(asRead(q), asRead(k), asRead(v));
    // the scores: 14 normal products plus two that are at most 1.5 each (or 0 when read as zero), times 1/4
    const bound = tolerance.attention(headDim, 70, 4.25) * maxAbs(v.data);
    expect(maxError(raw.data, referenceAttention(flushed(q), flushed(k), flushed(v)).data)).toBeGreaterThan(1000 * bound);

    const [pq, pk, pv] = [q, k, v].map((t) => place(engine, t, resident));
    const y = engine.attention(pq.tensor, pk.tensor, pv.tensor);
    [pq, pk, pv].forEach((p) => p.release());
    expect(maxError(y.data, expected.data)).toBeLessThanOrEqual(bound);
    // output column 0 is a weighted mean of subnormal values: exactly 0 as wasm reads them, and within
    // the tolerance of its own (subnormal) magnitude on js
    const column = (data: ArrayLike<number>) => Array.from({ length: data.length / headDim }, (_, row) => data[row * headDim]);
    const columnBound = tolerance.attention(headDim, 70, 4.25) * maxAbs(column(v.data));
    expect(maxError(column(y.data), column(expected.data))).toBeLessThanOrEqual(backend === 'js' ? columnBound : 0);
    expect(maxAbs(column(raw.data))).toBeGreaterThan(1000 * columnBound);
  });

  // a (2 x 4) · b (4 x 3), chosen so that every sum is exact in float32 once the subnormals are zero:
  // a[0][0]·b[0][0] = 1e-39·1e38 = 0.1 (js) or 0 (wasm), a[0][3]·b[3][0] = 1e38·1e-39 likewise
  const aValues = [1e-39, 1, -2, 1e38, -3e-39, 0.5, 1e-40, 0];
  const bValues = [1e38, -1e38, 2e38, 0.5, 1, -1, 1, 2e-39, 0.25, 1e-39, 0, 2e-39];
  it.each([
    [false, false, false],
    [true, false, false],
    [false, true, false],
    [true, true, false],
    [false, false, true],
    [true, false, true],
  ])('matmul (resident a: %s, resident b: %s, transposeB: %s): the reference of the inputs as read', (residentA, residentB, transposeB) => {
    const a = { data: Float32Array.from(aValues), dims: [2, 4] };
    let b = { data: Float32Array.from(bValues), dims: [4, 3] };
    if (transposeB) b = { data: Float32Array.from({ length: 12 }, (_, i) => bValues[(i % 4) * 3 + Math.floor(i / 4)]), dims: [3, 4] };
    const raw = referenceMatmul(a, b, { transposeB });
    const expected = referenceMatmul(asRead(a), asRead(b), { transposeB });
    expect(Math.abs(raw.data[0] - referenceMatmul(flushed(a), flushed(b), { transposeB }).data[0])).toBeCloseTo(0.2, 4);

    const pa = place(engine, a, residentA);
    const pb = place(engine, b, residentB);
    const y = engine.matmul(pa.tensor, pb.tensor, { transposeB });
    pa.release();
    pb.release();
    if (backend === 'js') {
      // the error scales with max_ij sum_p |a_ip·b_pj| (about 3.3 here), not max|a|·max|b| (1e76)
      let magnitude = 0;
      for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) {
        let sum = 0;
        for (let p = 0; p < 4; p++) sum += Math.abs(aValues[i * 4 + p] * bValues[p * 3 + j]);
        magnitude = Math.max(magnitude, sum);
      }
      expect(maxError(y.data, expected.data)).toBeLessThanOrEqual(tolerance.reduction(4) * Math.sqrt(5) * magnitude);
    } else {
      expect(maxError(y.data, expected.data)).toBe(0);
    }
  });

  it('softmax: the reference of the inputs as read', () => {
    // scale 1e38 lifts subnormal x (1e-39 .. 1e-38) to 0.1 .. 1, and the smallest normals (1.2e-38 ..
    // 5e-38) to 1.2 .. 5; reading the subnormals as zero changes every row
    const random = rng(47);
    const cols = 37;
    const x = { data: Float32Array.from({ length: 5 * cols }, () => (random() < 0.5 ? 1e-39 + random() * 9e-39 : 1.2e-38 + random() * 3.8e-38) * (random() < 0.5 ? -1 : 1)), dims: [5, cols] };
    const scale = 1e38;
    const raw = referenceSoftmax(x, { scale });
    const expected = referenceSoftmax(asRead(x), { scale });
    const bound = tolerance.softmax(cols, 5);
    expect(maxError(raw.data, referenceSoftmax(flushed(x), { scale }).data)).toBeGreaterThan(100 * bound);
    const y = engine.softmax(x, { scale });
    expect(maxError(y.data, expected.data)).toBeLessThanOrEqual(bound);
  });
});

describe('memory over many calls', () => {
  it('stops growing after warm-up, and every call gives back its blocks', () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const random = rng(44);
    const call = (i: number): void => {
      const seq = 1 + Math.floor(random() * 120);
      const kv = 1 + Math.floor(random() * 200);
      const d = [8, 16, 64, 80][i % 4];
      switch (i % 3) {
        case 0:
          engine.attention(randomTensor(random, [1, 2, seq, d]), randomTensor(random, [1, 1, kv, d]), randomTensor(random, [1, 1, kv, d]), { causal: i % 2 === 0 });
          break;
        case 1:
          engine.matmul(randomTensor(random, [seq, d]), randomTensor(random, [d, kv]));
          break;
        default:
          engine.softmax(randomTensor(random, [seq, kv]), { mask: { data: new Uint8Array(kv).fill(1), dims: [kv] } });
      }
    };
    for (let i = 0; i < 300; i++) call(i);
    const warm = engine.stats().reservedBytes;
    for (let i = 300; i < 3000; i++) {
      call(i);
      if (i % 500 === 0) expect(engine.stats().usedBytes).toBe(0);
    }
    expect(engine.stats().reservedBytes).toBe(warm);
    expect(engine.stats().usedBytes).toBe(0);
    engine.dispose();
  });
});

describe('several engines', () => {
  it('in one process, interleaved, each give the reference result', async () => {
    const engines = [createEngineSync({ backend: 'wasm-simd', threads: 1 }), createEngineSync({ backend: 'wasm-simd', threads: 2 }), createEngineSync({ backend: 'js' })];
    const random = rng(45);
    const q = randomTensor(random, [1, 4, 100, 32]);
    const expected = referenceAttention(q, q, q, { causal: true }).data;
    const results = await Promise.all(engines.flatMap((e) => [e.attentionAsync(q, q, q, { causal: true }), Promise.resolve(e.attention(q, q, q, { causal: true }))]));
    for (const y of results) expect(maxError(y.data, expected)).toBeLessThan(2e-6);
    engines.forEach((e) => e.dispose());
  });

  it('inside worker threads give the same bits as here', async () => {
    const q = randomTensor(rng(46), [1, 4, 90, 32]);
    const here = engineFor('wasm-simd').attention(q, q, q, { causal: true }).data;
    const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.url).then(({ createEngineSync }) => {
        const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
        const q = { data: workerData.q, dims: [1, 4, 90, 32] };
        parentPort.postMessage(engine.attention(q, q, q, { causal: true }).data);
        engine.dispose();
      });`;
    const url = new URL('../dist/index.js', import.meta.url).href;
    const runs = await Promise.all([0, 1].map(() => new Promise<Float32Array>((resolve, reject) => {
      const worker = new Worker(source, { eval: true, workerData: { url, q: q.data } });
      worker.once('message', resolve);
      worker.once('error', reject);
    })));
    for (const y of runs) expect(Buffer.from(y.buffer).equals(Buffer.from(here.buffer))).toBe(true);
  });
});
