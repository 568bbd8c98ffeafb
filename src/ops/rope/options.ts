// The `rope` option that attention-shaped calls take (pool steps, the KV cache, the layer,
// attention with explicit positions): which rotation to apply to q and k before the scores, with
// ONNX's RotaryEmbedding (opset 23) as the definition (see plan.ts for the math).
import { AttentionError } from '../../errors.js';
import { checkBoolean, checkFinite, describe, readOptions } from '../../tensor.js';

/** `rope: { base = 10000, dims = headDim, interleaved = false }`. */
export interface RopeOptions {
  /** theta_i = base^(-2i/dims); default 10000. */
  base?: number;
  /** Leading elements of each head vector rotated, even, <= headDim; default (and 0) headDim. */
  dims?: number;
  /** Pairs (2i, 2i+1) (GPT-J) instead of (i, i + dims/2) (GPT-NeoX, Llama); default false. */
  interleaved?: boolean;
}

/** A rope option checked against a head dim. */
export interface RopeSpec {
  readonly base: number;
  readonly dims: number;
  readonly interleaved: boolean;
}

/** Reads `value` (undefined: no rotation) once and checks it for vectors of headDim floats. */
export function readRope(value: unknown, headDim: number, name = 'options.rope'): RopeSpec | undefined {
  if (value === undefined) return undefined;
  const opts = readOptions(value, name, ['base', 'dims', 'interleaved']);
  const base = checkFinite(opts.base, `${name}.base`, 10000);
  if (!(base > 0)) throw new AttentionError('INVALID_OPTION', `${name}.base must be > 0, got ${base}`, `${name}.base`);
  let dims = headDim;
  if (opts.dims !== undefined) {
    const d = opts.dims;
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new AttentionError('INVALID_OPTION', `${name}.dims must be a non-negative integer, got ${describe(d)}`, `${name}.dims`);
    }
    if (d > headDim) throw new AttentionError('INVALID_OPTION', `${name}.dims is ${d}, more than the head dim ${headDim}`, `${name}.dims`);
    if (d !== 0) dims = d; // 0 means the whole head, as ONNX's rotary_embedding_dim
  }
  if (dims % 2 !== 0) {
    throw new AttentionError('INVALID_OPTION', `${name}.dims must be even, got ${dims}${opts.dims === undefined || opts.dims === 0 ? ' (the head dim, its default)' : ''}`, `${name}.dims`);
  }
  return Object.freeze({ base, dims, interleaved: checkBoolean(opts.interleaved, `${name}.interleaved`) });
}

/** The last rotation's base^(-2i/dims), i < dims/2: a decode step asks for the same ones every time. */
let lastFrequencies: { dims: number; base: number; theta: Float64Array } | undefined;

function frequencies(dims: number, base: number): Float64Array {
  if (lastFrequencies?.dims === dims && lastFrequencies.base === base) return lastFrequencies.theta;
  const theta = new Float64Array(dims / 2);
  for (let i = 0; i < dims / 2; i++) theta[i] = base ** ((-2 * i) / dims);
  lastFrequencies = { dims, base, theta };
  return theta;
}

/** cos and sin of p·base^(-2i/dims) for every position p and pair i < dims/2, in float64, rounded to float32. */
export function angleTables(positions: ArrayLike<number>, dims: number, base: number): { cos: Float32Array; sin: Float32Array } {
  const half = dims / 2;
  const theta = frequencies(dims, base);
  const cos = new Float32Array(positions.length * half);
  const sin = new Float32Array(positions.length * half);
  for (let t = 0; t < positions.length; t++) {
    for (let i = 0; i < half; i++) {
      const angle = positions[t] * theta[i];
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Positions start .. start+count-1, for angleTables. */
export function positionRange(start: number, count: number): Float64Array {
  const positions = new Float64Array(count);
  for (let i = 0; i < count; i++) positions[i] = start + i;
  return positions;
}
