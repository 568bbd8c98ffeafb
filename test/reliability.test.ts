// Long-run health: NaN stays in the rows it reaches, subnormals compute correctly, WASM memory stops
// growing under mixed calls and every block is given back, several engines (and engines inside
// worker threads) do not disturb each other.
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { createEngineSync } from '../src/index.js';
import { referenceAttention } from '../src/reference.js';
import { BACKENDS, engineFor, maxError, randomTensor, rng } from './helpers.js';

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

  it('subnormal inputs give finite results, off by less than the smallest normal float', () => {
    // wasm flushes subnormal inputs to zero when it stages them (x86 is 40x slower on them otherwise)
    const random = rng(43);
    const q = randomTensor(random, [1, 2, 30, 32], 1e-39);
    const k = randomTensor(random, [1, 2, 70, 32], 1e-39);
    const v = randomTensor(random, [1, 2, 70, 32], 1e-39);
    const y = engine.attention(q, k, v);
    expect(y.data.every(Number.isFinite)).toBe(true);
    expect(maxError(y.data, referenceAttention(q, k, v).data)).toBeLessThan(2 ** -126);
    // normal values next to subnormal ones are untouched
    v.data[5] = 0.5;
    const z = engine.attention(q, k, v);
    expect(maxError(z.data, referenceAttention(q, k, v).data)).toBeLessThan(1e-7);
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
