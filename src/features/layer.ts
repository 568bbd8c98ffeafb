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
//
// Training: with options.train the result also carries `saved` (the inputs, q, k, v, the attention
// output and its log-sum-exp), and multiHeadAttentionBackward(dy, saved) gives, with A the attention
// output [B·S, Hq·Dv] and c the source of k and v:
//   dA = dy·woᵀ,  dwo = Aᵀ·dy,  dbo = Σ_rows dy
//   dq, dk, dv = attention's backward (FlashAttention-2's, in the layer's [B, S, H·D] layout)
//   dwq = xᵀ·dq, dwk = cᵀ·dk, dwv = cᵀ·dv, dbq = Σ_rows dq (and so on)
//   dx = dq·wqᵀ (+ dk·wkᵀ + dv·wvᵀ when c is x; else those are dcontext)
import { type Backend, operandArray } from '../backend.js';
import { AttentionError } from '../errors.js';
import { KVCache } from './kv-cache.js';
import { ResidentTensor } from '../memory/resident.js';
import { attentionOp } from '../ops/attention/index.js';
import { type AttentionLayout, type AttentionOutput, type AttentionPlan, type AttentionRopeOptions, finishAttentionPlan, readAttentionOptions } from '../ops/attention/plan.js';
import { attentionBackwardOp } from '../ops/attention-backward/index.js';
import { backwardPlanOf } from '../ops/attention-backward/plan.js';
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
  /**
   * Also return `saved`, what multiHeadAttentionBackward needs (not with a cache). The backward reads
   * the weights and the mask as they are then: update them after it.
   */
  train?: boolean;
}

/** What a training forward keeps for its backward: opaque, for engine.multiHeadAttentionBackward. */
export class MultiHeadSaved {
  /** @internal */
  constructor(
    readonly backend: Backend,
    readonly plan: AttentionPlan,
    readonly x: Float32Array,
    readonly source: Float32Array | undefined,
    readonly attended: Float32Array,
    readonly logSumExp: Float32Array,
    readonly weights: Readonly<Record<'wq' | 'wk' | 'wv' | 'wo', TensorLike<Float32Array>>>,
    readonly biases: ReadonlySet<string>,
    readonly embed: number,
    readonly outWidth: number,
  ) {}
}

/** A training forward's output: y and what its backward needs. */
export interface MultiHeadTrainOutput extends Tensor {
  saved: MultiHeadSaved;
}

/** The gradients of a layer: every input and weight (biases only where the forward had them). */
export interface MultiHeadGradients {
  /** [B, S, E] */
  dx: Tensor;
  /** [B, Skv, E], with options.context */
  dcontext?: Tensor;
  dwq: Tensor;
  dwk: Tensor;
  dwv: Tensor;
  dwo: Tensor;
  dbq?: Tensor;
  dbk?: Tensor;
  dbv?: Tensor;
  dbo?: Tensor;
}

const WEIGHT_KEYS = ['wq', 'wk', 'wv', 'wo', 'bq', 'bk', 'bv', 'bo'] as const;
const LAYER_KEYS = ['heads', 'kvHeads', 'causal', 'mask', 'scale', 'softcap', 'window', 'context', 'cache', 'rope', 'train'] as const;

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
export function multiHeadAttention(backend: Backend, x: TensorLike<Float32Array>, weights: MultiHeadWeights, options: MultiHeadOptions): Tensor | MultiHeadTrainOutput {
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
  if (opts.train !== undefined && typeof opts.train !== 'boolean') throw new AttentionError('INVALID_OPTION', `options.train must be a boolean, got ${describe(opts.train)}`, 'options.train');
  const train = opts.train === true;
  if (train && cache !== undefined) throw new AttentionError('INVALID_OPTION', 'options.train takes whole sequences: it cannot be combined with options.cache', 'options.train');
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
  let plan: AttentionPlan | undefined;
  if (cache) {
    attended = cache.step(q, k, v, attentionOptions);
  } else {
    plan = finishAttentionPlan(layout(q.data, k.data, v.data), attentionOptions, backend);
    attended = backend.run(attentionOp, train ? { ...plan, returnLogSumExp: true } : plan);
  }
  const y = addBias(backend.run(matmulOp, planMatmul(attended, asTensor(wo), undefined, backend)), bo);
  if (!train) return y;
  const biases = new Set(['bq', 'bk', 'bv', 'bo'].filter((name) => reads[name]));
  const saved = new MultiHeadSaved(
    backend, plan!, operandArray(xc.operand).slice(), contextRead ? operandArray(source.operand).slice() : undefined,
    attended.data, attended.logSumExp!.data, { wq: asTensor(wq), wk: asTensor(wk), wv: asTensor(wv), wo: asTensor(wo) }, biases, embed, wo.dims[1],
  );
  return { data: y.data, dims: y.dims, saved };
}

/** Column sums of a [rows, width] tensor (a bias's gradient). */
function columnSums(t: Tensor): Tensor {
  const width = t.dims[t.dims.length - 1];
  const sums = new Float64Array(width);
  for (let i = 0; i < t.data.length; i++) sums[i % width] += t.data[i];
  return { data: Float32Array.from(sums), dims: [width] };
}

/** The layer's backward; see the file header. */
export function multiHeadAttentionBackward(backend: Backend, dy: TensorLike<Float32Array>, saved: MultiHeadSaved): MultiHeadGradients {
  const dyRead = readTensor(dy, 'dy');
  if (!(saved instanceof MultiHeadSaved)) throw new AttentionError('INVALID_OPTION', `saved must be the saved of a multiHeadAttention call with train: true, got ${describe(saved)}`, 'saved');
  if (saved.backend !== backend) throw new AttentionError('INVALID_OPTION', "saved comes from another engine's multiHeadAttention", 'saved');
  const { plan, embed, outWidth } = saved;
  for (const [name, weight] of Object.entries(saved.weights)) {
    if (ResidentTensor.is(weight) && weight.released) throw new AttentionError('INVALID_TENSOR', `weights.${name} was released after the forward; the backward reads it`, `weights.${name}`);
  }
  const { batch, seqQ, seqKV, qHeads, kvHeads, headDim, valueDim } = plan;
  const dyc = floatTensor(dyRead, backend, 3);
  const want = [batch, seqQ, outWidth];
  dyc.dims.forEach((d, i) => {
    if (d !== want[i]) throw new AttentionError('SHAPE_MISMATCH', `dy.dims[${i}] is ${d} but the layer's output is [${want}]`, `dy.dims[${i}]`);
  });
  const mm = (a: TensorLike<Float32Array>, b: TensorLike<Float32Array>, options: { transposeA?: boolean; transposeB?: boolean }): Tensor => backend.run(matmulOp, planMatmul(a, b, options, backend));
  const rows = (data: Float32Array, count: number, width: number): TensorLike<Float32Array> => ({ data, dims: [count, width] });
  const dyData = operandArray(dyc.operand);
  const { wq, wk, wv, wo } = saved.weights;
  // y = A·wo + bo
  const dA = mm({ data: dyData, dims: want }, wo, { transposeB: true });
  const dwo = mm(rows(saved.attended, batch * seqQ, qHeads * valueDim), rows(dyData, batch * seqQ, outWidth), { transposeA: true });
  // attention, in the layer's layout: dq [B, S, Hq·D], dk [B, Skv, Hkv·D], dv [B, Skv, Hkv·Dv]
  const operand = (array: Float32Array) => ({ array, offset: 0 as const, length: array.length });
  const grads = backend.run(attentionBackwardOp, backwardPlanOf(plan, operand(saved.attended), operand(dA.data), operand(saved.logSumExp), {
    q: [batch, seqQ, qHeads * headDim], k: [batch, seqKV, kvHeads * headDim], v: [batch, seqKV, kvHeads * valueDim],
  }));
  const source = saved.source ?? saved.x;
  const dwq = mm(rows(saved.x, batch * seqQ, embed), rows(grads.dq.data, batch * seqQ, qHeads * headDim), { transposeA: true });
  const dwk = mm(rows(source, batch * seqKV, embed), rows(grads.dk.data, batch * seqKV, kvHeads * headDim), { transposeA: true });
  const dwv = mm(rows(source, batch * seqKV, embed), rows(grads.dv.data, batch * seqKV, kvHeads * valueDim), { transposeA: true });
  const dx = mm(grads.dq, wq, { transposeB: true });
  const dSource = mm(grads.dk, wk, { transposeB: true });
  const fromV = mm(grads.dv, wv, { transposeB: true });
  for (let i = 0; i < dSource.data.length; i++) dSource.data[i] += fromV.data[i];
  const result: MultiHeadGradients = { dx, dwq, dwk, dwv, dwo };
  if (saved.source) result.dcontext = dSource;
  else for (let i = 0; i < dx.data.length; i++) dx.data[i] += dSource.data[i];
  if (saved.biases.has('bq')) result.dbq = columnSums(grads.dq);
  if (saved.biases.has('bk')) result.dbk = columnSums(grads.dk);
  if (saved.biases.has('bv')) result.dbv = columnSums(grads.dv);
  if (saved.biases.has('bo')) result.dbo = columnSums({ data: dyData, dims: want });
  return result;
}
