// Adversarial probes of packed weights (engine.packWeights + matmul(a, packed, { bias, activation })), from a
// review that tried to break them: hostile biases and outputs, forged and tampered handles, lifetimes,
// memory growth, pack/release cycles, and the same bits on 1 and 2 threads around the 16-row switch.
import { describe, expect, it } from 'vitest';
import { type Activation, AttentionError, PackedWeights, createEngineSync } from '../src/index.js';
import { referenceMatmul } from '../src/reference.js';
import { BACKENDS, engineFor, randomTensor, rng, tolerance } from './helpers.js';

const ACTS: Array<Activation | undefined> = [undefined, 'relu', 'gelu_tanh', 'silu'];

function errorOf(call: () => unknown): unknown {
  try {
    call();
  } catch (e) {
    return e;
  }
  return undefined;
}

async function asyncErrorOf(call: () => Promise<unknown>): Promise<unknown> {
  try {
    await call();
  } catch (e) {
    return e;
  }
  return undefined;
}

function expectRefused(call: () => unknown, code: string, argument?: string): void {
  const error = errorOf(call);
  expect(error, `expected an AttentionError ${code}, got ${String(error)}`).toBeInstanceOf(AttentionError);
  expect((error as AttentionError).code).toBe(code);
  if (argument !== undefined) expect((error as AttentionError).argument).toBe(argument);
}

/** Each element: NaN where the reference is NaN, same infinity, finite ones within tol·max(1,|x|). */
function expectMatches(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = ''): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const x = actual[i];
    const e = expected[i];
    if (Number.isNaN(e)) expect(Number.isNaN(x), `${what} [${i}]: expected NaN, got ${x}`).toBe(true);
    else if (!Number.isFinite(e) || Math.abs(e) > 3.4028234663852886e38) expect(x, `${what} [${i}]`).toBe(Math.fround(e));
    else expect(Math.abs(x - e), `${what} [${i}]: got ${x}, expected ${e}`).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(e)));
  }
}

const sameBits = (x: Float32Array, y: Float32Array): boolean => Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength));

describe.each(BACKENDS)('adversarial packed weights on %s', (backend) => {
  it('NaN and Infinity in a, w and bias propagate as in the reference, for every activation', () => {
    const engine = engineFor(backend);
    const random = rng(1);
    const k = 9, n = 11, m = 7;
    const a = randomTensor(random, [m, k]);
    const b = randomTensor(random, [k, n]);
    const bias = randomTensor(random, [n]).data;
    a.data[3] = NaN; // row 0
    a.data[k + 2] = Infinity; // row 1
    a.data[2 * k + 1] = -Infinity; // row 2
    b.data[5 * n + 4] = NaN; // column 4
    b.data[2 * n + 9] = Infinity; // column 9
    bias[6] = NaN;
    bias[7] = Infinity;
    bias[8] = -Infinity;
    const w = engine.packWeights(b);
    for (const activation of ACTS) {
      const y = engine.matmul(a, w, { bias, activation });
      const ref = referenceMatmul(a, b, { bias, activation });
      expectMatches(y.data, ref.data, tolerance.reduction(k) * 8, `activation ${activation}`);
    }
    w.release();
  });

  it('activations at extremes (including ±Infinity, NaN, huge, tiny) match the reference', () => {
    const engine = engineFor(backend);
    const one = { data: new Float32Array([1]), dims: [1, 1] };
    const w = engine.packWeights(one);
    const xs = [-Infinity, -3e38, -1e20, -1e5, -200, -100, -89, -88, -87, -50, -20, -10, -1e-30, 1e-30, 10, 20, 50, 87, 88, 89, 100, 200, 1e5, 1e20, 3e38, Infinity, NaN];
    const x = { data: new Float32Array(xs), dims: [xs.length, 1] };
    for (const activation of ['relu', 'gelu_tanh', 'silu'] as const) {
      const y = engine.matmul(x, w, { activation }).data;
      const ref = referenceMatmul(x, one, { activation }).data;
      for (let i = 0; i < xs.length; i++) {
        const e = Math.fround(ref[i]);
        if (Number.isNaN(e)) expect(Number.isNaN(y[i]), `${activation}(${xs[i]}) got ${y[i]}, expected NaN`).toBe(true);
        else if (!Number.isFinite(e)) expect(y[i], `${activation}(${xs[i]})`).toBe(e);
        else expect(Math.abs(y[i] - e), `${activation}(${xs[i]}) got ${y[i]}, expected ${e}`).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(e)));
      }
    }
    w.release();
  });

  it('bias as a resident tensor (and as its data view) works; wrong dtype, rank, length are refused without trace', () => {
    const engine = engineFor(backend);
    const random = rng(2);
    const b = randomTensor(random, [5, 13]);
    const a = randomTensor(random, [3, 5]);
    const w = engine.packWeights(b);
    const biasT = engine.tensor([13]);
    const biasValues = randomTensor(random, [13]).data;
    (biasT.data as Float32Array).set(biasValues);
    const ref = referenceMatmul(a, b, { bias: biasValues, activation: 'silu' });
    expectMatches(engine.matmul(a, w, { bias: biasT, activation: 'silu' }).data, ref.data, 1e-5);
    expectMatches(engine.matmul(a, w, { bias: biasT.data as Float32Array, activation: 'silu' }).data, ref.data, 1e-5);
    expectMatches(engine.matmul(a, w, { bias: { data: biasValues, dims: [13] }, activation: 'silu' }).data, ref.data, 1e-5);
    const before = engine.stats().usedBytes;
    const boolBias = engine.tensor([13], { type: 'bool' });
    const before2 = engine.stats().usedBytes;
    expectRefused(() => engine.matmul(a, w, { bias: boolBias as never }), 'INVALID_DTYPE');
    expectRefused(() => engine.matmul(a, w, { bias: { data: new Float32Array(13), dims: [1, 13] } }), 'INVALID_DIMS', 'options.bias.dims');
    expectRefused(() => engine.matmul(a, w, { bias: { data: new Float64Array(13), dims: [13] } as never }), 'INVALID_DTYPE');
    expectRefused(() => engine.matmul(a, w, { bias: new Float64Array(13) as never }), 'INVALID_DTYPE');
    expectRefused(() => engine.matmul(a, w, { bias: [1, 2, 3] as never }), 'INVALID_TENSOR');
    expectRefused(() => engine.matmul(a, w, { bias: new Float32Array(14) }), 'SHAPE_MISMATCH');
    const rt2 = engine.tensor([1, 13]);
    expectRefused(() => engine.matmul(a, w, { bias: rt2 }), 'INVALID_DIMS');
    rt2.release();
    expect(engine.stats().usedBytes).toBe(before2);
    boolBias.release();
    expect(engine.stats().usedBytes).toBe(before);
    biasT.release();
    w.release();
  });

  it('bias that is not really a Float32Array (Proxy, Object.create(Float32Array.prototype)) is refused with an AttentionError; a throwing own length is not read', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array(6), dims: [2, 3] });
    const a = { data: new Float32Array(4), dims: [2, 2] };
    // a real Float32Array whose own length getter throws: its length is read from the intrinsic getter
    const shadowed = Object.defineProperty(new Float32Array([1, 2, 3]), 'length', { get() { throw new Error('boom'); } });
    expect([...engine.matmul(a, w, { bias: shadowed }).data]).toEqual([1, 2, 3, 1, 2, 3]);
    const hostile: unknown[] = [new Proxy(new Float32Array(3), {}), Object.create(Float32Array.prototype)];
    const failures: string[] = [];
    for (const bias of hostile) {
      const error = errorOf(() => engine.matmul(a, w, { bias: bias as Float32Array }));
      if (!(error instanceof AttentionError)) failures.push(`${String(error)}`);
    }
    w.release();
    expect(failures).toEqual([]);
  });

  it('a Float32Array bias with a forged own length is refused (not read past its end)', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array(16), dims: [2, 8] });
    const a = { data: new Float32Array(4), dims: [2, 2] };
    const bias = Object.defineProperty(new Float32Array(2), 'length', { value: 8 });
    expectRefused(() => engine.matmul(a, w, { bias }), 'SHAPE_MISMATCH');
    w.release();
  });

  it('bias aliasing out, out aliasing a, out aliasing a resident bias are refused without trace', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array(12).fill(1), dims: [3, 4] });
    const buffer = new Float32Array(32);
    const a = { data: buffer.subarray(0, 6), dims: [2, 3] };
    const before = engine.stats().usedBytes;
    // bias overlaps the tail of out
    expectRefused(() => engine.matmul({ data: new Float32Array(6), dims: [2, 3] }, w, { bias: buffer.subarray(10, 14), out: buffer.subarray(8, 16) }), 'INVALID_OPTION', 'options.out');
    // out overlaps a
    expectRefused(() => engine.matmul(a, w, { out: buffer.subarray(4, 12) }), 'INVALID_OPTION', 'options.out');
    // resident: bias and out the same tensor
    const rt = engine.tensor([8]);
    const before2 = engine.stats().usedBytes;
    expectRefused(() => engine.matmul({ data: new Float32Array(6), dims: [2, 3] }, w, { bias: { data: rt.data as Float32Array, dims: [8] } as never, out: rt }), 'SHAPE_MISMATCH');
    const rt4 = engine.tensor([4]);
    const rtOut = engine.tensor([8]);
    const before3 = engine.stats().usedBytes;
    expectRefused(() => engine.matmul({ data: new Float32Array(3), dims: [1, 3] }, w, { bias: rt4, out: rt4 }), 'INVALID_OPTION', 'options.out');
    // out is a resident tensor: works, and the result lands there
    const y = engine.matmul({ data: new Float32Array([1, 2, 3, 4, 5, 6]), dims: [2, 3] }, w, { out: rtOut, bias: rt4 });
    expect([...(rtOut.data as Float32Array)]).toEqual([6, 6, 6, 6, 15, 15, 15, 15]);
    expect(y.dims).toEqual([2, 4]);
    expect(engine.stats().usedBytes).toBe(before3);
    rt4.release();
    rtOut.release();
    expect(engine.stats().usedBytes).toBe(before2);
    rt.release();
    expect(engine.stats().usedBytes).toBe(before);
    w.release();
  });

  it('a as a resident tensor, a with batch dims (some zero-sized), M = 0', () => {
    const engine = engineFor(backend);
    const random = rng(3);
    const b = randomTensor(random, [6, 10]);
    const w = engine.packWeights(b);
    const aT = engine.tensor([2, 3, 6]);
    const aVals = randomTensor(random, [2, 3, 6]);
    (aT.data as Float32Array).set(aVals.data);
    const y = engine.matmul(aT, w, { activation: 'relu' });
    expect(y.dims).toEqual([2, 3, 10]);
    expectMatches(y.data, referenceMatmul(aVals, b, { activation: 'relu' }).data, 1e-5);
    aT.release();
    const before = engine.stats().usedBytes;
    for (const dims of [[0, 6], [0, 3, 6], [2, 0, 6], [3, 0, 4, 6], [1, 0, 6]]) {
      const z = engine.matmul({ data: new Float32Array(0), dims }, w, { bias: new Float32Array(10), activation: 'gelu_tanh' });
      expect(z.dims).toEqual([...dims.slice(0, -1), 10]);
      expect(z.data.length).toBe(0);
      const z2 = engine.matmul({ data: new Float32Array(0), dims }, w, { out: new Float32Array(0) });
      expect(z2.data.length).toBe(0);
    }
    expect(engine.stats().usedBytes).toBe(before);
    w.release();
  });

  it('K = 1, N large and not a multiple of 8 (several 256-column chunks), transposeB, bias, every activation', () => {
    const engine = engineFor(backend);
    const random = rng(4);
    for (const [m, k, n] of [[3, 1, 1001], [17, 1, 777], [1, 3, 1025], [20, 2, 515]]) {
      for (const transposeB of [false, true]) {
        const a = randomTensor(random, [m, k]);
        const b = randomTensor(random, transposeB ? [n, k] : [k, n]);
        const bias = randomTensor(random, [n]).data;
        const w = engine.packWeights(b, { transposeB });
        expect(w.dims).toEqual([k, n]);
        for (const activation of ACTS) {
          const y = engine.matmul(a, w, { bias, activation });
          expectMatches(y.data, referenceMatmul(a, b, { transposeB, bias, activation }).data, 1e-5, `m ${m} k ${k} n ${n} t ${transposeB} ${activation}`);
        }
        w.release();
      }
    }
  });

  it('reads each input once: getters that change on the second read do not matter', () => {
    const engine = engineFor(backend);
    const random = rng(5);
    const b = randomTensor(random, [4, 9]);
    const w = engine.packWeights(b);
    const aVals = randomTensor(random, [2, 4]);
    const biasVals = randomTensor(random, [9]).data;
    const counts: Record<string, number> = {};
    const count = (key: string): number => (counts[key] = (counts[key] ?? 0) + 1);
    const a = {
      get data() {
        return count('a.data') === 1 ? aVals.data : new Float32Array(100);
      },
      get dims() {
        return count('a.dims') === 1 ? [2, 4] : [5, 20];
      },
    };
    const bias = {
      get data() {
        return count('bias.data') === 1 ? biasVals : new Float32Array(2);
      },
      get dims() {
        return count('bias.dims') === 1 ? [9] : [2];
      },
    };
    const options = {
      get bias() {
        return count('options.bias') === 1 ? bias : undefined;
      },
      get activation() {
        return count('options.activation') === 1 ? 'silu' : 'bogus';
      },
      get out() {
        count('options.out');
        return undefined;
      },
      get transposeB() {
        return count('options.transposeB') === 1 ? undefined : true;
      },
    };
    const y = engine.matmul(a as never, w, options as never);
    expectMatches(y.data, referenceMatmul(aVals, b, { bias: biasVals, activation: 'silu' }).data, 1e-5);
    for (const [key, value] of Object.entries(counts)) expect(value, key).toBe(1);
    // packWeights reads w once too
    let wReads = 0;
    const wObj = {
      get data() {
        wReads++;
        return wReads === 1 ? b.data : new Float32Array(1);
      },
      get dims() {
        return [4, 9];
      },
    };
    let optReads = 0;
    const optW = {
      get transposeB() {
        return optReads++ === 0 ? false : true;
      },
    };
    const w2 = engine.packWeights(wObj as never, optW as never);
    expect(wReads).toBe(1);
    expect(w2.dims).toEqual([4, 9]);
    expectMatches(engine.matmul(aVals, w2).data, referenceMatmul(aVals, b).data, 1e-5);
    w2.release();
    w.release();
  });

  it('getters that throw are refused with an AttentionError and leave no trace', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array(4), dims: [2, 2] });
    const before = engine.stats().usedBytes;
    const throwing = { get data(): Float32Array { throw new Error('nope'); }, dims: [2] };
    expectRefused(() => engine.matmul({ data: new Float32Array(2), dims: [1, 2] }, w, { bias: throwing }), 'INVALID_TENSOR');
    const badOptions = { get bias() { throw new Error('nope'); } };
    expect(errorOf(() => engine.matmul({ data: new Float32Array(2), dims: [1, 2] }, w, badOptions as never))).toBeInstanceOf(AttentionError);
    expect(errorOf(() => engine.packWeights({ get data(): Float32Array { throw new Error('x'); }, dims: [2, 2] }))).toBeInstanceOf(AttentionError);
    expect(engine.stats().usedBytes).toBe(before);
    w.release();
  });

  it('release twice is harmless; use after release is refused (sync and async); usedBytes back to baseline', async () => {
    const engine = engineFor(backend);
    const before = engine.stats().usedBytes;
    const w = engine.packWeights({ data: new Float32Array(64).fill(1), dims: [8, 8] });
    if (backend !== 'js') expect(engine.stats().usedBytes).toBeGreaterThan(before);
    w.release();
    w.release();
    expect(w.released).toBe(true);
    expect(engine.stats().usedBytes).toBe(before);
    const a = { data: new Float32Array(8), dims: [1, 8] };
    expectRefused(() => engine.matmul(a, w), 'INVALID_TENSOR', 'b');
    const error = await asyncErrorOf(() => engine.matmulAsync(a, w));
    expect(error).toBeInstanceOf(AttentionError);
    expect((error as AttentionError).code).toBe('INVALID_TENSOR');
    expect(engine.stats().usedBytes).toBe(before);
  });

  it('release during matmulAsync: result correct, memory freed after it settles, later use refused', async () => {
    const engine = engineFor(backend);
    const before = engine.stats().usedBytes;
    const random = rng(6);
    const b = randomTensor(random, [33, 300]);
    const a = randomTensor(random, [20, 33]);
    const bias = randomTensor(random, [300]).data;
    const w = engine.packWeights(b);
    const p1 = engine.matmulAsync(a, w, { bias, activation: 'gelu_tanh' });
    const p2 = engine.matmulAsync(a, w, { bias, activation: 'relu' });
    w.release();
    w.release();
    expect(w.released).toBe(true);
    expect(errorOf(() => engine.matmul(a, w))).toBeInstanceOf(AttentionError);
    const [y1, y2] = await Promise.all([p1, p2]);
    expectMatches(y1.data, referenceMatmul(a, b, { bias, activation: 'gelu_tanh' }).data, 1e-5);
    expectMatches(y2.data, referenceMatmul(a, b, { bias, activation: 'relu' }).data, 1e-5);
    expect(engine.stats().usedBytes).toBe(before);
    // a fresh pack reuses the memory and is not disturbed by the old handle
    const w2 = engine.packWeights(b);
    w.release();
    expectMatches(engine.matmul(a, w2).data, referenceMatmul(a, b).data, 1e-5);
    w2.release();
    expect(engine.stats().usedBytes).toBe(before);
  });

  it('packed weights after engine.dispose(), and in another engine', () => {
    const e1 = createEngineSync({ backend });
    const e2 = createEngineSync({ backend });
    const w = e1.packWeights({ data: new Float32Array([1, 2, 3, 4]), dims: [2, 2] });
    const a = { data: new Float32Array([1, 1]), dims: [1, 2] };
    expectRefused(() => e2.matmul(a, w), 'INVALID_TENSOR', 'b');
    expect(errorOf(() => e2.matmul(w as never, { data: new Float32Array(4), dims: [2, 2] }))).toBeInstanceOf(AttentionError);
    e1.dispose();
    expect(errorOf(() => e1.matmul(a, w))).toBeInstanceOf(AttentionError);
    expectRefused(() => e2.matmul(a, w), 'INVALID_TENSOR', 'b');
    // release after the owner is gone must not throw
    expect(errorOf(() => w.release())).toBeUndefined();
    expectRefused(() => e2.matmul(a, w), 'INVALID_TENSOR', 'b');
    e2.dispose();
  });

  it('a Proxy around PackedWeights, Object.create forgery, PackedWeights as a or in other ops: AttentionErrors', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array(16), dims: [4, 4] });
    const a = { data: new Float32Array(4), dims: [1, 4] };
    const failures: string[] = [];
    const expectAttentionError = (what: string, call: () => unknown): void => {
      const error = errorOf(call);
      if (!(error instanceof AttentionError)) failures.push(`${what}: ${String(error)}`);
    };
    expectAttentionError('proxy as b', () => engine.matmul(a, new Proxy(w, {}) as never));
    expectAttentionError('Object.create forgery', () => engine.matmul(a, Object.create(PackedWeights.prototype)));
    expectAttentionError('forgery with dims', () => engine.matmul(a, Object.assign(Object.create(PackedWeights.prototype), { data: new Float32Array(16) })));
    expectAttentionError('packed as a', () => engine.matmul(w as never, { data: new Float32Array(16), dims: [4, 4] }));
    expectAttentionError('packed as a and b', () => engine.matmul(w as never, w));
    expectAttentionError('packed to attention', () => engine.attention(w as never, w as never, w as never));
    expectAttentionError('packed to softmax', () => engine.softmax(w as never));
    expectAttentionError('packed as out', () => engine.matmul(a, { data: new Float32Array(16), dims: [4, 4] }, { out: w as never }));
    expectAttentionError('packed as bias', () => engine.matmul(a, w, { bias: w as never }));
    expectAttentionError('packed to packWeights', () => engine.packWeights(w as never));
    w.release();
    expect(failures).toEqual([]);
  });

  it('a PackedWeights with a redefined dims property cannot make the kernel read past the packed panels', () => {
    const engine = engineFor(backend);
    const b = { data: new Float32Array(4 * 8).fill(1), dims: [4, 8] };
    const w = engine.packWeights(b);
    Object.defineProperty(w, 'dims', { value: [4, 4096] });
    const a = { data: new Float32Array(4).fill(1), dims: [1, 4] };
    let y: { data: Float32Array; dims: number[] } | undefined;
    const error = errorOf(() => {
      y = engine.matmul(a, w) as never;
    });
    w.release();
    // either refused, or the real [4, 8] weights were used
    if (error === undefined) expect(y!.dims).toEqual([1, 8]);
    else expect(error).toBeInstanceOf(AttentionError);
  });

  it('PackedWeights cannot be constructed outside engine.packWeights (around a float32 or a bool resident tensor)', () => {
    const engine = engineFor(backend);
    const before = engine.stats().usedBytes;
    const Ctor = PackedWeights as unknown as new (...args: unknown[]) => PackedWeights;
    for (const type of ['float32', 'bool'] as const) {
      const storage = engine.tensor([64], { type });
      const error = errorOf(() => new Ctor(storage, 4, 4096));
      const forged = errorOf(() => new Ctor(Symbol('PackedWeights'), storage, 4, 4096));
      storage.release();
      expect(error).toBeInstanceOf(AttentionError);
      expect(forged).toBeInstanceOf(AttentionError);
    }
    expect(engine.stats().usedBytes).toBe(before);
  });

  it('a redefined dims property changes nothing: matmul reads the shape the weights were packed with', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array(32).fill(1), dims: [4, 8] });
    const neighbour = engine.tensor([64]);
    (neighbour.data as Float32Array).fill(7);
    Object.defineProperty(w, 'dims', { value: [4, 24] });
    const y = engine.matmul({ data: new Float32Array(4).fill(1), dims: [1, 4] }, w);
    neighbour.release();
    w.release();
    expect(y.dims).toEqual([1, 8]);
    expect([...y.data]).toEqual(new Array(8).fill(4));
  });

  it('the handle exposes no storage tensor: nothing can write, reuse or release the packed floats behind it', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array([1, 2, 3, 4]), dims: [2, 2] });
    const reachable = [...Object.getOwnPropertyNames(w), ...Object.getOwnPropertyNames(Object.getPrototypeOf(w))]
      .map((key) => { try { return (w as unknown as Record<string, unknown>)[key]; } catch { return undefined; } });
    for (const value of reachable) expect(value === null || typeof value !== 'object' || !('ptr' in (value as object))).toBe(true);
    expect((w as unknown as { storage?: unknown }).storage).toBeUndefined();
    expect([...engine.matmul({ data: new Float32Array([1, 1]), dims: [1, 2] }, w).data]).toEqual([4, 6]);
    expect(w.released).toBe(false);
    w.release();
  });

  it('memory growth while packing (and after) leaves earlier resident tensors and the weights intact', () => {
    const engine = engineFor(backend);
    const random = rng(7);
    const aT = engine.tensor([3, 1024]);
    const aVals = randomTensor(random, [3, 1024]);
    (aT.data as Float32Array).set(aVals.data);
    const oldView = aT.data as Float32Array;
    const b = randomTensor(random, [1024, 4100]); // 16.8 MB packed
    const w = engine.packWeights(b);
    const b2 = randomTensor(random, [1024, 2049], 3);
    const w2 = engine.packWeights(b2, { transposeB: false });
    const bias = randomTensor(random, [4100]).data;
    const y = engine.matmul(aT, w, { bias, activation: 'silu' });
    const ref = referenceMatmul(aVals, b, { bias, activation: 'silu' });
    expectMatches(y.data, ref.data, tolerance.reduction(1024) * 32);
    expectMatches(engine.matmul(aVals, w2).data, referenceMatmul(aVals, b2).data, tolerance.reduction(1024) * 32 * 3);
    // a view taken before growth: either still valid (shared memory) or detached; both refused or correct
    const error = errorOf(() => engine.matmul({ data: oldView, dims: [3, 1024] }, w));
    if (error !== undefined) expect(error).toBeInstanceOf(AttentionError);
    w.release();
    w2.release();
    aT.release();
  });

  it('packing a resident w whose storage allocation grows memory packs the right values', () => {
    const engine = engineFor(backend);
    const random = rng(11);
    const vals = randomTensor(random, [700, 3001]);
    const wT = engine.tensor([3001, 700]);
    (wT.data as Float32Array).set(vals.data);
    const w = engine.packWeights(wT, { transposeB: true });
    wT.release();
    const a = randomTensor(random, [2, 700]);
    expectMatches(engine.matmul(a, w).data, referenceMatmul(a, { data: vals.data, dims: [3001, 700] }, { transposeB: true }).data, tolerance.reduction(700) * 32);
    w.release();
  });

  it('many pack/release cycles (sizes varied, some refused, some used) leave usedBytes at its baseline', async () => {
    const engine = engineFor(backend);
    const before = engine.stats().usedBytes;
    const random = rng(8);
    for (let i = 0; i < 60; i++) {
      const k = 1 + (i % 7) * 13, n = 1 + ((i * 37) % 300);
      const b = randomTensor(random, i % 2 === 1 ? [n, k] : [k, n]);
      const w = engine.packWeights(b, { transposeB: i % 2 === 1 });
      const a = randomTensor(random, [1 + (i % 5), k]);
      if (i % 3 === 0) engine.matmul(a, w, { bias: new Float32Array(n), activation: 'relu' });
      if (i % 3 === 1) await engine.matmulAsync(a, w);
      errorOf(() => engine.matmul(a, w, { bias: new Float32Array(n + 1) }));
      errorOf(() => engine.packWeights({ data: new Float32Array(k * n), dims: [k, n] }, { transposeB: 'x' as never }));
      w.release();
    }
    expect(engine.stats().usedBytes).toBe(before);
  });

  it('transposeB option with packed weights: false accepted, anything else refused', () => {
    const engine = engineFor(backend);
    const w = engine.packWeights({ data: new Float32Array(4), dims: [2, 2] });
    const a = { data: new Float32Array(2), dims: [1, 2] };
    expect(engine.matmul(a, w, { transposeB: false }).dims).toEqual([1, 2]);
    expectRefused(() => engine.matmul(a, w, { transposeB: 1 as never }), 'INVALID_OPTION', 'options.transposeB');
    expectRefused(() => engine.matmul(a, w, { activation: null as never }), 'INVALID_OPTION', 'options.activation');
    expectRefused(() => engine.matmul(a, w, { bias: null as never }), 'INVALID_TENSOR');
    w.release();
  });
});

describe.each(BACKENDS.filter((b) => b !== 'js'))('packed matmul threads on %s', (backend) => {
  it('same bits for 1 and 2 threads, sync and async, M 15/16/17/129, N 520 (256-column chunks), K 300, every activation', async () => {
    const random = rng(10);
    const k = 300, n = 520;
    const b = randomTensor(random, [n, k]);
    const bias = randomTensor(random, [n]).data;
    const inputs = [15, 16, 17, 129].map((m) => randomTensor(rng(m), [m, k]));
    const results: Float32Array[][] = [];
    for (const threads of [1, 2]) {
      const engine = createEngineSync({ backend, threads });
      const w = engine.packWeights(b, { transposeB: true });
      const ys: Float32Array[] = [];
      for (const a of inputs) {
        for (const activation of ACTS) {
          ys.push(engine.matmul(a, w, { bias, activation }).data);
          ys.push((await engine.matmulAsync(a, w, { bias, activation })).data);
        }
      }
      w.release();
      engine.dispose();
      results.push(ys);
    }
    const mismatches: number[] = [];
    for (let i = 0; i < results[0].length; i++) {
      if (!sameBits(results[0][i], results[1][i])) mismatches.push(i);
      if (!sameBits(results[0][i], results[0][i - (i % 2)])) mismatches.push(1000 + i);
    }
    expect(mismatches).toEqual([]);
    // and correct
    const ref = referenceMatmul(inputs[2], b, { transposeB: true, bias, activation: 'gelu_tanh' });
    expectMatches(results[0][2 * 4 * 2 + 2 * 2], ref.data, tolerance.reduction(k) * 16);
  });
});
