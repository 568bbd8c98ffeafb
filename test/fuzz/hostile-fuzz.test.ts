// Fuzzing with hostile inputs and lifetimes: each tensor of a random attention call (fuzzCase) is
// handed over in a random disguise, and the call must either give the reference's result or throw
// an AttentionError, never anything else, and leave no block in use behind it.
//   kept:     plain; a data getter that lies after its first read; dims behind a counting Proxy;
//             a resident tensor (released, or its cache disposed, right after an async call is made)
//   refused:  a Float32Array subclass claiming more elements than it has; a buffer detached, or a
//             resizable one shrunk, from inside an option getter; a hole in the dims
// FUZZ_RUNS and FUZZ_SEED apply as in fuzz.test.ts.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AttentionError, createEngineSync, type Engine, type TensorLike } from '../../src/index.js';
import { referenceAttention } from '../../src/reference.js';
import { BACKENDS, maxAbs, maxError, tolerance } from '../helpers.js';
import { type FuzzCase, fuzzCase, fuzzInputs } from './attention-property.js';

const runs = Number(process.env.FUZZ_RUNS ?? 300);
const seed = Number(process.env.FUZZ_SEED ?? (process.env.FUZZ_FRESH_SEED ? Date.now() % 2 ** 31 : 20261127));

const KEPT = ['plain', 'lying getter', 'counted dims', 'resident'] as const;
const REFUSED = ['short subclass', 'detached in a getter', 'shrunk in a getter', 'hole in dims'] as const;
type Disguise = (typeof KEPT)[number] | (typeof REFUSED)[number];

const disguise = fc.constantFrom<Disguise>(...KEPT, ...KEPT, ...REFUSED);

interface Hostile {
  tensor: TensorLike<Float32Array>;
  /** Runs inside an option getter, after every tensor was read. */
  inGetter?: () => void;
  refused: boolean;
  resident?: { release(): void };
}

/** `t` handed over as `how`; on an engine, where a resident disguise needs one. */
function wrap(t: { data: Float32Array; dims: number[] }, how: Disguise, engine: Engine): Hostile {
  const empty = t.data.length === 0;
  switch (how) {
    case 'plain':
      return { tensor: t, refused: false };
    case 'lying getter': {
      let reads = 0;
      return { tensor: { get data() { return reads++ === 0 ? t.data : new Float32Array(t.data.length).fill(NaN); }, dims: t.dims }, refused: false };
    }
    case 'counted dims':
      return { tensor: { data: t.data, dims: new Proxy([...t.dims], {}) }, refused: false };
    case 'resident': {
      const r = engine.tensor(t.dims);
      (r.data as Float32Array).set(t.data);
      return { tensor: r as unknown as TensorLike<Float32Array>, refused: false, resident: r };
    }
    case 'short subclass': {
      class Short extends Float32Array {
        override get length(): number {
          return t.data.length;
        }
      }
      return { tensor: { data: new Short(t.data.subarray(0, Math.max(0, t.data.length - 1))), dims: t.dims }, refused: !empty };
    }
    case 'detached in a getter': {
      const copy = t.data.slice();
      return { tensor: { data: copy, dims: t.dims }, inGetter: () => void structuredClone(copy.buffer, { transfer: [copy.buffer] }), refused: !empty };
    }
    case 'shrunk in a getter': {
      const buffer = new ArrayBuffer(t.data.byteLength, { maxByteLength: t.data.byteLength });
      const tracking = new Float32Array(buffer);
      tracking.set(t.data);
      return { tensor: { data: tracking, dims: t.dims }, inGetter: () => buffer.resize(Math.max(0, t.data.byteLength - 4)), refused: !empty };
    }
    case 'hole in dims': {
      const dims: number[] = [...t.dims];
      delete dims[1];
      return { tensor: { data: t.data, dims }, refused: true };
    }
  }
}

/** The call with disguised tensors: undefined when it behaved, else what went wrong. */
async function hostileCall(engine: Engine, c: FuzzCase, hows: [Disguise, Disguise, Disguise], useAsync: boolean): Promise<string | undefined> {
  const { q, k, v, options } = fuzzInputs(c);
  const wrapped = [wrap(q, hows[0], engine), wrap(k, hows[1], engine), wrap(v, hows[2], engine)];
  const expectRefusal = wrapped.some((w) => w.refused);
  const hostileOptions = {
    get causal() {
      for (const w of wrapped) w.inGetter?.();
      return options.causal;
    },
    scale: options.scale, softcap: options.softcap, window: options.window, mask: options.mask,
  };
  const used = engine.stats().usedBytes;
  let result: Float32Array | undefined;
  try {
    if (useAsync) {
      const call = engine.attentionAsync(wrapped[0].tensor, wrapped[1].tensor, wrapped[2].tensor, hostileOptions);
      for (const w of wrapped) w.resident?.release(); // released while the call runs: it must still see them
      result = (await call).data;
    } else {
      result = engine.attention(wrapped[0].tensor, wrapped[1].tensor, wrapped[2].tensor, hostileOptions).data;
    }
  } catch (error) {
    if (!(error instanceof AttentionError)) return `threw ${String(error)}`;
    if (!expectRefusal) return `refused a call it should run: ${error.message}`;
  } finally {
    for (const w of wrapped) w.resident?.release();
  }
  const residentBytes = wrapped.some((w) => w.resident) ? 0 : undefined;
  if (residentBytes === undefined && engine.stats().usedBytes !== used) return `left ${engine.stats().usedBytes - used} bytes in use`;
  if (expectRefusal) return result === undefined ? undefined : 'ran a call it should refuse';
  const expected = referenceAttention(q, k, v, options);
  const scale = c.scale ?? 1 / Math.sqrt(c.headDim);
  const bound = tolerance.attention(c.headDim, c.seqKV, c.softcap ?? scale * c.headDim) * Math.max(maxAbs(v.data), 1e-30);
  const err = maxError(result!, expected.data);
  return err <= bound ? undefined : `max error ${err} > ${bound}`;
}

describe.each(BACKENDS)('hostile fuzzing on %s', (backend) => {
  it(`runs what it checked, refuses what it cannot, on ${runs} random disguised calls (seed ${seed})`, async () => {
    const engine = createEngineSync({ backend, threads: backend === 'js' ? 1 : 2 });
    let failure: string | undefined;
    const result = await fc.check(
      fc.asyncProperty(fuzzCase, fc.tuple(disguise, disguise, disguise), fc.boolean(), async (c, hows, useAsync) => {
        failure = await hostileCall(engine, c, hows, useAsync);
        return failure === undefined;
      }),
      { numRuns: runs, seed },
    );
    if (result.failed) console.log(`hostile fuzz ${backend}: ${failure}; case ${JSON.stringify(result.counterexample)}`);
    console.log(`hostile fuzz ${backend}: ${result.numRuns} cases tried, ${result.failed ? 1 : 0} failures, seed ${seed}`);
    expect(engine.stats().usedBytes).toBe(0);
    engine.dispose();
    expect(result.failed).toBe(false);
  }, 600_000);
});
