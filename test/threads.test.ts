// The thread pool: every thread count and the async form give the same bits; async calls queue and
// each gets its own result; a worker that dies fails only the call it held; dispose lets the process exit.
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { AttentionError, createEngineSync } from '../src/index.js';
import { referenceAttention } from '../src/reference.js';
import { FLOPS_PER_STREAMED_BYTE, MIN_PARALLEL_FLOPS, WorkerPool } from '../src/pool/pool.js';
import type { WasmBackend } from '../src/backends/wasm.js';
import type { WasmCall } from '../src/backend.js';
import { HEADER, jobLayout } from '../src/job.js';
import { maxError, randomTensor, rng } from './helpers.js';

const bits = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

const shapes = [
  { name: 'bert-like', q: [1, 4, 130, 64], kv: [1, 4, 130, 64], causal: false },
  { name: 'causal GQA', q: [2, 6, 200, 32], kv: [2, 2, 200, 32], causal: true },
  { name: 'decode, split-KV', q: [2, 4, 1, 64], kv: [2, 4, 3000, 64], causal: false },
  { name: 'decode GQA with a mask, split-KV', q: [1, 8, 2, 16], kv: [1, 2, 1500, 16], causal: true },
];

describe('thread counts and sync/async give identical bits', () => {
  const engines = [1, 2, 3, 4].map((threads) => createEngineSync({ backend: 'wasm-simd', threads }));
  it.each(shapes)('attention: $name', async ({ q: qDims, kv, causal }) => {
    const random = rng(qDims.reduce((a, b) => a * 7 + b, 1));
    const q = randomTensor(random, qDims);
    const k = randomTensor(random, kv);
    const v = randomTensor(random, kv);
    const mask = { data: Uint8Array.from({ length: kv[2] }, (_, j) => (j % 7 === 3 ? 0 : 1)), dims: [kv[2]] };
    const options = { causal, mask };
    const first = engines[0].attention(q, k, v, options).data;
    expect(maxError(first, referenceAttention(q, k, v, options).data)).toBeLessThan(1e-5);
    for (const engine of engines) {
      expect(bits(engine.attention(q, k, v, options).data).equals(bits(first))).toBe(true);
      expect(bits((await engine.attentionAsync(q, k, v, options)).data).equals(bits(first))).toBe(true);
    }
  });
  it('matmul with broadcast batch dims', async () => {
    const random = rng(3);
    const a = randomTensor(random, [3, 150, 300]);
    const b = randomTensor(random, [300, 520]);
    const first = engines[0].matmul(a, b).data;
    for (const engine of engines) {
      expect(bits(engine.matmul(a, b).data).equals(bits(first))).toBe(true);
      expect(bits((await engine.matmulAsync(a, b)).data).equals(bits(first))).toBe(true);
    }
  });
  it('softmax with a mask', () => {
    const random = rng(4);
    const x = randomTensor(random, [4, 300, 300]);
    const mask = { data: Float32Array.from({ length: 300 }, (_, j) => (j % 5 === 0 ? -Infinity : 0)), dims: [300] };
    const first = engines[0].softmax(x, { mask, causal: true }).data;
    for (const engine of engines) expect(bits(engine.softmax(x, { mask, causal: true }).data).equals(bits(first))).toBe(true);
  });
});

describe('async calls', () => {
  it('queue: 200 concurrent calls each get their own, correct result', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const random = rng(5);
    const calls = Array.from({ length: 200 }, (_, i) => {
      const seq = 8 + (i % 50);
      return { q: randomTensor(random, [1, 2, seq, 16]), k: randomTensor(random, [1, 2, seq + 3, 16]), v: randomTensor(random, [1, 2, seq + 3, 8]), causal: i % 2 === 0 };
    });
    const results = await Promise.all(calls.map((c) => engine.attentionAsync(c.q, c.k, c.v, { causal: c.causal })));
    results.forEach((y, i) => {
      const c = calls[i];
      expect(maxError(y.data, referenceAttention(c.q, c.k, c.v, { causal: c.causal }).data)).toBeLessThan(1e-5);
    });
    expect(engine.stats().usedBytes).toBe(0);
    engine.dispose();
  });

  it('interleave with sync calls', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const random = rng(6);
    const q = randomTensor(random, [1, 4, 256, 64]);
    const expected = engine.attention(q, q, q, { causal: true }).data;
    const pending = [engine.attentionAsync(q, q, q, { causal: true }), engine.attentionAsync(q, q, q, { causal: true })];
    const sync = engine.attention(q, q, q, { causal: true }).data;
    for (const y of await Promise.all(pending)) expect(bits(y.data).equals(bits(expected))).toBe(true);
    expect(bits(sync).equals(bits(expected))).toBe(true);
    engine.dispose();
  });

  it('reject a bad call before anything runs', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const q = randomTensor(rng(1), [1, 1, 4, 8]);
    await expect(engine.attentionAsync(q, q, q, { scale: NaN })).rejects.toBeInstanceOf(AttentionError);
    engine.dispose();
  });
});

describe('faults', () => {
  it('a worker that dies fails the call it held, and the engine replaces it', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const pool = (engine as unknown as { runtime: { pool: { workerAt(slot: number): { terminate(): Promise<number> } } } }).runtime.pool;
    const random = rng(7);
    const q = randomTensor(random, [1, 8, 2048, 64]);
    const call = engine.attentionAsync(q, q, q);
    setTimeout(() => void pool.workerAt(1).terminate(), 20);
    await expect(call).rejects.toMatchObject({ code: 'WORKER_FAILED' });
    const small = randomTensor(random, [1, 2, 100, 16]);
    const expected = referenceAttention(small, small, small).data;
    expect(maxError((await engine.attentionAsync(small, small, small)).data, expected)).toBeLessThan(1e-5);
    expect(maxError(engine.attention(small, small, small).data, expected)).toBeLessThan(1e-5);
    expect(engine.stats().usedBytes).toBe(0);
    engine.dispose();
  });

  it('a stalled worker costs a respawn, never memory or correctness', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const one = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const pool = (engine as unknown as { runtime: { pool: { stallMs: number; stallNext(slot: number, ms: number): void } } }).runtime.pool;
    pool.stallMs = 150;
    const random = rng(8);
    const q = randomTensor(random, [1, 4, 256, 32]);
    const expected = Array.from(one.attention(q, q, q).data);
    let reserved = 0;
    for (let round = 0; round < 4; round++) {
      pool.stallNext(1, 2000); // worker 1 sleeps 2 s before its next item: far past stallMs
      expect(Array.from(engine.attention(q, q, q).data)).toEqual(expected);
      // the retired worker's blocks come back once it has exited
      for (let wait = 0; wait < 100 && engine.stats().usedBytes > 0; wait++) await new Promise((r) => setTimeout(r, 20));
      expect(engine.stats().usedBytes).toBe(0);
      if (round === 0) reserved = engine.stats().reservedBytes;
    }
    expect(engine.stats().reservedBytes).toBe(reserved);
    expect(Array.from((await engine.attentionAsync(q, q, q)).data)).toEqual(expected);
    engine.dispose();
    one.dispose();
  });

  it('a pooled sync call that fails gives its blocks back', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const backend = (engine as unknown as { runtime: WasmBackend }).runtime;
    // an op whose items fail on every thread (an op number no runner knows), with a 1 MiB block
    const layout = jobLayout(99, [] as const);
    const failing = {
      name: 'failing',
      inputs: () => [],
      js: () => undefined,
      wasm: {
        layout,
        encode: (_plan: unknown, call: WasmCall) => {
          const job = layout.create();
          job[HEADER.items] = 8;
          call.alloc(1 << 20);
          return { job, scratchBytes: 64 };
        },
        finish: () => undefined,
      },
    };
    for (let round = 0; round < 5; round++) {
      expect(() => backend.run(failing, { flops: 1e9 })).toThrow(/unknown job op/);
      for (let wait = 0; wait < 200 && engine.stats().usedBytes > 0; wait++) await new Promise((r) => setTimeout(r, 20));
      expect(engine.stats().usedBytes).toBe(0);
    }
    const q = randomTensor(rng(9), [1, 4, 256, 32]);
    expect(maxError(engine.attention(q, q, q).data, referenceAttention(q, q, q).data)).toBeLessThan(1e-5);
    engine.dispose();
  });

  it('dispose rejects further calls and lets the process exit', () => {
    const script = `
      import { createEngineSync } from ${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)};
      const e = createEngineSync({ backend: 'wasm-simd', threads: 3 });
      const q = { data: new Float32Array(4 * 300 * 32).fill(0.5), dims: [1, 4, 300, 32] };
      await e.attentionAsync(q, q, q);
      e.attention(q, q, q);
      e.dispose();
      try { e.attention(q, q, q); } catch (err) { console.log(err.code); }`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000, encoding: 'utf8' });
    expect(child.status).toBe(0);
    expect(child.stdout.trim()).toBe('DISPOSED');
  });
});


describe('the crossover', () => {
  it('weighs the bytes a memory-bound call streams: a GEMV over a 1 MiB W is worth the pool, its flops alone are not', () => {
    const engine = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const pool = (engine.runtime as WasmBackend).pool!;
    const bytes = 2 ** 20;
    const flops = bytes / 2; // x·W with one row: 2 flops per 4-byte weight
    expect(flops).toBeLessThan(MIN_PARALLEL_FLOPS);
    expect(pool.worthIt(flops, 0, 16)).toBe(false);
    expect(pool.worthIt(flops, bytes, 16)).toBe(FLOPS_PER_STREAMED_BYTE * bytes >= MIN_PARALLEL_FLOPS);
    expect(pool.worthIt(flops, bytes, 16)).toBe(true);
    expect(pool.worthIt(flops, bytes, 1)).toBe(false); // one item: nothing to share
    expect(pool.worthIt(100, 100, 16)).toBe(false);
    engine.dispose();
  });
});

describe('workers that cannot start', () => {
  it('are retried a few times with a growing delay, then the pool runs on the calling thread and says so', async () => {
    // a module whose import the workers cannot satisfy: (module (import "env" "missing" (func)))
    const bad = new WebAssembly.Module(new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 2, 15, 1, 3, 101, 110, 118, 7, 109, 105, 115, 115, 105, 110, 103, 0, 0]));
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const pool = new WorkerPool(bad, memory, 2);
    for (let wait = 0; wait < 200 && !pool.degraded; wait++) await new Promise((r) => setTimeout(r, 25));
    expect(pool.degraded).toMatch(/failed to start/);
    const spawned = pool.spawned;
    expect(spawned).toBeLessThanOrEqual(2 + 4);
    await new Promise((r) => setTimeout(r, 500));
    expect(pool.spawned).toBe(spawned); // no respawn loop
    expect(pool.worthIt(1e9, 0, 100)).toBe(false);
    pool.dispose();
  });
});
