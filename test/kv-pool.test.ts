// The paged KV pool on every backend: any interleaving of steps across sequences (prefill chunks
// and decode steps mixed) equals causal attention over each sequence's whole history computed
// alone by the float64 reference, with GQA, odd head dims, page sizes from 1 up, RoPE in both
// layouts, windows and softcap, and histories long enough to be split over the keys; bits that do
// not depend on the other items of a step nor on the thread count; forks equal to sequences built
// with the same tokens; pages all back after dispose; refused steps that change nothing; export
// then import; the batcher.
import { describe, expect, it } from 'vitest';
import { type Engine, type KVPool, KVSequence, createEngineSync } from '../src/index.js';
import type { PoolStepOptions } from '../src/features/kv-pool.js';
import { BACKENDS, engineFor, maxError, randomTensor, refused, rng } from './helpers.js';
import { DTYPES, type Shape, type StepData, stepData, poolFor, Mirror } from './kv-pool-mirror.js';

interface Case extends Shape {
  pageSize: number;
  options?: PoolStepOptions;
  /** New positions per item, drawn from these. */
  sizes?: number[];
  steps?: number;
  sequences?: number;
}

const cases: Array<[string, Case]> = [
  ['GQA 8/2, D 64, pages of 16', { qHeads: 8, kvHeads: 2, headDim: 64, valueDim: 64, pageSize: 16 }],
  ['MHA 3/3, D 3, Dv 5, pages of 1', { qHeads: 3, kvHeads: 3, headDim: 3, valueDim: 5, pageSize: 1 }],
  ['MQA 4/1, D 17, pages of 7', { qHeads: 4, kvHeads: 1, headDim: 17, valueDim: 17, pageSize: 7 }],
  ['RoPE half-split, dims 32 of 64', { qHeads: 4, kvHeads: 2, headDim: 64, valueDim: 48, pageSize: 16, options: { rope: { dims: 32 } } }],
  ['RoPE interleaved, base 500000', { qHeads: 2, kvHeads: 1, headDim: 16, valueDim: 16, pageSize: 5, options: { rope: { base: 500000, interleaved: true } } }],
  ['window 5, softcap 20, scale 0.3', { qHeads: 4, kvHeads: 2, headDim: 8, valueDim: 8, pageSize: 4, options: { window: { left: 5 }, softcap: 20, scale: 0.3 } }],
];

const runs = BACKENDS.flatMap((backend) => DTYPES.map((dtype) => [backend, dtype] as const));

describe.each(runs)('kvPool on %s, %s pages', (backend, dtype) => {
  const engine = engineFor(backend);

  it.each(cases)('interleaved steps equal each sequence alone: %s', async (_, c) => {
    const random = rng(c.headDim * 31 + c.pageSize);
    const pool = engine.kvPool({ kvHeads: c.kvHeads, headDim: c.headDim, valueDim: c.valueDim, pageSize: c.pageSize, maxTokens: 4000, dtype });
    const sequences = Array.from({ length: c.sequences ?? 4 }, () => ({ sequence: pool.sequence(), mirror: new Mirror({ ...c, dtype }) }));
    const sizes = c.sizes ?? [1, 1, 1, 2, 5, 17, 40];
    const options = c.options ?? {};
    for (let s = 0; s < (c.steps ?? 10); s++) {
      const chosen = sequences.filter(() => random() < 0.7);
      if (chosen.length === 0) chosen.push(sequences[s % sequences.length]);
      const data = chosen.map(() => stepData(random, c, sizes[Math.floor(random() * sizes.length)]));
      const items = chosen.map((x, i) => ({ sequence: x.sequence, ...data[i] }));
      const outputs = s % 2 === 0 ? pool.step(items, options) : await pool.stepAsync(items, options);
      chosen.forEach((x, i) => {
        const { expected, tol } = x.mirror.step(data[i], options);
        expect(outputs[i].dims).toEqual([c.qHeads, data[i].q.dims[1], c.valueDim]);
        expect(maxError(outputs[i].data, expected)).toBeLessThanOrEqual(tol);
        expect(x.sequence.length).toBe(x.mirror.length);
      });
    }
    pool.dispose();
  });

  it('long histories (split over the keys) and prefill chunks', async () => {
    const shape: Shape = { qHeads: 4, kvHeads: 2, headDim: 8, valueDim: 8, dtype };
    const random = rng(7);
    const pool = poolFor(engine, shape, { pageSize: 16, maxTokens: 8192 });
    const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const b = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    for (const [na, nb] of [[300, 700], [500, 1], [400, 350], [1, 1], [3, 1], [1, 2]]) {
      const da = stepData(random, shape, na);
      const db = stepData(random, shape, nb);
      const [ya, yb] = await pool.stepAsync([{ sequence: a.sequence, ...da }, { sequence: b.sequence, ...db }], { rope: {} });
      for (const [x, y, d] of [[a, ya, da], [b, yb, db]] as const) {
        const { expected, tol } = x.mirror.step(d, { rope: {} });
        expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
      }
    }
    expect(a.sequence.length).toBe(1205);
    pool.dispose();
  });

  it("an item's bits do not depend on the other items of its step", () => {
    const shape: Shape = { qHeads: 8, kvHeads: 2, headDim: 32, valueDim: 32, dtype };
    const run = (withOthers: boolean): Float32Array[] => {
      const random = rng(11);
      const pool = poolFor(engine, shape, { pageSize: 8, maxTokens: 8192 });
      const a = pool.sequence();
      const others = [pool.sequence(), pool.sequence()];
      const outputs: Float32Array[] = [];
      for (const n of [37, 1, 1, 1200, 1, 4]) {
        const data = stepData(random, shape, n);
        const noise = others.map(() => stepData(random, shape, 1 + (n % 5)));
        const items = [{ sequence: a, ...data }, ...(withOthers ? others.map((sequence, i) => ({ sequence, ...noise[i] })) : [])];
        outputs.push(pool.step(items, { rope: {} })[0].data);
      }
      pool.dispose();
      return outputs;
    };
    const alone = run(false);
    const together = run(true);
    alone.forEach((x, i) => expect(Array.from(together[i])).toEqual(Array.from(x)));
  });

  it('forks equal sequences built with the same tokens, and share pages until they write', () => {
    const shape: Shape = { qHeads: 4, kvHeads: 2, headDim: 16, valueDim: 16, dtype };
    const random = rng(5);
    const pool = poolFor(engine, shape, { pageSize: 16, maxTokens: 1024 });
    const prefix = stepData(random, shape, 20);
    const a = pool.sequence();
    pool.step([{ sequence: a, ...prefix }]);
    const used = pool.stats().pagesUsed;
    const b = a.fork();
    expect(pool.stats().pagesUsed).toBe(used); // shared
    expect(b.length).toBe(20);
    const nextA = stepData(random, shape, 3);
    const nextB = stepData(random, shape, 1);
    const [ya, yb] = pool.step([{ sequence: a, ...nextA }, { sequence: b, ...nextB }]);
    expect(pool.stats().pagesUsed).toBe(used + 1); // b's partly filled last page copied before b wrote
    // the same tokens in fresh sequences
    const c = pool.sequence();
    const d = pool.sequence();
    pool.step([{ sequence: c, ...prefix }, { sequence: d, ...prefix }]);
    const [yc, yd] = pool.step([{ sequence: c, ...nextA }, { sequence: d, ...nextB }]);
    expect(Array.from(ya.data)).toEqual(Array.from(yc.data));
    expect(Array.from(yb.data)).toEqual(Array.from(yd.data));
    for (const s of [a, b, c, d]) s.dispose();
    expect(pool.stats()).toMatchObject({ pagesUsed: 0, sequences: 0 });
    pool.dispose();
  });

  it('pages all come back after dispose, and the pool gives its memory back', () => {
    const before = engine.stats().usedBytes;
    const shape: Shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8, dtype };
    const random = rng(3);
    const pool = poolFor(engine, shape, { pageSize: 4, maxTokens: 400 });
    const sequences = Array.from({ length: 5 }, () => pool.sequence());
    pool.step(sequences.map((sequence, i) => ({ sequence, ...stepData(random, shape, 3 + 7 * i) })));
    const forks = sequences.map((s) => s.fork());
    pool.step(forks.map((sequence) => ({ sequence, ...stepData(random, shape, 2) })));
    expect(pool.stats().pagesUsed).toBeGreaterThan(0);
    for (const s of [...sequences, ...forks]) s.dispose();
    // keys and values of 8 each, one kv head: float32 64 bytes, float16 32, int8 16 and two float32 scales
    expect(pool.stats()).toMatchObject({ dtype, pagesUsed: 0, sequences: 0, pageSize: 4, pages: 100, bytesPerToken: { float32: 64, float16: 32, int8: 24 }[dtype] });
    pool.dispose();
    expect(engine.stats().usedBytes).toBe(before);
    refused(() => pool.sequence(), 'DISPOSED');
    refused(() => sequences[0].fork(), 'DISPOSED');
  });

  it('a refused step changes no sequence', () => {
    const shape: Shape = { qHeads: 2, kvHeads: 1, headDim: 8, valueDim: 8, dtype };
    const random = rng(9);
    const pool = poolFor(engine, shape, { pageSize: 16, maxTokens: 64 });
    const a = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    const b = { sequence: pool.sequence(), mirror: new Mirror(shape) };
    for (const [x, n] of [[a, 40], [b, 16]] as const) {
      const data = stepData(random, shape, n);
      pool.step([{ sequence: x.sequence, ...data }]);
      x.mirror.step(data, {});
    }
    expect(pool.stats().pagesUsed).toBe(4); // full
    const snapshot = (): unknown => [a.sequence.length, b.sequence.length, pool.stats()];
    const before = snapshot();
    // a fits in its last page, b needs a new one: the whole step is refused
    refused(() => pool.step([{ sequence: a.sequence, ...stepData(random, shape, 1) }, { sequence: b.sequence, ...stepData(random, shape, 1) }]), 'CACHE_FULL', 'items');
    // a bad second item: the first is not applied either
    const bad = stepData(random, shape, 1);
    refused(() => pool.step([{ sequence: a.sequence, ...stepData(random, shape, 1) }, { sequence: b.sequence, ...bad, k: { data: new Float32Array(4), dims: [1, 1, 4] } }]), 'SHAPE_MISMATCH', 'items[1].k.dims[2]');
    refused(() => pool.step([{ sequence: a.sequence, ...stepData(random, shape, 1) }, { sequence: a.sequence, ...stepData(random, shape, 1) }]), 'INVALID_ARGUMENT', 'items[1].sequence');
    refused(() => pool.step([{ sequence: a.sequence, ...stepData(random, shape, 1) }], { rope: { dims: 3 } }), 'INVALID_OPTION', 'options.rope.dims');
    refused(() => pool.step([{ sequence: a.sequence, ...stepData(random, shape, 1) }], { scal: 1 } as never), 'INVALID_OPTION', 'options.scal');
    // a fork's copy-on-write needs a page too
    const c = a.sequence.fork();
    refused(() => pool.step([{ sequence: c, ...stepData(random, shape, 1) }]), 'CACHE_FULL', 'items');
    c.dispose();
    expect(snapshot()).toEqual(before);
    // and the next step sees exactly the history before the refusals
    const data = stepData(random, shape, 2);
    const [y] = pool.step([{ sequence: a.sequence, ...data }]);
    const { expected, tol } = a.mirror.step(data, {});
    expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    // other pools' and disposed sequences
    const other = poolFor(engine, shape, { maxTokens: 16 });
    refused(() => pool.step([{ sequence: other.sequence(), ...stepData(random, shape, 1) }]), 'INVALID_ARGUMENT', 'items[0].sequence');
    other.dispose();
    refused(() => pool.step([{ sequence: Object.create(KVSequence.prototype), ...stepData(random, shape, 1) }]), 'INVALID_ARGUMENT', 'items[0].sequence');
    refused(() => new (KVSequence as unknown as new (token: symbol, state: unknown) => unknown)(Symbol('KVSequence'), { pages: [1e9], length: 5 }), 'INVALID_ARGUMENT');
    b.sequence.dispose();
    refused(() => pool.step([{ sequence: b.sequence, ...stepData(random, shape, 1) }]), 'DISPOSED', 'items[0].sequence');
    pool.dispose();
  });

  it('export then import gives the same next outputs', () => {
    const shape: Shape = { qHeads: 4, kvHeads: 2, headDim: 8, valueDim: 12, dtype };
    const random = rng(13);
    const pool = poolFor(engine, shape, { pageSize: 16, maxTokens: 1024 });
    const a = pool.sequence();
    const mirror = new Mirror(shape);
    const prompt = stepData(random, shape, 37);
    // pages of 16: a head's 37 rows of 8 floats are not a multiple of 16 bytes, so page padding matters
    pool.step([{ sequence: a, ...prompt }], { rope: {} });
    mirror.step(prompt, { rope: {} });
    const bytes = a.export();
    const b = pool.import(bytes);
    expect(b.length).toBe(37);
    const other = poolFor(engine, shape, { pageSize: 5, maxTokens: 100 });
    const c = other.import(bytes.buffer.slice(0) as ArrayBuffer);
    const next = stepData(random, shape, 2);
    const [ya, yb] = pool.step([{ sequence: a, ...next }, { sequence: b, ...next }], { rope: {} });
    const [yc] = other.step([{ sequence: c, ...next }], { rope: {} });
    expect(Array.from(yb.data)).toEqual(Array.from(ya.data));
    const { expected, tol } = mirror.step(next, { rope: {} });
    expect(maxError(yc.data, expected)).toBeLessThanOrEqual(tol);
    refused(() => pool.import(bytes.subarray(0, 40)), 'INVALID_ARGUMENT', 'bytes');
    const wrong = engine.kvPool({ kvHeads: 2, headDim: 8, valueDim: 8, maxTokens: 64, dtype });
    refused(() => wrong.import(bytes), 'INVALID_ARGUMENT', 'bytes', /value dim 12/);
    const corrupt = bytes.slice();
    corrupt[0] ^= 1;
    refused(() => pool.import(corrupt), 'INVALID_ARGUMENT', 'bytes', /header/);
    refused(() => other.import(bytes.slice(0, bytes.length - 4)), 'INVALID_ARGUMENT', 'bytes');
    // the dtype travels with the bytes: another dtype's pool refuses them, and a second export is the same bytes
    const otherDtype = poolFor(engine, { ...shape, dtype: dtype === 'int8' ? 'float16' : 'int8' }, { maxTokens: 64 });
    refused(() => otherDtype.import(bytes), 'INVALID_ARGUMENT', 'bytes', new RegExp(`pages are ${dtype}`));
    expect(Array.from(pool.import(bytes).export())).toEqual(Array.from(bytes));
    for (const p of [pool, other, wrong, otherDtype]) p.dispose();
  });

  it('append stores keys and values as given; options are checked', () => {
    const shape: Shape = { qHeads: 2, kvHeads: 1, headDim: 4, valueDim: 4, dtype };
    const random = rng(17);
    const pool = poolFor(engine, shape, { pageSize: 3, maxTokens: 30 });
    const a = pool.sequence();
    const mirror = new Mirror(shape);
    const prompt = stepData(random, shape, 8);
    a.append(prompt.k, prompt.v);
    mirror.append(prompt.k, prompt.v);
    expect(a.length).toBe(8);
    const next = stepData(random, shape, 1);
    const [y] = pool.step([{ sequence: a, ...next }]);
    const { expected, tol } = mirror.step(next, {});
    expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    refused(() => a.append(prompt.k, { data: new Float32Array(40), dims: [1, 8, 5] }), 'SHAPE_MISMATCH', 'v.dims[2]');
    refused(() => a.append(randomTensor(random, [1, 30, 4]), randomTensor(random, [1, 30, 4])), 'CACHE_FULL', 'k');
    expect(a.length).toBe(9);
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4, maxTokens: 10, pageSiz: 4 } as never), 'INVALID_OPTION', 'options.pageSiz', /did you mean pageSize/);
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4 }), 'INVALID_OPTION', 'options.maxTokens');
    refused(() => engine.kvPool({ kvHeads: 1, headDim: 4, maxBytes: 10 }), 'INVALID_OPTION', 'options.maxBytes');
    pool.dispose();
  });

  it('batcher: concurrent calls share steps, each sequence in order, errors stay with their call', async () => {
    const shape: Shape = { qHeads: 4, kvHeads: 2, headDim: 8, valueDim: 8, dtype };
    const random = rng(19);
    const pool = poolFor(engine, shape, { pageSize: 4, maxTokens: 400 });
    const batcher = pool.batcher({ maxBatch: 4 });
    const sequences = Array.from({ length: 6 }, () => ({ sequence: pool.sequence(), mirror: new Mirror(shape) }));
    const calls: Array<{ x: (typeof sequences)[number]; data: StepData; promise: Promise<{ data: Float32Array }> }> = [];
    for (let round = 0; round < 3; round++) {
      for (const x of sequences) {
        const data = stepData(random, shape, round === 0 ? 5 : 1);
        calls.push({ x, data, promise: batcher.step(x.sequence, data.q, data.k, data.v, { rope: {} }) });
      }
    }
    expect(batcher.waiting).toBe(18);
    // a sync call on a sequence with calls waiting is refused
    refused(() => pool.step([{ sequence: sequences[0].sequence, ...stepData(random, shape, 1) }]), 'BUSY', 'sequence');
    const bad = batcher.step(sequences[1].sequence, randomTensor(random, [3, 1, 8]), randomTensor(random, [2, 1, 8]), randomTensor(random, [2, 1, 8]));
    await expect(bad).rejects.toMatchObject({ code: 'SHAPE_MISMATCH' });
    for (const call of calls) {
      const y = await call.promise;
      const { expected, tol } = call.x.mirror.step(call.data, { rope: {} });
      expect(maxError(y.data, expected)).toBeLessThanOrEqual(tol);
    }
    // a call that does not fit fails alone; the others of its batch go through
    const small = poolFor(engine, shape, { pageSize: 4, maxTokens: 8 });
    const s1 = small.sequence();
    const s2 = small.sequence();
    const b2 = small.batcher();
    const ok = b2.step(s1, ...Object.values(stepData(random, shape, 4)) as [never, never, never]);
    const full = b2.step(s2, ...Object.values(stepData(random, shape, 5)) as [never, never, never]);
    await expect(ok).resolves.toMatchObject({ dims: [4, 4, 8] });
    await expect(full).rejects.toMatchObject({ code: 'CACHE_FULL' });
    expect([s1.length, s2.length]).toEqual([4, 0]);
    small.dispose();
    pool.dispose();
  });
});

describe('kvPool threads', () => {
  it.each(DTYPES)('stepAsync gives the same bits on 1 and 2 threads: %s pages', async (dtype) => {
    const shape: Shape = { qHeads: 8, kvHeads: 2, headDim: 64, valueDim: 64, dtype };
    const run = async (engine: Engine): Promise<number[][]> => {
      const random = rng(23);
      const pool: KVPool = poolFor(engine, shape, { pageSize: 16, maxTokens: 20000 });
      const sequences: KVSequence[] = Array.from({ length: 6 }, () => pool.sequence());
      const outputs: number[][] = [];
      for (const n of [500, 1, 700, 1, 1]) {
        const ys = await pool.stepAsync(sequences.map((sequence, i) => ({ sequence, ...stepData(random, shape, i % 2 === 0 ? n : 1) })), { rope: {} });
        outputs.push(...ys.map((y) => Array.from(y.data)));
      }
      pool.dispose();
      return outputs;
    };
    const one = createEngineSync({ backend: 'wasm-simd', threads: 1 });
    const two = createEngineSync({ backend: 'wasm-simd', threads: 2 });
    const [a, b] = [await run(one), await run(two)];
    expect(b).toEqual(a);
    one.dispose();
    two.dispose();
  });
});
