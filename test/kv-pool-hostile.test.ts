// Adversarial tests of the paged KV pool (src/features/kv-pool.ts, batcher.ts, ops/paged-attention,
// assembly/f32-attention-paged-simd.ts): hostile items and inputs, forged sequences, capacity edges
// (copy-on-write of a page shared by several items of one step, maxBytes), export/import with Node
// Buffers and empty sequences, NaN/Inf in values a row must not see, odd shapes and the split-KV path
// against the float64 reference, async lifetimes, the batcher under load, memory that stays bounded.
// Written by an adversarial run; the tests whose titles say "was" failed before their fix.
import { describe, expect, it } from 'vitest';
import { AttentionError, type Engine, type KVPool, KVSequence, createEngineSync } from '../src/index.js';
import type { PoolStepOptions } from '../src/features/kv-pool.js';
import { BACKENDS, engineFor, maxError, randomTensor, refused, rng } from './helpers.js';
import { type Shape, type StepData, type T, stepData, thrown, Mirror } from './kv-pool-mirror.js';

/** What a promise rejected with (undefined when it resolved). */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  return undefined;
}

interface OddCase extends Shape {
  pageSize: number;
  options?: PoolStepOptions;
  /** Positions of each step, per sequence (rows), steps in order (columns). */
  plan: number[][];
}

// Shapes and paths the existing suite does not reach: head dims 1 and 257, a GQA group of 16 (tile
// path on a decode step) and of 80 (more than PAGED_ROW_CHUNK rows per position), prefill chunks of
// more than 64 rows, the split-KV path with pages of 3, 7 and 1000, with a window, softcap and
// partial interleaved RoPE, scale 0 and a negative scale.
const oddCases: Array<[string, OddCase]> = [
  ['D 1, Dv 2, pages of 1', { qHeads: 2, kvHeads: 2, headDim: 1, valueDim: 2, pageSize: 1, plan: [[3, 1, 1, 7], [1, 1, 2, 1]] }],
  ['D 257, Dv 31, GQA 4/1, pages of 5', { qHeads: 4, kvHeads: 1, headDim: 257, valueDim: 31, pageSize: 5, plan: [[9, 1, 1, 13, 1], [2, 1, 3, 1, 1]] }],
  ['group 16 (decode on the tile path), pages of 3', { qHeads: 16, kvHeads: 1, headDim: 16, valueDim: 16, pageSize: 3, plan: [[20, 1, 1, 1, 4], [1, 1, 5, 1, 1]] }],
  ['group 80 (> 64 rows a position), pages of 8', { qHeads: 80, kvHeads: 1, headDim: 8, valueDim: 12, pageSize: 8, plan: [[9, 1, 2, 1], [1, 1, 1, 3]] }],
  ['prefill of 70 with group 4, pages of 16', { qHeads: 8, kvHeads: 2, headDim: 8, valueDim: 8, pageSize: 16, plan: [[70, 1, 70, 1], [1, 70, 1, 2]] }],
  ['split-KV, pages of 3', { qHeads: 4, kvHeads: 2, headDim: 8, valueDim: 8, pageSize: 3, plan: [[1100, 1, 4, 1], [600, 600, 1, 3]] }],
  ['split-KV, pages of 7, window 300, softcap 5', { qHeads: 4, kvHeads: 1, headDim: 8, valueDim: 8, pageSize: 7, options: { window: { left: 300 }, softcap: 5 }, plan: [[1500, 1, 2, 4], [3, 1030, 1, 1]] }],
  ['split-KV, pages of 1000, RoPE dims 8 of 16 interleaved', { qHeads: 2, kvHeads: 1, headDim: 16, valueDim: 8, pageSize: 1000, options: { rope: { dims: 8, interleaved: true } }, plan: [[1200, 1, 1, 3], [1, 1, 1030, 2]] }],
  ['split-KV, window 0 (only itself)', { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8, pageSize: 16, options: { window: { left: 0 } }, plan: [[1100, 1, 2], [1, 1024, 4]] }],
  ['split-KV with group 52 (> ATT_BR rows, 48 or 40) and 52 × 4 positions', { qHeads: 52, kvHeads: 1, headDim: 4, valueDim: 4, pageSize: 16, plan: [[1030, 1, 4]] }],
  ['scale 0 (uniform weights)', { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8, pageSize: 4, options: { scale: 0 }, plan: [[5, 1, 1100, 1], [2, 3, 1, 1]] }],
  ['negative scale', { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8, pageSize: 4, options: { scale: -0.7 }, plan: [[5, 1, 3, 1], [2, 3, 1, 1]] }],
];

describe.each(BACKENDS)('kvPool hostile on %s', (backend) => {
  const engine = engineFor(backend);
  const small = (pool: KVPool, random: () => number, n: number): StepData => stepData(random, { qHeads: pool.kvHeads, kvHeads: pool.kvHeads, headDim: pool.headDim, valueDim: pool.valueDim }, n);

  it.each(oddCases)('odd shapes and paths equal the reference: %s', async (_, c) => {
    const random = rng(c.headDim * 7 + c.pageSize * 3 + c.qHeads);
    const pool = engine.kvPool({ kvHeads: c.kvHeads, headDim: c.headDim, valueDim: c.valueDim, pageSize: c.pageSize, maxTokens: 6000 });
    const sequences = c.plan.map(() => ({ sequence: pool.sequence(), mirror: new Mirror(c) }));
    const options = c.options ?? {};
    const steps = c.plan[0].length;
    for (let s = 0; s < steps; s++) {
      const data = c.plan.map((row) => stepData(random, c, row[s]));
      const items = sequences.map((x, i) => ({ sequence: x.sequence, ...data[i] }));
      const outputs = s % 2 === 0 ? pool.step(items, options) : await pool.stepAsync(items, options);
      sequences.forEach((x, i) => {
        const { expected, tol } = x.mirror.step(data[i], options);
        expect(outputs[i].dims).toEqual([c.qHeads, data[i].q.dims[1], c.valueDim]);
        expect(maxError(outputs[i].data, expected)).toBeLessThanOrEqual(tol);
      });
    }
    pool.dispose();
  });

  it('items of one step with different query head counts', () => {
    const random = rng(100);
    const pool = engine.kvPool({ kvHeads: 2, headDim: 8, valueDim: 6, pageSize: 4, maxTokens: 4096 });
    const shapes = [2, 8, 32, 4].map((qHeads) => ({ qHeads, kvHeads: 2, headDim: 8, valueDim: 6 }));
    const xs = shapes.map((shape) => ({ shape, sequence: pool.sequence(), mirror: new Mirror(shape) }));
    for (const n of [[5, 1, 3, 1100], [1, 1, 1, 1], [2, 70, 1, 3]]) {
      const data = xs.map((x, i) => stepData(random, x.shape, n[i]));
      const ys = pool.step(xs.map((x, i) => ({ sequence: x.sequence, ...data[i] })), { softcap: 10 });
      xs.forEach((x, i) => {
        const { expected, tol } = x.mirror.step(data[i], { softcap: 10 });
        expect(maxError(ys[i].data, expected)).toBeLessThanOrEqual(tol);
      });
    }
    pool.dispose();
  });

  it('a step with two forks that share a partly filled page fits when one copy does (was: refused CACHE_FULL)', () => {
    // pages of 4, 2 pages in all. a holds 2 positions (1 page); b = a.fork() shares that page.
    // Stepping a and b by 1 each needs 1 new page (the first writer copies the shared page, the
    // second then owns it alone), and 1 is free: reserve() counts a copy for each of them.
    const shape = { qHeads: 1, kvHeads: 1, headDim: 4, valueDim: 4 };
    const random = rng(101);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 8 });
    const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const prompt = stepData(random, shape, 2);
    pool.step([{ sequence: a.sequence, ...prompt }]);
    a.mirror.step(prompt, {});
    const b = { sequence: a.sequence.fork(), mirror: a.mirror.clone() };
    const da = stepData(random, shape, 1);
    const db = stepData(random, shape, 1);
    let outputs: Array<{ data: Float32Array }> | undefined;
    const error = thrown(() => (outputs = pool.step([{ sequence: a.sequence, ...da }, { sequence: b.sequence, ...db }])));
    expect(error).toBeUndefined();
    expect([a.sequence.length, b.sequence.length, pool.stats().pagesUsed]).toEqual([3, 3, 2]);
    for (const [x, d, y] of [[a, da, outputs![0]], [b, db, outputs![1]]] as const) {
      const { expected, tol } = x.mirror.step(d, {});
      expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    }
    pool.dispose();
  });

  it('three forks stepping together after a shared partial page each see their own history', () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8 };
    const random = rng(102);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 8, pageSize: 4, maxTokens: 64 });
    const root = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const prompt = stepData(random, shape, 6);
    pool.step([{ sequence: root.sequence, ...prompt }]);
    root.mirror.step(prompt, {});
    const fork1 = { sequence: root.sequence.fork(), mirror: root.mirror.clone() };
    const fork2 = { sequence: fork1.sequence.fork(), mirror: root.mirror.clone() }; // a fork of a fork
    const all = [root, fork1, fork2];
    for (let round = 0; round < 3; round++) {
      const data = all.map((_, i) => stepData(random, shape, 1 + ((i + round) % 3)));
      const ys = pool.step(all.map((x, i) => ({ sequence: x.sequence, ...data[i] })));
      all.forEach((x, i) => {
        const { expected, tol } = x.mirror.step(data[i], {});
        expect(maxError(ys[i].data, expected)).toBeLessThanOrEqual(tol);
      });
    }
    // dispose in a scrambled order: the root first
    root.sequence.dispose();
    const data = stepData(random, shape, 1);
    const [y] = pool.step([{ sequence: fork2.sequence, ...data }]);
    const { expected, tol } = fork2.mirror.step(data, {});
    expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    fork2.sequence.dispose();
    fork1.sequence.dispose();
    expect(pool.stats()).toMatchObject({ pagesUsed: 0, sequences: 0 });
    pool.dispose();
  });

  it('a pool made with maxBytes reserves at most maxBytes (was: up to a whole extra 8 MiB slab)', () => {
    // pages of 16 positions × (64 + 64) floats = 8 KiB; slabs of at most 1024 pages, all of one size.
    // maxBytes for 1025 pages: two slabs of 512 pages (1024 pages in all, 1 fewer than maxBytes would
    // hold if slabs could differ), and never more bytes than maxBytes
    const pageBytes = 4 * 16 * (64 + 64);
    const maxBytes = 1025 * pageBytes;
    const before = engine.stats().usedBytes;
    const pool = engine.kvPool({ kvHeads: 1, headDim: 64, pageSize: 16, maxBytes });
    const capacity = pool.stats().pages;
    expect(capacity).toBe(1024);
    const s = pool.sequence();
    const random = rng(103);
    for (let i = 0; i < capacity; i += 32) {
      const n = Math.min(32, capacity - i) * 16;
      s.append(randomTensor(random, [1, n, 64]), randomTensor(random, [1, n, 64]));
    }
    expect(pool.stats().pagesUsed).toBe(capacity);
    expect(pool.stats().bytes).toBeLessThanOrEqual(maxBytes);
    expect(engine.stats().usedBytes - before).toBeLessThanOrEqual(maxBytes + 4096);
    refused(() => s.append(randomTensor(random, [1, 1, 64]), randomTensor(random, [1, 1, 64])), 'CACHE_FULL', 'k');
    pool.dispose();
    expect(engine.stats().usedBytes).toBe(before);
  });

  it('pool.import takes a Node Buffer holding an export (was: refused, Buffer.slice does not copy)', () => {
    const random = rng(104);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const a = pool.sequence();
    const d = small(pool, random, 3);
    pool.step([{ sequence: a, ...d }]);
    const bytes = a.export();
    // what fs.readFileSync / a socket hands back; small Buffers live at an offset of a shared pool
    const buffer = Buffer.from(bytes);
    let imported: KVSequence | undefined;
    const error = thrown(() => (imported = pool.import(buffer)));
    expect(error).toBeUndefined();
    expect(imported?.length).toBe(3);
    expect(Array.from(imported!.export())).toEqual(Array.from(bytes));
    pool.dispose();
  });

  it('the export of an empty sequence imports back (was: refused)', () => {
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const bytes = pool.sequence().export();
    let imported: KVSequence | undefined;
    const error = thrown(() => (imported = pool.import(bytes)));
    expect(error).toBeUndefined();
    expect(imported?.length).toBe(0);
    pool.dispose();
  });

  it('an import that does not fit is refused CACHE_FULL naming "bytes" (was: "items")', () => {
    const random = rng(105);
    const big = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 1000 });
    const s = big.sequence();
    s.append(randomTensor(random, [1, 500, 4]), randomTensor(random, [1, 500, 4]));
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 100 });
    const before = { pool: pool.stats(), used: engine.stats().usedBytes };
    refused(() => pool.import(s.export()), 'CACHE_FULL', 'bytes');
    expect({ pool: pool.stats(), used: engine.stats().usedBytes }).toEqual(before);
    big.dispose();
    pool.dispose();
  });

  it('export/import fuzz: every corruption is refused with INVALID_ARGUMENT "bytes" and changes nothing', () => {
    const random = rng(106);
    const pool = engine.kvPool({ kvHeads: 2, headDim: 4, valueDim: 3, pageSize: 4, maxTokens: 256 });
    const a = pool.sequence();
    a.append(randomTensor(random, [2, 9, 4]), randomTensor(random, [2, 9, 3]));
    const bytes = a.export();
    const snapshot = (): unknown => [pool.stats(), engine.stats().usedBytes];
    const before = snapshot();
    const header = (field: number, value: number): Uint8Array => {
      const b = bytes.slice();
      new DataView(b.buffer).setUint32(4 * field, value, true);
      return b;
    };
    const bad: unknown[] = [
      new Uint8Array(0), bytes.subarray(0, 31), bytes.subarray(0, 32), bytes.subarray(0, bytes.length - 1),
      (() => { const b = new Uint8Array(bytes.length + 4); b.set(bytes); return b; })(),
      header(0, 0x564b4156), header(1, 2), header(2, 1), header(3, 1), header(4, 5), header(5, 4),
      header(6, 0), header(6, 10), header(6, 0xffffffff), header(6, 0x40000000),
      new DataView(bytes.buffer), Array.from(bytes), 'WAKV', null, undefined, new Float32Array(bytes.buffer.slice(0)),
    ];
    for (const b of bad) refused(() => pool.import(b as Uint8Array), 'INVALID_ARGUMENT', 'bytes');
    // random byte flips in the header
    for (let i = 0; i < 200; i++) {
      const b = bytes.slice();
      const at = Math.floor(random() * 28);
      b[at] ^= 1 << Math.floor(random() * 8);
      refused(() => pool.import(b), 'INVALID_ARGUMENT', 'bytes');
    }
    expect(snapshot()).toEqual(before);
    // the import into a pool of another page size holds the same positions
    const other = engine.kvPool({ kvHeads: 2, headDim: 4, valueDim: 3, pageSize: 1, maxTokens: 9 });
    const c = other.import(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
    expect(Array.from(c.export())).toEqual(Array.from(bytes));
    other.dispose();
    pool.dispose();
  });

  it('an object made with KVSequence.prototype is refused as INVALID_ARGUMENT (was: a TypeError)', () => {
    const random = rng(107);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const fake = Object.create(KVSequence.prototype) as KVSequence;
    const error = thrown(() => pool.step([{ sequence: fake, ...small(pool, random, 1) }]));
    expect(error).toBeInstanceOf(AttentionError);
    expect((error as AttentionError).code).toBe('INVALID_ARGUMENT');
    expect((error as AttentionError).argument).toBe('items[0].sequence');
    pool.dispose();
  });

  it('a sequence cannot be forged: the constructor refuses outside callers, and a handle has nothing to edit (was: new KVSequence(pool, pages, length) wrote into another sequence)', () => {
    const random = rng(108);
    const shape = { qHeads: 1, kvHeads: 1, headDim: 4, valueDim: 4 };
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const a = pool.sequence();
    pool.step([{ sequence: a, ...stepData(random, shape, 3) }]);
    const before = Array.from(a.export());
    const Ctor = KVSequence as unknown as new (...args: unknown[]) => KVSequence;
    for (const args of [[pool, [0], 1], [Symbol('KVSequence'), { pool, pages: [0], length: 1, busy: 0, disposed: false }]]) {
      const error = thrown(() => new Ctor(...args));
      expect(error).toBeInstanceOf(AttentionError);
      expect((error as AttentionError).code).toBe('INVALID_ARGUMENT');
    }
    expect(Object.keys(a)).toEqual([]);
    expect((a as unknown as { pages?: unknown }).pages).toBeUndefined();
    expect(Array.from(a.export())).toEqual(before);
    pool.dispose();
  });

  it('a null item and a hole are both refused as INVALID_ARGUMENT (was: INVALID_OPTION for null)', () => {
    const random = rng(109);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const a = pool.sequence();
    // eslint-disable-next-line no-sparse-arrays
    refused(() => pool.step([, { sequence: a, ...small(pool, random, 1) }] as never), 'INVALID_ARGUMENT', 'items[0]');
    refused(() => pool.step([null] as never), 'INVALID_ARGUMENT', 'items[0]');
    expect(a.length).toBe(0);
    pool.dispose();
  });

  it('an items array whose element getter throws is refused as INVALID_ARGUMENT (was: the plain Error escaped)', () => {
    const random = rng(110);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const a = pool.sequence();
    const items = [{ sequence: a, ...small(pool, random, 1) }];
    Object.defineProperty(items, 0, { get: () => { throw new Error('hostile getter'); } });
    const error = thrown(() => pool.step(items));
    expect(error).toBeInstanceOf(AttentionError);
    expect((error as AttentionError).argument).toMatch(/^items/);
    // a proxy whose get trap throws
    const proxy = new Proxy([{ sequence: a, ...small(pool, random, 1) }], {
      get(target, p) {
        if (p === '0') throw new Error('trap');
        return Reflect.get(target, p);
      },
    });
    const error2 = thrown(() => pool.step(proxy));
    expect(error2).toBeInstanceOf(AttentionError);
    expect(a.length).toBe(0);
    pool.dispose();
  });

  it('the items array is read by index, not through its own iterator (was: the step ran items it was not given)', () => {
    const random = rng(111);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const a = pool.sequence();
    const b = pool.sequence();
    const items = [{ sequence: a, ...small(pool, random, 1) }];
    const other = { sequence: b, ...small(pool, random, 1) };
    (items as unknown as { [Symbol.iterator]: () => Iterator<unknown> })[Symbol.iterator] = function* () {
      yield other;
    };
    const error = thrown(() => pool.step(items));
    // either the items as indexed (a steps) or a refusal; never b, which was not in items[0..length)
    if (error === undefined) expect([a.length, b.length]).toEqual([1, 0]);
    else expect(error).toBeInstanceOf(AttentionError);
    expect(b.length).toBe(0);
    pool.dispose();
  });

  it('getters on items, tensors and options are read once; refusals leave no trace', () => {
    const random = rng(112);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const a = pool.sequence();
    const counts = new Map<string, number>();
    const count = <V>(name: string, value: V): V => {
      counts.set(name, (counts.get(name) ?? 0) + 1);
      return value;
    };
    const d = small(pool, random, 2);
    const tensor = (name: string, t: T): object => ({
      get data() { return count(`${name}.data`, t.data); },
      get dims() { return count(`${name}.dims`, t.dims); },
    });
    const item = {
      get sequence() { return count('sequence', a); },
      get q() { return count('q', tensor('q', d.q)); },
      get k() { return count('k', tensor('k', d.k)); },
      get v() { return count('v', tensor('v', d.v)); },
    };
    const options = { get scale() { return count('scale', 0.5); }, get window() { return count('window', { get left() { return count('left', 1); } }); } };
    pool.step([item as never], options);
    for (const [name, n] of counts) expect([name, n]).toEqual([name, 1]);
    expect(counts.size).toBe(13); // sequence q k v, 3 tensors × (data, dims), scale window left
    // refusals change nothing, even after the first item was read
    const before = [a.length, pool.stats(), engine.stats().usedBytes];
    const b = pool.sequence();
    const shape = { qHeads: 1, kvHeads: 1, headDim: 4, valueDim: 4 };
    const cases: Array<[() => unknown, string, string]> = [
      [() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }, { sequence: b, ...stepData(random, shape, 1), q: { data: new Float32Array(4), dims: [2, 1, 2] } }]), 'SHAPE_MISMATCH', 'items[1].q.dims[2]'],
      [() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }, { sequence: b, ...stepData(random, shape, 1), v: { data: new Float64Array(4), dims: [1, 1, 4] } as never }]), 'INVALID_DTYPE', 'items[1].v.data'],
      [() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }, { sequence: b, q: randomTensor(random, [1, 0, 4]), k: randomTensor(random, [1, 0, 4]), v: randomTensor(random, [1, 0, 4]) }]), 'SHAPE_MISMATCH', 'items[1].k.dims[1]'],
      [() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }], { softcap: 0 }), 'INVALID_OPTION', 'options.softcap'],
      [() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }], { window: { left: -1 } }), 'INVALID_OPTION', 'options.window.left'],
      [() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }], { scale: NaN }), 'INVALID_OPTION', 'options.scale'],
      [() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }], { rope: { interleaved: 1 } } as never), 'INVALID_OPTION', 'options.rope.interleaved'],
    ];
    for (const [call, code, argument] of cases) refused(call, code, argument);
    b.dispose();
    expect([a.length, pool.stats(), engine.stats().usedBytes]).toEqual(before);
    pool.dispose();
  });

  it('resident tensors as q, k and v: this engine\'s equal plain arrays; released and foreign ones are refused', async () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8 };
    const random = rng(113);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 8, pageSize: 4, maxTokens: 4096 });
    const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    // (a ResidentTensor's `data` is typed Float32Array | Uint8Array, so it is not a TensorLike<Float32Array>)
    const resident = (t: T): T & { release(): void } => {
      const r = engine.tensor(t.dims);
      (r.data as Float32Array).set(t.data);
      return r as unknown as T & { release(): void };
    };
    for (let round = 0; round < 3; round++) {
      const d = stepData(random, shape, 300); // grows the pool by a slab at the first step
      const [q, k, v] = [resident(d.q), resident(d.k), resident(d.v)];
      const [y] = round === 1 ? await pool.stepAsync([{ sequence: a.sequence, q, k, v }]) : pool.step([{ sequence: a.sequence, q, k, v }]);
      const { expected, tol } = a.mirror.step(d, {});
      expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
      for (const r of [q, k, v]) r.release();
      refused(() => pool.step([{ sequence: a.sequence, q, k, v }]), 'INVALID_TENSOR', 'items[0].q.data');
      refused(() => pool.step([{ sequence: a.sequence, q: d.q, k, v }]), 'INVALID_TENSOR', 'items[0].k.data');
    }
    const otherEngine = createEngineSync({ backend });
    const foreign = otherEngine.tensor([1, 1, 8]) as unknown as T;
    const d = stepData(random, shape, 1);
    refused(() => pool.step([{ sequence: a.sequence, ...d, k: foreign }]), 'INVALID_TENSOR', 'items[0].k.data');
    // a sequence of a pool of another engine
    const otherPool = otherEngine.kvPool({ kvHeads: 1, headDim: 8, maxTokens: 16 });
    refused(() => pool.step([{ sequence: otherPool.sequence(), ...d }]), 'INVALID_ARGUMENT', 'items[0].sequence');
    otherEngine.dispose();
    expect(a.sequence.length).toBe(900);
    pool.dispose();
  });

  it('SharedArrayBuffer-backed and detached inputs', async () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8 };
    const random = rng(114);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 8, pageSize: 4, maxTokens: 256 });
    const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const shared = (t: T): T => {
      const data = new Float32Array(new SharedArrayBuffer(4 * t.data.length));
      data.set(t.data);
      return { data, dims: t.dims };
    };
    for (const async of [false, true]) {
      const d = stepData(random, shape, 5);
      const item = { sequence: a.sequence, q: shared(d.q), k: shared(d.k), v: shared(d.v) };
      const [y] = async ? await pool.stepAsync([item]) : pool.step([item]);
      const { expected, tol } = a.mirror.step(d, {});
      expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    }
    const d = stepData(random, shape, 1);
    structuredClone(d.k.data.buffer, { transfer: [d.k.data.buffer as ArrayBuffer] });
    refused(() => pool.step([{ sequence: a.sequence, ...d }]), 'SHAPE_MISMATCH', 'items[0].k.data');
    expect(a.sequence.length).toBe(10);
    pool.dispose();
  });

  it('stepAsync copies its inputs when called: changing them before it settles changes nothing', async () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8 };
    const random = rng(115);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 8, pageSize: 4, maxTokens: 256 });
    const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const d = stepData(random, shape, 7);
    const keep = { q: { ...d.q, data: d.q.data.slice() }, k: { ...d.k, data: d.k.data.slice() }, v: { ...d.v, data: d.v.data.slice() } };
    const promise = pool.stepAsync([{ sequence: a.sequence, ...d }]);
    d.q.data.fill(100);
    d.k.data.fill(-100);
    d.v.data.fill(NaN);
    const [y] = await promise;
    const { expected, tol } = a.mirror.step(keep, {});
    expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    pool.dispose();
  });

  it('a NaN or infinite key or value is refused before anything is stored (was: on wasm it reached rows of its block that do not see it)', () => {
    for (const [qHeads, n, bad, part] of [[4, 2, NaN, 'v'], [1, 8, NaN, 'k'], [1, 200, Infinity, 'v'], [8, 20, -Infinity, 'k']] as const) {
      const shape = { qHeads, kvHeads: 1, headDim: 8, valueDim: 8 };
      const random = rng(116 + n);
      const pool = engine.kvPool({ kvHeads: 1, headDim: 8, pageSize: 4, maxTokens: 1000 });
      const s = pool.sequence();
      const other = pool.sequence();
      const d = stepData(random, shape, n);
      d[part].data[(n - 1) * 8] = bad;
      const before = pool.stats();
      refused(() => pool.step([{ sequence: other, ...stepData(random, shape, 1) }, { sequence: s, ...d }]), 'INVALID_TENSOR', `items[1].${part}.data`, /must be finite/);
      refused(() => s.append(d.k, d.v), 'INVALID_TENSOR', `${part}.data`);
      expect([s.length, other.length, pool.stats()]).toEqual([0, 0, before]);
      pool.dispose();
    }
  });

  it('an import whose keys or values are not finite is refused', () => {
    const pool = engine.kvPool({ kvHeads: 1, headDim: 8, pageSize: 16, maxTokens: 4096 });
    const s = pool.sequence();
    const random = rng(117);
    s.append(randomTensor(random, [1, 30, 8]), randomTensor(random, [1, 30, 8]));
    const bytes = s.export();
    new DataView(bytes.buffer).setFloat32(32 + 4 * 100, NaN, true);
    const before = pool.stats();
    refused(() => pool.import(bytes), 'INVALID_ARGUMENT', 'bytes', /NaN or infinite/);
    expect(pool.stats()).toEqual(before);
    pool.dispose();
  });

  it('subnormal and huge inputs: finite outputs equal to the reference of the inputs as read', () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8 };
    const random = rng(118);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 8, pageSize: 4, maxTokens: 256 });
    const s = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const d = stepData(random, shape, 9, 3e18); // scores near float32's max: q is scaled first
    const [y] = pool.step([{ sequence: s.sequence, ...d }], { scale: 1e-30 });
    const { expected, tol } = s.mirror.step(d, { scale: 1e-30 });
    expect(y.data.every(Number.isFinite)).toBe(true);
    expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    pool.dispose();
  });

  it('sync calls during a stepAsync: BUSY on its sequence, fine on others; dispose of the sequence, the pool or nothing', async () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 16, valueDim: 16 };
    const random = rng(119);
    const base = engine.stats().usedBytes;
    const pool = engine.kvPool({ kvHeads: 1, headDim: 16, pageSize: 16, maxTokens: 20000 });
    const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const b = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const da = stepData(random, shape, 1500);
    const p = pool.stepAsync([{ sequence: a.sequence, ...da }]);
    refused(() => pool.step([{ sequence: a.sequence, ...stepData(random, shape, 1) }]), 'BUSY', 'sequence');
    refused(() => a.sequence.fork(), 'BUSY', 'sequence');
    refused(() => a.sequence.export(), 'BUSY', 'sequence');
    refused(() => a.sequence.append(stepData(random, shape, 1).k, stepData(random, shape, 1).v), 'BUSY', 'sequence');
    const db = stepData(random, shape, 40);
    const [yb] = pool.step([{ sequence: b.sequence, ...db }]);
    const eb = b.mirror.step(db, {});
    expect(maxError(yb.data, eb.expected)).toBeLessThanOrEqual(eb.tol);
    const [ya] = await p;
    const ea = a.mirror.step(da, {});
    expect(maxError(ya.data, ea.expected)).toBeLessThanOrEqual(ea.tol);
    // a sequence disposed while its step is queued behind another: that step is refused, pages back
    const c = pool.sequence();
    const p1 = pool.stepAsync([{ sequence: a.sequence, ...stepData(random, shape, 500) }]);
    const p2 = pool.stepAsync([{ sequence: c, ...stepData(random, shape, 500) }]);
    c.dispose();
    await p1;
    expect(await rejection(p2)).toMatchObject({ code: 'DISPOSED' });
    // the pool disposed while a step is queued: refused DISPOSED; memory back once it settles
    const p3 = pool.stepAsync([{ sequence: a.sequence, ...stepData(random, shape, 500) }]);
    const p4 = pool.stepAsync([{ sequence: b.sequence, ...stepData(random, shape, 500) }]);
    pool.dispose();
    const results = await Promise.allSettled([p3, p4]);
    for (const r of results) {
      if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'DISPOSED' });
      else expect(r.value[0].data.every(Number.isFinite)).toBe(true);
    }
    expect(engine.stats().usedBytes).toBe(base);
  });

  it('pool.stats() after pool.dispose() counts nothing (was: the pages the disposed sequences held)', () => {
    const random = rng(120);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 4, maxTokens: 64 });
    const a = pool.sequence();
    pool.step([{ sequence: a, ...small(pool, random, 9) }]);
    pool.dispose();
    expect(pool.stats()).toMatchObject({ pagesUsed: 0, sequences: 0, bytes: 0 });
    expect(a.disposed).toBe(true);
    expect(a.length).toBe(0); // as after a.dispose()
  });

  it('batcher: 40 sequences × 4 calls with mixed options; a sequence disposed while queued fails alone', async () => {
    const shape = { qHeads: 4, kvHeads: 2, headDim: 8, valueDim: 8 };
    const random = rng(121);
    const pool = engine.kvPool({ kvHeads: 2, headDim: 8, pageSize: 4, maxTokens: 8000 });
    const batcher = pool.batcher({ maxBatch: 7 });
    const xs = Array.from({ length: 40 }, () => ({ sequence: pool.sequence(), mirror: new Mirror(shape) }));
    const optionsOf = (i: number): PoolStepOptions => (i % 3 === 0 ? { rope: {} } : i % 3 === 1 ? { rope: {}, softcap: 7 } : { rope: {}, window: { left: 3 } });
    const calls: Array<{ x: (typeof xs)[number]; data: StepData; options: PoolStepOptions; promise: Promise<{ data: Float32Array }> }> = [];
    for (let round = 0; round < 4; round++) {
      xs.forEach((x, i) => {
        const data = stepData(random, shape, 1 + ((i + round) % 4));
        const options = optionsOf(i + round);
        calls.push({ x, data, options, promise: batcher.step(x.sequence, data.q, data.k, data.v, options) });
      });
    }
    const victim = xs[13];
    victim.sequence.dispose();
    const results = await Promise.allSettled(calls.map((c) => c.promise));
    results.forEach((r, i) => {
      const call = calls[i];
      if (call.x === victim) {
        expect(r.status).toBe('rejected');
        expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'DISPOSED' });
        return;
      }
      expect(r.status).toBe('fulfilled');
      const { expected, tol } = call.x.mirror.step(call.data, call.options);
      expect(maxError((r as PromiseFulfilledResult<{ data: Float32Array }>).value.data, expected)).toBeLessThanOrEqual(tol);
    });
    expect(batcher.waiting).toBe(0);
    for (const x of xs) if (x !== victim) expect(x.sequence.length).toBe(x.mirror.length);
    pool.dispose();
  });

  it('batcher: outputs bit-identical to the same calls made one by one', async () => {
    const shape = { qHeads: 4, kvHeads: 1, headDim: 16, valueDim: 16 };
    const run = async (batched: boolean): Promise<number[][]> => {
      const random = rng(122);
      const pool = engine.kvPool({ kvHeads: 1, headDim: 16, pageSize: 8, maxTokens: 30000 });
      const sequences = Array.from({ length: 8 }, () => pool.sequence());
      const batcher = pool.batcher({ maxBatch: batched ? 64 : 1 });
      const out: number[][] = [];
      for (const n of [1100, 1, 1, 3]) {
        const promises = sequences.map((s, i) => {
          const d = stepData(random, shape, i % 2 === 0 ? n : 1);
          return batcher.step(s, d.q, d.k, d.v, { rope: {} });
        });
        for (const y of await Promise.all(promises)) out.push(Array.from(y.data));
      }
      pool.dispose();
      return out;
    };
    expect(await run(true)).toEqual(await run(false));
  });

  it('memory: steps, forks, exports, imports and disposes in a loop keep usedBytes and reservedBytes bounded; pool.dispose gives all back', async () => {
    const shape = { qHeads: 2, kvHeads: 1, headDim: 16, valueDim: 16 };
    const random = rng(123);
    const base = engine.stats();
    const pool = engine.kvPool({ kvHeads: 1, headDim: 16, pageSize: 8, maxTokens: 3000 });
    let peak: { usedBytes: number; reservedBytes: number } | undefined;
    for (let cycle = 0; cycle < 60; cycle++) {
      const a = pool.sequence();
      pool.step([{ sequence: a, ...stepData(random, shape, 50 + (cycle % 7)) }]);
      const b = a.fork();
      const c = pool.import(b.export());
      const outs = cycle % 2 ? await pool.stepAsync([{ sequence: a, ...stepData(random, shape, 3) }, { sequence: b, ...stepData(random, shape, 1) }, { sequence: c, ...stepData(random, shape, 2) }])
        : pool.step([{ sequence: a, ...stepData(random, shape, 3) }, { sequence: b, ...stepData(random, shape, 1) }, { sequence: c, ...stepData(random, shape, 2) }]);
      expect(outs.length).toBe(3);
      for (const s of cycle % 3 ? [c, a, b] : [b, c, a]) s.dispose();
      expect(pool.stats()).toMatchObject({ pagesUsed: 0, sequences: 0 });
      const now = engine.stats();
      if (cycle === 5) peak = now;
      if (cycle > 5) {
        expect(now.usedBytes).toBeLessThanOrEqual(peak!.usedBytes);
        expect(now.reservedBytes).toBeLessThanOrEqual(peak!.reservedBytes);
      }
    }
    pool.dispose();
    expect(engine.stats().usedBytes).toBe(base.usedBytes);
    // many pools made and disposed: reserved memory stops growing
    const reserved: number[] = [];
    for (let i = 0; i < 12; i++) {
      const p = engine.kvPool({ kvHeads: 2, headDim: 64, pageSize: 16, maxTokens: 20000 });
      const s = p.sequence();
      s.append(randomTensor(random, [2, 3000, 64]), randomTensor(random, [2, 3000, 64]));
      p.dispose();
      reserved.push(engine.stats().reservedBytes);
    }
    expect(reserved[11]).toBe(reserved[3]);
    expect(engine.stats().usedBytes).toBe(base.usedBytes);
  });

  it('capacity edges: exactly full, then CACHE_FULL with nothing changed, then room again after a dispose', () => {
    const shape = { qHeads: 1, kvHeads: 1, headDim: 4, valueDim: 4 };
    const random = rng(124);
    const pool = engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 1, maxTokens: 5 });
    const a = pool.sequence();
    const b = pool.sequence();
    pool.step([{ sequence: a, ...stepData(random, shape, 3) }, { sequence: b, ...stepData(random, shape, 2) }]);
    expect(pool.stats().pagesUsed).toBe(5);
    const before = [a.length, b.length, pool.stats(), engine.stats().usedBytes];
    refused(() => pool.step([{ sequence: a, ...stepData(random, shape, 1) }]), 'CACHE_FULL', 'items');
    const f = a.fork(); // pages of 1 are never partly filled: a fork's step needs exactly one page
    refused(() => pool.step([{ sequence: f, ...stepData(random, shape, 1) }]), 'CACHE_FULL', 'items');
    f.dispose();
    expect([a.length, b.length, pool.stats(), engine.stats().usedBytes]).toEqual(before);
    b.dispose();
    pool.step([{ sequence: a, ...stepData(random, shape, 2) }]);
    expect(pool.stats().pagesUsed).toBe(5);
    pool.dispose();
  });

  it('pool options at the edges are refused with typed errors', () => {
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4, maxTokens: 0 }), 'INVALID_OPTION', 'options.maxTokens');
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4, maxTokens: 1.5 }), 'INVALID_OPTION', 'options.maxTokens');
    refused(() => engine.kvPool({ kvHeads: 0, headDim: 4, maxTokens: 4 }), 'INVALID_OPTION', 'options.kvHeads');
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4, pageSize: 0, maxTokens: 4 }), 'INVALID_OPTION', 'options.pageSize');
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4, maxTokens: 2 ** 53 - 1 }), 'OUT_OF_MEMORY', 'options.maxTokens');
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 2 ** 20, pageSize: 2 ** 10, maxTokens: 4 }), 'OUT_OF_MEMORY', 'options.maxTokens');
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4, maxTokens: 4, maxBytes: 4096 }), 'INVALID_OPTION', 'options.maxBytes');
    refused(() => engine.kvPool(new Proxy({ kvHeads: 1, headDim: 4, maxTokens: 4 }, { get() { throw new Error('trap'); } })), 'INVALID_OPTION', 'options.kvHeads');
  });
});

describe('kvPool hostile: bits independent of thread count on the split path with a window', () => {
  it('1 and 3 threads give the same bits', async () => {
    const shape = { qHeads: 8, kvHeads: 2, headDim: 32, valueDim: 24 };
    const run = async (engine: Engine): Promise<number[][]> => {
      const random = rng(125);
      const pool = engine.kvPool({ kvHeads: 2, headDim: 32, valueDim: 24, pageSize: 5, maxTokens: 20000 });
      const sequences = Array.from({ length: 4 }, () => pool.sequence());
      const out: number[][] = [];
      for (const n of [1300, 1, 2, 4, 1]) {
        const ys = await pool.stepAsync(sequences.map((sequence, i) => ({ sequence, ...stepData(random, shape, i % 2 ? n : 1) })), { window: { left: 700 }, softcap: 30, rope: { dims: 16 } });
        out.push(...ys.map((y) => Array.from(y.data)));
      }
      pool.dispose();
      return out;
    };
    const one = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const three = createEngineSync({ backend: 'wasm-simd', threads: 3 });
    expect(await run(three)).toEqual(await run(one));
    one.dispose();
    three.dispose();
  });
});

describe('kvPool: a step the engine refuses after its pages were reserved', () => {
  it('out of memory for the call: no sequence changed, the slab it reserved given back', () => {
    // 4 MiB of WASM memory: a pool of up to 3 MiB of pages (one slab of 384 pages of 8 KiB), whose
    // first step reserves that slab, then cannot stage its q (1.5 MiB): OUT_OF_MEMORY
    const engine = createEngineSync({ backend: 'wasm-simd', maxMemoryBytes: 4 * 2 ** 20 });
    const pool = engine.kvPool({ kvHeads: 1, headDim: 64, pageSize: 16, maxBytes: 3 * 2 ** 20 });
    const random = rng(131);
    const a = pool.sequence();
    const before = { used: engine.stats().usedBytes, pool: pool.stats() };
    const n = 6000;
    const big = { q: randomTensor(random, [1, n, 64]), k: randomTensor(random, [1, n, 64]), v: randomTensor(random, [1, n, 64]) };
    const error = thrown(() => pool.step([{ sequence: a, ...big }]));
    expect(error).toBeInstanceOf(AttentionError);
    expect((error as AttentionError).code).toBe('OUT_OF_MEMORY');
    expect({ used: engine.stats().usedBytes, pool: pool.stats() }).toEqual(before);
    expect(a.length).toBe(0);
    // and the pool still works
    const small = { q: randomTensor(random, [1, 3, 64]), k: randomTensor(random, [1, 3, 64]), v: randomTensor(random, [1, 3, 64]) };
    expect(pool.step([{ sequence: a, ...small }])[0].dims).toEqual([1, 3, 64]);
    pool.dispose();
    engine.dispose();
  });
});
