// engine.multiHeadAttention: the whole layer of the transformer,
//   q = x·wq + bq,  k = c·wk + bk,  v = c·wv + bv   (c = options.context for cross-attention, else x)
//   y = concat_h(attention(q_h, k_{h/(Hq/Hkv)}, v_{h/(Hq/Hkv)})) · wo + bo
// x [B, S, E]; wq [E, Hq·Dk], wk [E, Hkv·Dk], wv [E, Hkv·Dv], wo [Hq·Dv, Eout]; y [B, S, Eout].
// The projections come out as [B, S, H·D], which attention reads in place through strides (head h
// of row s at s·H·D + h·D): no transposes. With a cache, this step's k and v are appended to it and
// q attends over everything cached. With rope, the projected q and k are rotated (RoPE) before the
// scores: at the positions engine.attention gives them without a cache (or options.rope's
// qPositions and kPositions), at the cache's positions with one (KVCache: new keys stored rotated).
// Every argument is read once and checked before anything runs; with a cache, the attention options
// are checked against the lengths after this step before the cache is touched (KVCache.step).
import { type Backend, operandArray } from '../backend.js';
import { AttentionError } from '../errors.js';
import { KVCache } from './kv-cache.js';
import { attentionOp } from '../ops/attention/index.js';
import { type AttentionLayout, type AttentionOutput, type AttentionRopeOptions, finishAttentionPlan, readAttentionOptions } from '../ops/attention/plan.js';
import { matmulOp } from '../ops/matmul/index.js';
import { planMatmul } from '../ops/matmul/plan.js';
import { type Checked, type Tensor, type TensorLike, describe, floatTensor, readOptions, readTensor } from '../tensor.js';

export interface MultiHeadWeights {
  wq: TensorLike<Float32Array>;
  wk: TensorLike<Float32Array>;
  wv: TensorLike<Float32Array>;
  wo: TensorLike<Float32Array>;
  bq?: TensorLike<Float32Array>;
  bk?: TensorLike<Float32Array>;
  bv?: TensorLike<Float32Array>;
  bo?: TensorLike<Float32Array>;
}

export interface MultiHeadOptions {
  /** Query heads Hq. */
  heads: number;
  /** Key/value heads Hkv (default heads; fewer is GQA). */
  kvHeads?: number;
  causal?: boolean;
  /** Broadcastable to [B, Hq, S, Skv]. */
  mask?: TensorLike;
  scale?: number;
  softcap?: number;
  window?: { left?: number; right?: number };
  /** `[B, Skv, E]`: keys and values from this sequence (cross-attention). */
  context?: TensorLike<Float32Array>;
  /** Append this step's keys and values here and attend over everything cached (decoding). */
  cache?: KVCache;
  /**
   * Rotate the projected q and k (RoPE) before the scores. Positions: as engine.attention's without
   * a cache (keys 0..Skv-1, queries Skv - S + i, or qPositions / kPositions); with a cache, each
   * sequence's own (new keys at length_b + t, stored rotated; queries at the newest positions), and
   * qPositions / kPositions are refused.
   */
  rope?: AttentionRopeOptions;
}

const WEIGHT_KEYS = ['wq', 'wk', 'wv', 'wo', 'bq', 'bk', 'bv', 'bo'] as const;
const LAYER_KEYS = ['heads', 'kvHeads', 'causal', 'mask', 'scale', 'softcap', 'window', 'context', 'cache', 'rope'] as const;

/** A checked tensor as a tensor object of our own (reading it again runs no user code). */
const asTensor = (t: Checked<Float32Array>): TensorLike<Float32Array> =>
  t.operand.resident && t.operand.offset === 0 && t.operand.length === t.operand.resident.length
    ? (t.operand.resident as unknown as TensorLike<Float32Array>)
    : { data: operandArray(t.operand), dims: t.dims };

function addBias(t: Tensor, bias: Checked<Float32Array> | undefined): Tensor {
  if (!bias) return t;
  const width = t.dims[t.dims.length - 1];
  const data = asTensor(bias).data;
  for (let i = 0; i < t.data.length; i++) t.data[i] += data[i % width];
  return t;
}

/** The multi-head attention layer; see the file header. */
export function multiHeadAttention(backend: Backend, x: TensorLike<Float32Array>, weights: MultiHeadWeights, options: MultiHeadOptions): Tensor {
  // every read first
  const xRead = readTensor(x, 'x');
  if (weights === null || typeof weights !== 'object') throw new AttentionError('INVALID_TENSOR', `weights must be an object { wq, wk, wv, wo, ... }, got ${describe(weights)}`, 'weights');
  const w = readOptions(weights, 'weights', WEIGHT_KEYS);
  const reads = Object.fromEntries(Object.entries(w).map(([name, t]) => [name, readTensor(t, `weights.${name}`)]));
  const opts = readOptions(options, 'options', LAYER_KEYS);
  const attentionOptions = readAttentionOptions(
    { causal: opts.causal, mask: opts.mask, scale: opts.scale, softcap: opts.softcap, window: opts.window, rope: opts.rope }, 'options',
  );
  const contextRead = opts.context === undefined ? undefined : readTensor(opts.context, 'options.context');
  // then every check
  const xc = floatTensor(xRead, backend, 3);
  const [batch, seq, embed] = xc.dims;
  const heads = opts.heads;
  if (typeof heads !== 'number' || !Number.isInteger(heads) || heads < 1) throw new AttentionError('INVALID_OPTION', `options.heads must be an integer >= 1, got ${describe(heads)}`, 'options.heads');
  const kvHeads = opts.kvHeads ?? heads;
  if (typeof kvHeads !== 'number' || !Number.isInteger(kvHeads) || kvHeads < 1 || heads % kvHeads !== 0) {
    throw new AttentionError('INVALID_OPTION', `options.kvHeads must divide options.heads (${heads}), got ${describe(opts.kvHeads)}`, 'options.kvHeads');
  }
  const tensor = (name: string, rank: number): Checked<Float32Array> => {
    const read = reads[name];
    if (!read) throw new AttentionError('INVALID_TENSOR', `weights.${name} is missing`, `weights.${name}`);
    return floatTensor(read, backend, rank);
  };
  const width = (name: string, rows: number, per: number): [Checked<Float32Array>, number] => {
    const t = tensor(name, 2);
    const [r, c] = t.dims;
    if (r !== rows) throw new AttentionError('SHAPE_MISMATCH', `weights.${name}.dims[0] is ${r} but must be ${rows}`, `weights.${name}.dims[0]`);
    if (c % per !== 0) throw new AttentionError('SHAPE_MISMATCH', `weights.${name}.dims[1] is ${c}, not a multiple of ${per} heads`, `weights.${name}.dims[1]`);
    return [t, c / per];
  };
  const [wq, headDim] = width('wq', embed, heads);
  const [wv, valueDim] = width('wv', embed, kvHeads);
  const [wk, kDim] = width('wk', embed, kvHeads);
  if (kDim !== headDim) {
    throw new AttentionError('SHAPE_MISMATCH', `weights.wk.dims[1] is ${wk.dims[1]} but must be kvHeads·headDim = ${kvHeads * headDim}`, 'weights.wk.dims[1]');
  }
  const [wo] = width('wo', heads * valueDim, 1);
  const bias = (name: string, columns: number): Checked<Float32Array> | undefined => {
    if (!reads[name]) return undefined;
    const t = tensor(name, 1);
    if (t.dims[0] !== columns) throw new AttentionError('SHAPE_MISMATCH', `weights.${name}.dims[0] is ${t.dims[0]} but the projection has ${columns} columns`, `weights.${name}.dims[0]`);
    return t;
  };
  const bq = bias('bq', heads * headDim);
  const bk = bias('bk', kvHeads * headDim);
  const bv = bias('bv', kvHeads * valueDim);
  const bo = bias('bo', wo.dims[1]);
  let source = xc;
  if (contextRead) {
    const context = floatTensor(contextRead, backend, 3);
    const [cb, , ce] = context.dims;
    if (cb !== batch || ce !== embed) throw new AttentionError('SHAPE_MISMATCH', `options.context is [${context.dims}] but must be [${batch}, Skv, ${embed}]`, 'options.context.dims');
    source = context;
  }
  const cache = opts.cache as KVCache | undefined;
  if (cache !== undefined) {
    if (!KVCache.is(cache) || !cache.ownedBy(backend)) throw new AttentionError('INVALID_OPTION', `options.cache must be a KVCache from this engine's kvCache(), got ${describe(cache)}`, 'options.cache');
    const c = cache;
    if (c.kvHeads !== kvHeads || c.headDim !== headDim || c.valueDim !== valueDim || c.batch !== batch) {
      throw new AttentionError('SHAPE_MISMATCH', `options.cache holds batch ${c.batch}, ${c.kvHeads} kv heads of ${c.headDim}/${c.valueDim}; this layer needs batch ${batch}, ${kvHeads} of ${headDim}/${valueDim}`, 'options.cache');
    }
  }
  const seqKV = source.dims[1];
  const rowMajor = (h: number, d: number, s: number) => ({ batch: s * h * d, head: d, row: h * d });
  const layout = (q: Float32Array, k: Float32Array, v: Float32Array): AttentionLayout => ({
    batch, qHeads: heads, kvHeads, seqQ: seq, seqKV, headDim, valueDim,
    q: { array: q, offset: 0, length: q.length }, k: { array: k, offset: 0, length: k.length }, v: { array: v, offset: 0, length: v.length },
    strides: { q: rowMajor(heads, headDim, seq), k: rowMajor(kvHeads, headDim, seqKV), v: rowMajor(kvHeads, valueDim, seqKV), out: rowMajor(heads, valueDim, seq) },
    outDims: [batch, seq, heads * valueDim], offset: 0,
  });
  // every check before any work: the attention options (and, with a cache, the room for this step)
  if (cache) {
    cache.checkStep(seqKV, seq, heads, attentionOptions);
  } else {
    const nothing = new Float32Array(0);
    finishAttentionPlan(layout(nothing, nothing, nothing), attentionOptions, backend);
  }
  const project = (input: Checked<Float32Array>, weight: Checked<Float32Array>, b: Checked<Float32Array> | undefined): Tensor =>
    addBias(backend.run(matmulOp, planMatmul(asTensor(input), asTensor(weight), undefined, backend)), b);
  const q = project(xc, wq, bq);
  const k = project(source, wk, bk);
  const v = project(source, wv, bv);
  let attended: AttentionOutput;
  if (cache) {
    attended = cache.step(q, k, v, attentionOptions);
  } else {
    attended = backend.run(attentionOp, finishAttentionPlan(layout(q.data, k.data, v.data), attentionOptions, backend));
  }
  return addBias(backend.run(matmulOp, planMatmul(attended, asTensor(wo), undefined, backend)), bo);
}
