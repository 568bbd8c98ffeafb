// Adversarial tests of the paged KV pool after the layout and kernel changes (equal head-major slabs
// with keys apart from values, shape-sized split-KV chunks, the touchRows prefetch pass, trim of a
// refused step's slab, per-entry RoPE tables, direct float export): several slabs with pages of one
// sequence in different slabs, forks and copy-on-write across slabs, valueDim != headDim, kvHeads 1
// and 16, pages of 1 / 3 / 17 / 1000, maxBytes pools filled to the last page, maxTokens that are not a
// multiple of pageSize, split-KV lengths around 1024 / 2048 with windows that cut chunks, bits across
// 1 / 2 / 3 threads, batcher retries with RoPE, memory given back after refused steps.
// Written by a second adversarial run; the tests whose titles say "was" failed before their fix.
import { describe, expect, it } from 'vitest';
import { AttentionError, type Engine, type KVPool, type KVSequence, createEngineSync } from '../src/index.js';
import type { PoolStepOptions } from '../src/features/kv-pool.js';
import { BACKENDS, engineFor, maxError, randomTensor, rng } from './helpers.js';
import { type StepData, stepData, thrown, Mirror } from './kv-pool-mirror.js';

interface Tracked {
  sequence: KVSequence;
  mirror: Mirror;
}

/** Runs one step over `chosen` (sync or async) and checks every output against the reference. */
async function checkedStep(pool: KVPool, chosen: Tracked[], data: StepData[], options: PoolStepOptions, async: boolean): Promise<void> {
  const items = chosen.map((x, i) => ({ sequence: x.sequence, ...data[i] }));
  const outputs = async ? await pool.stepAsync(items, options) : pool.step(items, options);
  chosen.forEach((x, i) => {
    const { expected, tol } = x.mirror.step(data[i], options);
    expect(outputs[i].dims).toEqual([data[i].q.dims[0], data[i].q.dims[1], x.mirror.shape.valueDim]);
    const error = maxError(outputs[i].data, expected);
    expect(error, `item ${i} of ${chosen.length}, length ${x.mirror.length}`).toBeLessThanOrEqual(tol);
    expect(x.sequence.length).toBe(x.mirror.length);
  });
}

/** An engine with the heap guards off (as in production: the test suite turns them on). */
function unguardedEngine(): Engine {
  const saved = process.env.WASM_ATTENTION_GUARDS;
  process.env.WASM_ATTENTION_GUARDS = '0';
  try {
    return createEngineSync({ backend: 'wasm-simd', threads: 1 });
  } finally {
    if (saved === undefined) delete process.env.WASM_ATTENTION_GUARDS;
    else process.env.WASM_ATTENTION_GUARDS = saved;
  }
}

describe('kvPool edges: the touch pass at the end of a slab', () => {
  // A pool whose slab is the last thing in WASM memory (nothing after it, memory's end right at its
  // end): with the engine's memory full but for a hole too small for the slab, the slab's reservation
  // grows memory by exactly the slab (its size is a whole number of 64 KiB pages). A decode step with
  // a group of 4 (the row path's addWeightedPaged4) then reads the values of the slab's last page.
  const run = (pageSize: number, slabPages: number): Float32Array => {
    const engine = unguardedEngine();
    try {
      const random = rng(pageSize);
      const shape = { qHeads: 4, kvHeads: 1, headDim: 3, valueDim: 1 };
      // the first call's lasting allocations out of the way
      const warm = engine.kvPool({ kvHeads: 1, headDim: 3, valueDim: 1, pageSize, maxTokens: 100 });
      warm.step([{ sequence: warm.sequence(), ...stepData(random, shape, 1) }]);
      warm.dispose();
      // fill memory to its end, leaving a 128 KiB hole (room for the step's own blocks, not for the slab)
      const hole = engine.tensor([32 * 1024]);
      const holeEnd = (hole as unknown as { ptr: number }).ptr + 128 * 1024;
      const fill = engine.tensor([(engine.stats().reservedBytes - holeEnd) / 4]);
      hole.release();
      const pool = engine.kvPool({ kvHeads: 1, headDim: 3, valueDim: 1, pageSize, maxTokens: slabPages * pageSize });
      const reserved = engine.stats().reservedBytes;
      const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
      const length = slabPages * pageSize - 1;
      const prefix = { k: randomTensor(random, [1, length, 3]), v: randomTensor(random, [1, length, 1]) };
      a.sequence.append(prefix.k, prefix.v);
      a.mirror.append(prefix.k, prefix.v);
      // the slab sits at the very end of memory
      expect(engine.stats().reservedBytes).toBe(reserved + pool.stats().bytes);
      const data = stepData(random, shape, 1);
      const [y] = pool.step([{ sequence: a.sequence, ...data }]);
      const { expected, tol } = a.mirror.step(data);
      expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
      fill.release();
      pool.dispose();
      return y.data;
    } finally {
      engine.dispose();
    }
  };

  it('pages of 16 with Dv 1 (each page\'s values one 64-byte line): fine', () => {
    run(16, 4096);
  });

  it('pages of 17 with Dv 1 at the end of memory: the decode step equals the reference (was: a trap, the prefetch pass read 12 bytes past the slab)', () => {
    // 4096 pages of 17 positions × (3 + 1) floats = 17 × 64 KiB; the last page's values are 68 bytes,
    // and touchRows loads 16 bytes at 64 bytes in: 12 bytes past the end of the slab and of memory
    run(17, 4096);
  });
});

describe.each(BACKENDS)('kvPool edges on %s', (backend) => {
  const engine = engineFor(backend);

  it('16 kv heads, Dv != Dk, several slabs: interleaved sequences take pages from every slab; forks copy-on-write across slabs', async () => {
    // pages of 4·8·16·(24 + 40) = 32 KiB: 256 pages a slab; maxTokens 6000 → 750 pages in 3 equal slabs of 250
    const shape = { qHeads: 32, kvHeads: 16, headDim: 24, valueDim: 40 };
    const random = rng(401);
    const pool = engine.kvPool({ kvHeads: 16, headDim: 24, valueDim: 40, pageSize: 8, maxTokens: 6000 });
    expect(pool.stats().pages).toBe(750);
    const seqs: Tracked[] = Array.from({ length: 3 }, () => ({ sequence: pool.sequence(), mirror: new Mirror(shape) }));
    // fill the first slab with sequence 0's pages, then the others interleave into the next slabs
    const prefill = stepData(random, shape, 1995);
    seqs[0].sequence.append(prefill.k, prefill.v);
    seqs[0].mirror.append(prefill.k, prefill.v);
    const steps = async (list: number[][]): Promise<void> => {
      for (const sizes of list) await checkedStep(pool, seqs, sizes.map((n) => stepData(random, shape, n)), { rope: { dims: 8 } }, sizes[0] === 1);
    };
    await steps([[3, 5, 7], [1, 1, 1], [9, 1, 30], [1, 70, 1]]);
    // sequences 1 and 2 take pages turn about, 101 positions at a time, into the second and third slabs
    for (let t = 0; t < 15; t++) {
      for (const x of [seqs[1], seqs[2]]) {
        const more = stepData(random, shape, 101);
        x.sequence.append(more.k, more.v);
        x.mirror.append(more.k, more.v);
      }
    }
    await steps([[1, 1, 1], [2, 1, 4], [1, 2, 1]]);
    expect(pool.stats().pagesUsed).toBeGreaterThan(500);
    if (backend !== 'js') expect(pool.stats().bytes).toBe(3 * 250 * 32 * 1024);
    // forks of a sequence whose shared, partly filled last page lies in a later slab than the free pages
    const parent = seqs[2];
    const forks: Tracked[] = [0, 1].map(() => ({ sequence: parent.sequence.fork(), mirror: parent.mirror.clone() }));
    const group = [parent, ...forks];
    for (const n of [1, 3, 1]) await checkedStep(pool, group, group.map(() => stepData(random, shape, n)), { window: { left: 1000 } }, n === 3);
    for (const x of [...seqs, ...forks]) x.sequence.dispose();
    expect(pool.stats()).toMatchObject({ pagesUsed: 0, sequences: 0 });
    pool.dispose();
  });

  it('kvHeads 1, pages of 1000 (a few pages a slab), split-KV over pages in three slabs, Dv 8 of Dk 40', async () => {
    // pages of 4·1000·48 = 192000 B: 43 a slab; maxTokens 100000 → 100 pages in 3 slabs of 34
    const shape = { qHeads: 4, kvHeads: 1, headDim: 40, valueDim: 8 };
    const random = rng(402);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 40, valueDim: 8, pageSize: 1000, maxTokens: 100000 });
    const seqs: Tracked[] = Array.from({ length: 36 }, () => ({ sequence: pool.sequence(), mirror: new Mirror(shape) }));
    // 34 sequences of 1 position take the first slab's 34 pages; the last two then grow into the next slabs
    await checkedStep(pool, seqs.slice(0, 34), seqs.slice(0, 34).map(() => stepData(random, shape, 1)), {}, false);
    for (const x of seqs.slice(0, 33)) x.sequence.dispose();
    const [a, b] = seqs.slice(34);
    // a's pages: 33 freed pages of slab 0 first, then slab 1 (pages taken lowest first from the free list)
    for (const [na, nb] of [[1500, 900], [1, 1], [700, 1300], [2, 4], [1, 1]]) {
      await checkedStep(pool, [a, b], [stepData(random, shape, na), stepData(random, shape, nb)], { window: { left: 1100 }, softcap: 8 }, na === 1);
    }
    pool.dispose();
  });

  it('pages of 3 and a maxTokens that is no multiple of them: every position of the last page is usable', async () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 5, valueDim: 7 };
    const random = rng(403);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 5, valueDim: 7, pageSize: 3, maxTokens: 1000 });
    expect(pool.stats().pages).toBe(334);
    const a: Tracked = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const b: Tracked = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    await checkedStep(pool, [a, b], [stepData(random, shape, 500), stepData(random, shape, 499)], {}, false);
    await checkedStep(pool, [a, b], [stepData(random, shape, 1), stepData(random, shape, 1)], {}, false);
    await checkedStep(pool, [b], [stepData(random, shape, 1)], {}, false);
    expect(pool.stats().pagesUsed).toBe(334);
    const error = thrown(() => pool.step([{ sequence: a.sequence, ...stepData(random, shape, 1) }]));
    expect((error as AttentionError).code).toBe('CACHE_FULL');
    pool.dispose();
  });

  it('a maxBytes pool filled to its last page, then forks and copy-on-write with every page taken', async () => {
    const shape = { qHeads: 16, kvHeads: 16, headDim: 64, valueDim: 32 };
    const random = rng(404);
    // pages of 4·4·16·96 = 24 KiB; 20 MiB: 853 pages whole, 341 a slab → 3 slabs of 284 = 852 pages
    const maxBytes = 20 * 2 ** 20;
    const pool = engine.kvPool({ kvHeads: 16, headDim: 64, valueDim: 32, pageSize: 4, maxBytes });
    const pages = pool.stats().pages;
    expect(pages).toBe(852);
    const a: Tracked = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const tokens = pages * 4;
    const prefix = stepData(random, shape, tokens - 7);
    a.sequence.append(prefix.k, prefix.v);
    a.mirror.append(prefix.k, prefix.v);
    await checkedStep(pool, [a], [stepData(random, shape, 2)], {}, false);
    if (backend !== 'js') expect(pool.stats().bytes).toBeLessThanOrEqual(maxBytes);
    // one page left; a's partly filled last page shared with a fork: one copy fits, then a second writer does not
    const f: Tracked = { sequence: a.sequence.fork(), mirror: a.mirror.clone() };
    await checkedStep(pool, [f], [stepData(random, shape, 1)], { window: { left: 50 } }, true);
    const g = f.sequence.fork();
    const error = thrown(() => pool.step([{ sequence: g, ...stepData(random, shape, 1) }]));
    expect((error as AttentionError).code).toBe('CACHE_FULL');
    g.dispose();
    await checkedStep(pool, [a], [stepData(random, shape, 1)], { window: { left: 50 } }, false);
    expect(pool.stats().pagesUsed).toBe(pages);
    pool.dispose();
  });

  it('split-KV chunk boundaries: lengths around 1024 and 2048, pages of 1 / 3 / 7 / 100 / 128, kv heads 1 / 3 / 5, windows that cut chunks', async () => {
    const cases: Array<{ kvHeads: number; pageSize: number; length: number; n: number; left?: number }> = [
      { kvHeads: 1, pageSize: 1, length: 1023, n: 1 },
      { kvHeads: 1, pageSize: 3, length: 1024, n: 1 },
      { kvHeads: 1, pageSize: 7, length: 1025, n: 4, left: 513 },
      { kvHeads: 3, pageSize: 100, length: 2047, n: 2, left: 700 },
      { kvHeads: 1, pageSize: 128, length: 2048, n: 1, left: 511 },
      { kvHeads: 5, pageSize: 3, length: 2049, n: 3, left: 1 },
      { kvHeads: 1, pageSize: 7, length: 9000, n: 1, left: 600 },
      { kvHeads: 3, pageSize: 1, length: 4100, n: 4, left: 2000 },
    ];
    for (const c of cases) {
      const shape = { qHeads: 2 * c.kvHeads, kvHeads: c.kvHeads, headDim: 12, valueDim: 20 };
      const random = rng(c.length + c.pageSize);
      const pool = engine.kvPool({ kvHeads: c.kvHeads, headDim: 12, valueDim: 20, pageSize: c.pageSize, maxTokens: 10000 });
      const a: Tracked = { sequence: pool.sequence(), mirror: new Mirror(shape) };
      const options: PoolStepOptions = c.left !== undefined ? { window: { left: c.left }, rope: { dims: 4 } } : { rope: {} };
      const prefix = stepData(random, shape, c.length - c.n);
      a.sequence.append(prefix.k, prefix.v);
      a.mirror.append(prefix.k, prefix.v);
      await checkedStep(pool, [a], [stepData(random, shape, c.n)], options, true);
      await checkedStep(pool, [a], [stepData(random, shape, 1)], options, false);
      pool.dispose();
    }
  });
});

describe('kvPool edges: bits', () => {
  it('1, 2 and 3 threads, and the item alone or with others: the same bits over several slabs, cut and uncut items', async () => {
    const shape = { qHeads: 6, kvHeads: 3, headDim: 20, valueDim: 12 };
    // pages of 4·64·3·32 = 24 KiB: 341 a slab; 800 pages → 3 slabs
    const run = async (engine: Engine, withOthers: boolean): Promise<number[][]> => {
      const random = rng(501);
      const pool = engine.kvPool({ kvHeads: 3, headDim: 20, valueDim: 12, pageSize: 64, maxTokens: 800 * 64 });
      const a = pool.sequence();
      const others = [pool.sequence(), pool.sequence()];
      const out: number[][] = [];
      for (const [n, m] of [[700, 9000], [1, 1], [3000, 40], [2, 1], [1, 3], [4, 1]]) {
        const data = stepData(random, shape, n);
        const noise = others.map(() => stepData(random, shape, m));
        const items = [{ sequence: a, ...data }, ...(withOthers ? others.map((sequence, i) => ({ sequence, ...noise[i] })) : [])];
        const ys = await pool.stepAsync(items, { window: { left: 1500 }, rope: { dims: 6, interleaved: true } });
        out.push(Array.from(ys[0].data));
      }
      pool.dispose();
      return out;
    };
    const engines = [1, 2, 3].map((threads) => createEngineSync({ backend: 'wasm-simd', threads }));
    const base = await run(engines[0], false);
    expect(await run(engines[0], true)).toEqual(base);
    expect(await run(engines[1], true)).toEqual(base);
    expect(await run(engines[2], false)).toEqual(base);
    for (const e of engines) e.dispose();
  });

  it('export of a sequence spread over three slabs imports into a pool of other page size with the same next outputs', () => {
    const shape = { qHeads: 16, kvHeads: 16, headDim: 32, valueDim: 16 };
    const engine = engineFor('wasm-simd');
    const random = rng(502);
    // pages of 4·16·16·48 = 48 KiB: 170 a slab; 400 pages in 3 slabs
    const pool = engine.kvPool({ kvHeads: 16, headDim: 32, valueDim: 16, pageSize: 16, maxTokens: 400 * 16 });
    const filler = pool.sequence();
    const a = pool.sequence();
    for (let t = 0; t < 12; t++) {
      for (const s of [filler, a]) {
        const d = stepData(random, shape, 250 + t);
        s.append(d.k, d.v);
      }
    }
    const bytes = a.export();
    const other = engine.kvPool({ kvHeads: 16, headDim: 32, valueDim: 16, pageSize: 3, maxTokens: 4000 });
    const b = other.import(bytes);
    expect(Buffer.compare(b.export(), bytes)).toBe(0);
    const next = stepData(random, shape, 2);
    const [ya] = pool.step([{ sequence: a, ...next }], { rope: {} });
    const [yb] = other.step([{ sequence: b, ...next }], { rope: {} });
    expect(maxError(yb.data, ya.data)).toBeLessThanOrEqual(1e-5);
    pool.dispose();
    other.dispose();
  });
});

describe('kvPool edges: memory after refused steps', () => {
  const big = (random: () => number, n: number): StepData => stepData(random, { qHeads: 8, kvHeads: 1, headDim: 64, valueDim: 64 }, n);

  it('an async step refused OUT_OF_MEMORY after reserving its slab gives it back', async () => {
    const engine = createEngineSync({ backend: 'wasm-simd', maxMemoryBytes: 4 * 2 ** 20 });
    const pool = engine.kvPool({ kvHeads: 1, headDim: 64, pageSize: 16, maxBytes: 2 ** 20 });
    const random = rng(601);
    const a = pool.sequence();
    const before = { used: engine.stats().usedBytes, pool: pool.stats() };
    const error = await pool.stepAsync([{ sequence: a, ...big(random, 1200) }]).then(() => undefined, (e: unknown) => e);
    expect((error as AttentionError).code).toBe('OUT_OF_MEMORY');
    expect({ used: engine.stats().usedBytes, pool: pool.stats() }).toEqual(before);
    expect(a.length).toBe(0);
    pool.dispose();
    engine.dispose();
  });

  it('batcher: a batch refused OUT_OF_MEMORY runs again call by call; RoPE outputs equal the reference and memory comes back', async () => {
    const shape = { qHeads: 8, kvHeads: 1, headDim: 64, valueDim: 64 };
    const engine = createEngineSync({ backend: 'wasm-simd', maxMemoryBytes: 5 * 2 ** 20 });
    const pool = engine.kvPool({ kvHeads: 1, headDim: 64, pageSize: 16, maxBytes: 2 ** 20 });
    const random = rng(602);
    const seqs: Tracked[] = Array.from({ length: 3 }, () => ({ sequence: pool.sequence(), mirror: new Mirror(shape) }));
    const options: PoolStepOptions = { rope: { dims: 32 } };
    for (const x of seqs) await checkedStep(pool, [x], [stepData(random, shape, 5)], options, false);
    const used = engine.stats().usedBytes;
    const batcher = pool.batcher();
    // together the three calls' q and outputs do not fit in the engine's memory; each alone does
    const data = seqs.map(() => stepData(random, shape, 300));
    const outputs = await Promise.all(seqs.map((x, i) => batcher.step(x.sequence, data[i].q, data[i].k, data[i].v, options)));
    seqs.forEach((x, i) => {
      const { expected, tol } = x.mirror.step(data[i], options);
      expect(maxError(outputs[i].data, expected)).toBeLessThanOrEqual(tol);
    });
    // and the next step of each, batched again
    const next = seqs.map(() => stepData(random, shape, 1));
    const ys = await Promise.all(seqs.map((x, i) => batcher.step(x.sequence, next[i].q, next[i].k, next[i].v, options)));
    seqs.forEach((x, i) => {
      const { expected, tol } = x.mirror.step(next[i], options);
      expect(maxError(ys[i].data, expected)).toBeLessThanOrEqual(tol);
    });
    expect(engine.stats().usedBytes).toBe(used);
    pool.dispose();
    engine.dispose();
  });

  it('a sync step refused OUT_OF_MEMORY while an async step of the pool runs gives its slab back when that step settles (was: kept until dispose)', async () => {
    // pages of 8 KiB, 1024 a slab of 8 MiB (maxBytes 24 MiB → 3 slabs): a holds the whole first slab
    const engine = createEngineSync({ backend: 'wasm-simd', maxMemoryBytes: 26 * 2 ** 20, threads: 2 });
    const pool = engine.kvPool({ kvHeads: 1, headDim: 64, pageSize: 16, maxBytes: 24 * 2 ** 20 });
    expect(pool.stats().pages).toBe(3072);
    const random = rng(603);
    const a = pool.sequence();
    const b = pool.sequence();
    const fill = big(random, 1024 * 16 - 1);
    a.append(fill.k, fill.v);
    const before = { used: engine.stats().usedBytes, bytes: pool.stats().bytes };
    expect(before.bytes).toBe(8 * 2 ** 20);
    const running = pool.stepAsync([{ sequence: a, ...big(random, 1) }]);
    // let it start (its pages written, its call on the workers)
    for (let t = 0; t < 5 && a.length === 1024 * 16 - 1; t++) await Promise.resolve();
    expect(a.length).toBe(1024 * 16);
    // b needs a page of a second slab, and its q and output [8, 3000, 64] do not fit in the engine's memory
    const error = thrown(() => pool.step([{ sequence: b, ...big(random, 3000) }]));
    expect((error as AttentionError).code).toBe('OUT_OF_MEMORY');
    await running;
    expect(b.length).toBe(0);
    expect(pool.stats().pagesUsed).toBe(1024);
    // the second slab holds no page, yet stays reserved until the pool is disposed
    expect({ used: engine.stats().usedBytes, bytes: pool.stats().bytes }).toEqual(before);
    pool.dispose();
    engine.dispose();
  });
});
