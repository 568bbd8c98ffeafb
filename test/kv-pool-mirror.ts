// What the KV pool tests share: random step data, and Mirror, a sequence's history as the float64
// reference sees it (keys rotated when the steps were), which gives the expected output of each step
// and its tolerance.
import type { Engine, KVPool } from '../src/index.js';
import type { PoolStepOptions } from '../src/features/kv-pool.js';
import { type KVDtype, quantizeKV, referenceAttention, referenceRotary } from '../src/reference.js';
import { maxAbs, randomTensor, tolerance } from './helpers.js';

export interface Shape {
  qHeads: number;
  kvHeads: number;
  headDim: number;
  valueDim: number;
  /** The pool's page dtype; float32 when left out. */
  dtype?: KVDtype;
}

export const DTYPES: readonly KVDtype[] = ['float32', 'float16', 'int8'];

export type T = { data: Float32Array; dims: number[] };

/** One step's new data for a sequence. */
export interface StepData {
  q: T;
  k: T;
  v: T;
}

/** q [Hq, n, Dk], k [Hkv, n, Dk], v [Hkv, n, Dv]; q and k scaled by `magnitude`. */
export function stepData(random: () => number, shape: Shape, n: number, magnitude = 1): StepData {
  return {
    q: randomTensor(random, [shape.qHeads, n, shape.headDim], magnitude),
    k: randomTensor(random, [shape.kvHeads, n, shape.headDim], magnitude),
    v: randomTensor(random, [shape.kvHeads, n, shape.valueDim]),
  };
}

/** A pool for a shape (its kv heads and dims; q heads are the steps' business). */
export function poolFor(engine: Engine, shape: Shape, options: { pageSize?: number; maxTokens: number; pageSiz?: number }): KVPool {
  return engine.kvPool({ kvHeads: shape.kvHeads, headDim: shape.headDim, valueDim: shape.valueDim, dtype: shape.dtype, ...options });
}

/** What a call threw (undefined when it returned). */
export function thrown(call: () => unknown): unknown {
  try {
    call();
  } catch (e) {
    return e;
  }
  return undefined;
}

/**
 * A sequence's history as the reference sees it: keys (rotated when the steps were) and values per kv
 * head, as the pool's pages hold them (quantized by the reference's quantizeKV for float16 and int8).
 */
export class Mirror {
  keys: number[][];
  values: number[][];
  constructor(readonly shape: Shape) {
    this.keys = Array.from({ length: shape.kvHeads }, () => []);
    this.values = Array.from({ length: shape.kvHeads }, () => []);
  }

  /** The same history, for a fork. */
  clone(): Mirror {
    const m = new Mirror(this.shape);
    m.keys = this.keys.map((k) => [...k]);
    m.values = this.values.map((v) => [...v]);
    return m;
  }

  get length(): number {
    return this.keys[0].length / this.shape.headDim;
  }

  /** x [H, n, D] rotated (float64) by positions start.. when the options have rope. */
  private rotate(x: T, start: number, options: PoolStepOptions): ArrayLike<number> {
    if (!options.rope) return x.data;
    const n = x.dims[1];
    const positions = { data: Int32Array.from({ length: n }, (_, i) => start + i), dims: [n] };
    return referenceRotary({ data: x.data, dims: [1, ...x.dims] }, { positions, ...options.rope }).data;
  }

  append(k: T, v: T, options: PoolStepOptions = {}): void {
    const { headDim, valueDim } = this.shape;
    const n = k.dims[1];
    const dtype = this.shape.dtype ?? 'float32';
    const rotated = this.rotate(k, this.length, options);
    // float16 and int8 pages: the values they hold (the pool rotates keys in float32, then stores them)
    const kHeld = dtype === 'float32' ? rotated : quantizeKV(Float32Array.from(rotated), headDim, dtype);
    const vHeld = dtype === 'float32' ? v.data : quantizeKV(v.data, valueDim, dtype);
    for (let h = 0; h < this.shape.kvHeads; h++) {
      for (let i = 0; i < n * headDim; i++) this.keys[h].push(kHeld[h * n * headDim + i]);
      for (let i = 0; i < n * valueDim; i++) this.values[h].push(vHeld[h * n * valueDim + i]);
    }
  }

  /** Appends the step's k and v, then the reference attention of its q (any number of q heads) over the whole history, and the tolerance. */
  step(data: StepData, options: PoolStepOptions = {}): { expected: Float64Array; tol: number } {
    const { kvHeads, headDim, valueDim } = this.shape;
    const [qHeads, n] = data.q.dims;
    this.append(data.k, data.v, options);
    const length = this.length;
    const q = this.rotate(data.q, length - n, options);
    const k = Float64Array.from(this.keys.flat());
    const v = Float64Array.from(this.values.flat());
    const window = options.window?.left !== undefined ? { left: options.window.left } : undefined;
    const expected = referenceAttention(
      { data: q, dims: [1, qHeads, n, headDim] }, { data: k, dims: [1, kvHeads, length, headDim] }, { data: v, dims: [1, kvHeads, length, valueDim] },
      { causal: true, offset: length - n, scale: options.scale, softcap: options.softcap, window },
    ).data;
    const scale = options.scale ?? 1 / Math.sqrt(headDim);
    const maxScore = Math.abs(scale) * maxAbs(q) * maxAbs(k) * headDim;
    const scoreError = Math.abs(scale) * tolerance.quantizedScore(this.shape.dtype ?? 'float32', headDim, maxAbs(q), maxAbs(k), options.rope !== undefined);
    const tol = tolerance.attention(headDim, length, options.softcap ?? maxScore) + 2.5 * scoreError + tolerance.quantizedWeights(this.shape.dtype ?? 'float32', length);
    return { expected, tol: tol * Math.max(maxAbs(v), 1e-30) };
  }
}
