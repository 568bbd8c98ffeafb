// engine.attentionBackward on every backend against the float64 reference (referenceAttentionBackward,
// itself checked against finite differences in attention-backward-reference.test.ts): named cases for
// each option, the kernel's tile edges (rows around the register tile, its 8-tile blocks and its 16-block
// chunks, keys around the 64-key block), a seeded fuzz of mixed options, the log-sum-exp given or computed, the same bits
// for any thread count and sync or async, and refusals that leave no trace.
import { describe, expect, it } from 'vitest';
import { type AttentionBackwardOptions, createEngineSync } from '../src/index.js';
import { referenceAttention, referenceAttentionBackward } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, randomTensor, refused, relativeError, rng, tolerance } from './helpers.js';

interface Case {
  batch?: number;
  qHeads: number;
  kvHeads: number;
  seqQ: number;
  seqKV: number;
  headDim: number;
  valueDim?: number;
  options?: AttentionBackwardOptions;
}

type Float32Tensor = { data: Float32Array; dims: number[] };

function inputs(c: Case, seed: number): { q: Float32Tensor; k: Float32Tensor; v: Float32Tensor; dOut: Float32Tensor } {
  const random = rng(seed);
  const B = c.batch ?? 1;
  const Dv = c.valueDim ?? c.headDim;
  return {
    q: randomTensor(random, [B, c.qHeads, c.seqQ, c.headDim]),
    k: randomTensor(random, [B, c.kvHeads, c.seqKV, c.headDim]),
    v: randomTensor(random, [B, c.kvHeads, c.seqKV, Dv]),
    dOut: randomTensor(random, [B, c.qHeads, c.seqQ, Dv]),
  };
}

/** Runs the case on `backend` (with and without the forward's log-sum-exp) and compares with the reference. */
function check(backend: (typeof BACKENDS)[number], c: Case, seed: number, engine = engineFor(backend)): void {
  const { q, k, v, dOut } = inputs(c, seed);
  const options = c.options ?? {};
  const forward = engine.attention(q, k, v, { ...options, returnLogSumExp: true });
  const expected = referenceAttentionBackward(q, k, v, dOut, options);
  const scale = options.scale ?? 1 / Math.sqrt(c.headDim);
  const maxScore = Math.abs(scale) * maxAbs(q.data) * maxAbs(k.data) * c.headDim;
  const bound = tolerance.attentionBackward(c.headDim, c.valueDim ?? c.headDim, c.seqQ * (c.qHeads / c.kvHeads), c.seqKV, maxScore);
  for (const logSumExp of [forward.logSumExp, undefined]) {
    const grads = engine.attentionBackward(q, k, v, forward, dOut, { ...options, logSumExp });
    for (const name of ['dq', 'dk', 'dv'] as const) {
      expect(grads[name].dims, name).toEqual(expected[name].dims);
      for (const g of grads[name].data) expect(Number.isFinite(g), `${name} holds ${g}`).toBe(true);
      expect(relativeError(grads[name].data, expected[name].data), `${name}, ${logSumExp ? 'given' : 'computed'} log-sum-exp`).toBeLessThanOrEqual(bound);
    }
  }
}

const rowMask = (rows: number, keys: number, hidden: number): Uint8Array => Uint8Array.from({ length: rows * keys }, (_, i) => (Math.floor(i / keys) === hidden ? 0 : (i * 7) % 3));

describe.each(BACKENDS)('attentionBackward on %s against the float64 reference', (backend) => {
  it('plain: B2 H2 Sq5 Skv7 D8', () => check(backend, { batch: 2, qHeads: 2, kvHeads: 2, seqQ: 5, seqKV: 7, headDim: 8 }, 1));
  it('GQA (6 q heads on 2 kv heads), causal, Sq < Skv', () => check(backend, { batch: 2, qHeads: 6, kvHeads: 2, seqQ: 30, seqKV: 70, headDim: 17, valueDim: 9, options: { causal: true } }, 2));
  it('a sliding window, left 10 right 3, over two key blocks', () => check(backend, { qHeads: 2, kvHeads: 1, seqQ: 49, seqKV: 131, headDim: 64, options: { window: { left: 10, right: 3 } } }, 3));
  it('softcap 3 with scale 0.5, head dim 80', () => check(backend, { qHeads: 1, kvHeads: 1, seqQ: 25, seqKV: 64, headDim: 80, options: { softcap: 3, scale: 0.5 } }, 4));
  it('softcap saturating (scale 4, softcap 1)', () => check(backend, { qHeads: 2, kvHeads: 2, seqQ: 9, seqKV: 33, headDim: 16, options: { softcap: 1, scale: 4 } }, 5));
  it('an additive mask [Sq, Skv] with causal and interleaved RoPE', () => {
    const mask = { data: Float32Array.from({ length: 33 * 90 }, (_, i) => (i % 7) - 3), dims: [33, 90] };
    check(backend, { qHeads: 4, kvHeads: 2, seqQ: 33, seqKV: 90, headDim: 16, options: { causal: true, mask, rope: { interleaved: true } } }, 6);
  });
  it('a bool mask per batch that hides every key of a row: zero gradient there, never NaN', () => {
    const mask = { data: rowMask(2 * 9, 20, 3), dims: [2, 1, 9, 20] };
    check(backend, { batch: 2, qHeads: 2, kvHeads: 1, seqQ: 9, seqKV: 20, headDim: 8, options: { mask } }, 7);
    const engine = engineFor(backend);
    const { q, k, v, dOut } = inputs({ batch: 2, qHeads: 2, kvHeads: 1, seqQ: 9, seqKV: 20, headDim: 8 }, 7);
    const out = engine.attention(q, k, v, { mask });
    const { dq } = engine.attentionBackward(q, k, v, out, dOut, { mask });
    // row 3 of batch 0 (both heads) sees no key
    for (const h of [0, 1]) expect(maxAbs(dq.data.subarray(((0 * 2 + h) * 9 + 3) * 8, ((0 * 2 + h) * 9 + 4) * 8))).toBe(0);
  });
  it('half-split RoPE on part of the head (dims 4 of 6), Dv 5', () => check(backend, { qHeads: 3, kvHeads: 3, seqQ: 21, seqKV: 65, headDim: 6, valueDim: 5, options: { rope: { dims: 4, base: 100 } } }, 8));
  it('RoPE at given positions [B, S]', () => {
    const qPositions = { data: Int32Array.from([5, 9, 2, 7, 1, 0]), dims: [2, 3] };
    const kPositions = { data: Int32Array.from([0, 3, 4, 8, 1, 2, 6, 9]), dims: [2, 4] };
    check(backend, { batch: 2, qHeads: 2, kvHeads: 1, seqQ: 3, seqKV: 4, headDim: 8, options: { rope: { qPositions, kPositions } } }, 9);
  });
  it('odd head dims 1, 3 and 100, and Dv 1', () => {
    check(backend, { qHeads: 1, kvHeads: 1, seqQ: 7, seqKV: 9, headDim: 1, valueDim: 1 }, 10);
    check(backend, { qHeads: 2, kvHeads: 1, seqQ: 7, seqKV: 9, headDim: 3, valueDim: 1 }, 11);
    check(backend, { qHeads: 1, kvHeads: 1, seqQ: 13, seqKV: 70, headDim: 100, valueDim: 3, options: { causal: true } }, 12);
  });
  it('causal with more query rows than keys (top-left: every row sees key 0)', () => check(backend, { qHeads: 2, kvHeads: 2, seqQ: 40, seqKV: 9, headDim: 8, options: { causal: true } }, 13));

  it('tile edges: rows around the register tile and its 8-tile blocks, keys around the 64-key block', () => {
    let seed = 100;
    for (const seqQ of [1, 4, 5, 6, 7, 19, 20, 21, 23, 24, 25, 39, 40, 41, 47, 48, 49, 51, 97]) {
      for (const seqKV of [1, 63, 64, 65, 129]) {
        for (const causal of [false, true]) check(backend, { qHeads: 1, kvHeads: 1, seqQ, seqKV, headDim: seqQ % 2 ? 8 : 17, options: { causal } }, seed++);
      }
    }
  });

  it('chunk edges: rows around the kernel chunk of packed rows (16 row blocks: 640 simd, 768 relaxed)', () => {
    let seed = 300;
    for (const seqQ of [639, 640, 641, 767, 768, 769, 1539]) {
      for (const options of [{}, { causal: true }, { window: { left: 70, right: 3 } }] as AttentionBackwardOptions[]) {
        check(backend, { qHeads: 2, kvHeads: 1, seqQ, seqKV: 130, headDim: 5, valueDim: 3, options }, seed++);
      }
    }
  });

  it('fuzz: 24 seeded cases of mixed shapes and options', () => {
    const random = rng(2024);
    const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)];
    for (let n = 0; n < 24; n++) {
      const kvHeads = pick([1, 2]);
      const seqQ = 1 + Math.floor(random() * 40);
      const seqKV = 1 + Math.floor(random() * 140);
      const headDim = pick([2, 3, 8, 17, 32]);
      const options: AttentionBackwardOptions = {};
      if (random() < 0.4) options.causal = true;
      if (random() < 0.3) options.window = { left: Math.floor(random() * 30) };
      if (random() < 0.3) options.softcap = 1 + random() * 5;
      if (random() < 0.3) options.scale = 0.2 + random();
      if (random() < 0.25) options.mask = { data: Float32Array.from({ length: seqQ * seqKV }, () => random() * 4 - 2), dims: [1, 1, seqQ, seqKV] };
      else if (random() < 0.25) options.mask = { data: Uint8Array.from({ length: seqKV }, () => (random() < 0.7 ? 1 : 0)), dims: [seqKV] };
      if (headDim % 2 === 0 && random() < 0.3) options.rope = { interleaved: random() < 0.5 };
      check(backend, { batch: pick([1, 2]), qHeads: kvHeads * pick([1, 3]), kvHeads, seqQ, seqKV, headDim, valueDim: pick([headDim, 5]), options }, 500 + n);
    }
  });

  it('matches central differences of the float64 forward directly (a small GQA causal case with softcap)', () => {
    const c: Case = { qHeads: 2, kvHeads: 1, seqQ: 4, seqKV: 6, headDim: 3, options: { causal: true, softcap: 2 } };
    const { q, k, v, dOut } = inputs(c, 77);
    const engine = engineFor(backend);
    const grads = engine.attentionBackward(q, k, v, engine.attention(q, k, v, c.options), dOut, c.options);
    const loss = (x: Float64Array, which: 'q' | 'k' | 'v'): number => {
      const t = { q: { data: Float64Array.from(q.data), dims: q.dims }, k: { data: Float64Array.from(k.data), dims: k.dims }, v: { data: Float64Array.from(v.data), dims: v.dims } };
      t[which].data = x;
      const out = referenceAttention(t.q, t.k, t.v, c.options).data;
      return out.reduce((sum, o, i) => sum + o * dOut.data[i], 0);
    };
    for (const [which, x, g] of [['q', q, grads.dq], ['k', k, grads.dk], ['v', v, grads.dv]] as const) {
      const numeric = Array.from(x.data, (_, i) => {
        const up = Float64Array.from(x.data);
        const down = Float64Array.from(x.data);
        up[i] += 1e-5;
        down[i] -= 1e-5;
        return (loss(up, which) - loss(down, which)) / 2e-5;
      });
      expect(relativeError(g.data, numeric), which).toBeLessThanOrEqual(tolerance.attentionBackward(3, 3, 8, 6, 2) + tolerance.finiteDifference);
    }
  });

  it('a row hidden by a huge finite mask (-1e9, float32 lowest): a given log-sum-exp that lost log(sum) is not trusted', () => {
    const engine = engineFor(backend);
    const { q, k, v, dOut } = inputs({ qHeads: 1, kvHeads: 1, seqQ: 2, seqKV: 3, headDim: 2 }, 21);
    for (const hidden of [-1e9, -3.4028234663852886e38]) {
      const mask = { data: Float32Array.from([0, 0, 0, hidden, hidden, hidden]), dims: [2, 3] };
      const out = engine.attention(q, k, v, { mask, returnLogSumExp: true });
      const given = engine.attentionBackward(q, k, v, out, dOut, { mask, logSumExp: out.logSumExp });
      const computed = engine.attentionBackward(q, k, v, out, dOut, { mask });
      // row 1's weights sum to 1 (uniform in float32): its dOut row spreads over dv, never 3 times over
      for (const name of ['dq', 'dk', 'dv'] as const) expect(relativeError(given[name].data, computed[name].data), name).toBeLessThanOrEqual(1e-6);
      let spread = 0;
      for (let j = 0; j < 3; j++) spread += given.dv.data[j * 2];
      const p0 = engine.attention(q, k, v, { mask, returnWeights: true }).weights!.data;
      const expected = p0[0] * dOut.data[0] + p0[1] * dOut.data[0] + p0[2] * dOut.data[0] + dOut.data[2];
      expect(spread).toBeCloseTo(expected, 5);
    }
  });

  it('q and k far from 1 with a scale that brings the scores back (as the forward takes them)', () => {
    const engine = engineFor(backend);
    for (const [magnitude, scale] of [[2e19, 2e-38], [1e-19, 3e38]]) {
      const random = rng(9);
      const q = randomTensor(random, [1, 2, 7, 8], magnitude);
      const k = randomTensor(random, [1, 1, 9, 8], magnitude);
      const v = randomTensor(random, [1, 1, 9, 8]);
      const dOut = randomTensor(random, [1, 2, 7, 8]);
      const out = engine.attention(q, k, v, { scale, returnLogSumExp: true });
      const grads = engine.attentionBackward(q, k, v, out, dOut, { scale, logSumExp: out.logSumExp });
      const expected = referenceAttentionBackward(q, k, v, dOut, { scale });
      const maxScore = scale * maxAbs(q.data) * maxAbs(k.data) * 8;
      for (const name of ['dq', 'dk', 'dv'] as const) expect(relativeError(grads[name].data, expected[name].data), `${name} at |q| ${magnitude}`).toBeLessThanOrEqual(tolerance.attentionBackward(8, 8, 14, 9, maxScore));
    }
  });

  it('options.grads: the gradients written into the caller\'s arrays, the same bits; overlaps and wrong sizes refused', () => {
    const engine = engineFor(backend);
    const { q, k, v, dOut } = inputs({ batch: 2, qHeads: 4, kvHeads: 2, seqQ: 30, seqKV: 40, headDim: 8, valueDim: 5 }, 12);
    const out = engine.attention(q, k, v, { causal: true });
    const fresh = engine.attentionBackward(q, k, v, out, dOut, { causal: true });
    const grads = { dq: new Float32Array(q.data.length).fill(7), dk: new Float32Array(k.data.length).fill(7), dv: new Float32Array(v.data.length).fill(7) };
    const into = engine.attentionBackward(q, k, v, out, dOut, { causal: true, grads });
    for (const name of ['dq', 'dk', 'dv'] as const) {
      expect(into[name].data).toBe(grads[name]);
      expect(into[name].data).toEqual(fresh[name].data);
    }
    const onlyDk = engine.attentionBackward(q, k, v, out, dOut, { causal: true, grads: { dk: new Float32Array(k.data.length) } });
    expect(onlyDk.dk.data).toEqual(fresh.dk.data);
    expect(onlyDk.dq.data).toEqual(fresh.dq.data);
    // the engine's own tensors as grads: written in place
    const resident = { dq: engine.tensor(q.dims), dk: engine.tensor(k.dims), dv: engine.tensor(v.dims) };
    try {
      const inPlace = engine.attentionBackward(q, k, v, out, dOut, { causal: true, grads: { dq: resident.dq.data, dk: resident.dk.data, dv: resident.dv.data } });
      for (const name of ['dq', 'dk', 'dv'] as const) {
        expect(inPlace[name].data).toBe(resident[name].data);
        expect(resident[name].data, `resident ${name}`).toEqual(fresh[name].data);
      }
    } finally {
      for (const t of Object.values(resident)) t.release();
    }
    const used = engine.stats().usedBytes;
    refused(() => engine.attentionBackward(q, k, v, out, dOut, { grads: { dq: q.data } }), 'INVALID_OPTION', 'options.grads.dq');
    refused(() => engine.attentionBackward(q, k, v, out, dOut, { grads: { dk: grads.dk, dv: new Float32Array(grads.dk.buffer, 0, v.data.length) } }), 'INVALID_OPTION', 'options.grads.dv');
    refused(() => engine.attentionBackward(q, k, v, out, dOut, { grads: { dv: new Float32Array(3) } }), 'SHAPE_MISMATCH', 'options.grads.dv');
    refused(() => engine.attentionBackward(q, k, v, out, dOut, { grads: { dq: new Float64Array(q.data.length) as never } }), 'INVALID_DTYPE', 'options.grads.dq');
    refused(() => engine.attentionBackward(q, k, v, out, dOut, { grads: { dx: grads.dq } as never }), 'INVALID_OPTION', 'options.grads.dx');
    expect(engine.stats().usedBytes).toBe(used);
  });

  it('refuses bad calls with typed errors, before anything runs, and leaves no trace', () => {
    const engine = engineFor(backend);
    const { q, k, v, dOut } = inputs({ qHeads: 2, kvHeads: 1, seqQ: 3, seqKV: 5, headDim: 4 }, 1);
    const out = engine.attention(q, k, v);
    const before = engine.stats().usedBytes;
    refused(() => engine.attentionBackward(q, k, v, { data: new Float32Array(30), dims: [1, 2, 3, 5] }, dOut), 'SHAPE_MISMATCH', 'out.dims[3]');
    refused(() => engine.attentionBackward(q, k, v, out, { data: new Float64Array(24), dims: dOut.dims }), 'INVALID_DTYPE', 'dOut.data');
    refused(() => engine.attentionBackward(q, k, v, out, { data: dOut.data.subarray(1), dims: dOut.dims }), 'SHAPE_MISMATCH', 'dOut.data');
    refused(() => engine.attentionBackward(q, k, v, out, dOut, { logSumExp: { data: new Float32Array(6), dims: [1, 3, 2] } }), 'SHAPE_MISMATCH', 'options.logSumExp.dims[1]');
    refused(() => engine.attentionBackward(q, k, v, out, dOut, { returnWeights: true } as AttentionBackwardOptions), 'INVALID_OPTION', 'options.returnWeights');
    refused(() => engine.attentionBackward(q, { data: k.data.subarray(0, 15), dims: [1, 1, 5, 3] }, v, out, dOut), 'SHAPE_MISMATCH', 'k.dims[3]');
    const throwing = new Proxy([1, 2, 3, 4], { get: (t, key) => (key === '0' ? (() => { throw new Error('boom'); })() : Reflect.get(t, key)) });
    refused(() => engine.attentionBackward(q, k, v, out, { data: dOut.data, dims: throwing }), 'INVALID_DIMS', 'dOut.dims', /reading its elements threw/);
    expect(engine.stats().usedBytes).toBe(before);
  });
});

describe('attentionBackward: the same bits on any thread count, sync or async', () => {
  for (const backend of BACKENDS.filter((b) => b !== 'js')) {
    it(`${backend}: 1, 2 and 3 threads, and attentionBackwardAsync`, async () => {
      const engines = [1, 2, 3].map((threads) => createEngineSync({ backend, threads }));
      try {
        const c: Case = { batch: 2, qHeads: 8, kvHeads: 4, seqQ: 100, seqKV: 200, headDim: 32, options: { causal: true } };
        const { q, k, v, dOut } = inputs(c, 42);
        const out = engines[0].attention(q, k, v, { causal: true, returnLogSumExp: true });
        const options = { causal: true, logSumExp: out.logSumExp };
        const first = engines[0].attentionBackward(q, k, v, out, dOut, options);
        const runs = [...engines.slice(1).map((e) => e.attentionBackward(q, k, v, out, dOut, options)), await engines[2].attentionBackwardAsync(q, k, v, out, dOut, options)];
        for (const grads of runs) for (const name of ['dq', 'dk', 'dv'] as const) expect(grads[name].data).toEqual(first[name].data);
      } finally {
        for (const engine of engines) engine.dispose();
      }
    });

    it(`${backend}: fewer (batch, kv head) pairs than threads (items along keys and rows): the reference, and the bits of 1 thread`, async () => {
      const engines = [1, 2, 3].map((threads) => createEngineSync({ backend, threads }));
      try {
        const random = rng(31);
        const [seqQ, seqKV] = [800, 300];
        const cases: AttentionBackwardOptions[] = [
          { causal: true },
          { window: { left: 500, right: 20 }, mask: { data: Uint8Array.from({ length: seqKV }, () => (random() < 0.8 ? 1 : 0)), dims: [seqKV] } },
          { softcap: 3, mask: { data: Float32Array.from({ length: seqQ * seqKV }, () => random() * 2 - 1), dims: [1, 1, seqQ, seqKV] } },
        ];
        for (const [n, options] of cases.entries()) {
          const c: Case = { qHeads: 3, kvHeads: 1, seqQ, seqKV, headDim: 24, valueDim: 9, options };
          check(backend, c, 900 + n, engines[2]);
          const { q, k, v, dOut } = inputs(c, 900 + n);
          const out = engines[0].attention(q, k, v, { ...options, returnLogSumExp: true });
          const given = { ...options, logSumExp: out.logSumExp };
          const first = engines[0].attentionBackward(q, k, v, out, dOut, given);
          const runs = [...engines.slice(1).map((e) => e.attentionBackward(q, k, v, out, dOut, given)), await engines[2].attentionBackwardAsync(q, k, v, out, dOut, given)];
          for (const grads of runs) for (const name of ['dq', 'dk', 'dv'] as const) expect(grads[name].data, `${name}, case ${n}`).toEqual(first[name].data);
        }
        // no query rows (after a call that left gradients in memory): dk and dv are zero
        const q0 = { data: new Float32Array(0), dims: [1, 3, 0, 24] };
        const k0 = { data: Float32Array.from({ length: seqKV * 24 }, random), dims: [1, 1, seqKV, 24] };
        const v0 = { data: Float32Array.from({ length: seqKV * 9 }, random), dims: [1, 1, seqKV, 9] };
        const out0 = engines[2].attention(q0, k0, v0, { returnLogSumExp: true });
        const none = { logSumExp: out0.logSumExp };
        for (const grads of [engines[2].attentionBackward(q0, k0, v0, out0, out0, none), await engines[2].attentionBackwardAsync(q0, k0, v0, out0, out0, none)]) {
          expect(grads.dk.data.every((x) => x === 0) && grads.dv.data.every((x) => x === 0), 'dk, dv with no query rows').toBe(true);
        }
      } finally {
        for (const engine of engines) engine.dispose();
      }
    });
  }
});
