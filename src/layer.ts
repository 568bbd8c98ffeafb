// engine.multiHeadAttention: the whole layer of the transformer,
//   q = x·wq + bq,  k = c·wk + bk,  v = c·wv + bv   (c = options.context for cross-attention, else x)
//   y = concat_h(attention(q_h, k_{h/(Hq/Hkv)}, v_{h/(Hq/Hkv)})) · wo + bo
// x [B, S, E]; wq [E, Hq·Dk], wk [E, Hkv·Dk], wv [E, Hkv·Dv], wo [Hq·Dv, Eout]; y [B, S, Eout].
// The projections come out as [B, S, H·D], which attention reads in place through strides (head h
// of row s at s·H·D + h·D): no transposes. With a cache, this step's k and v are appended to it and
// q attends over everything cached.
import type { AttentionOutput, Engine } from './engine.js';
import { AttentionError } from './errors.js';
import type { KVCache } from './kv-cache.js';
import { type AttentionLayout, planAttentionOptions } from './plan.js';
import { type Tensor, type TensorLike, checkFloatTensor, checkOptionsObject, describe } from './tensor.js';

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
}

function addBias(t: Tensor, bias: TensorLike<Float32Array> | undefined, name: string): Tensor {
  if (!bias) return t;
  const width = t.dims[t.dims.length - 1];
  const dims = checkFloatTensor(bias, name, 1);
  if (dims[0] !== width) throw new AttentionError('SHAPE_MISMATCH', `${name}.dims[0] is ${dims[0]} but the projection has ${width} columns`, `${name}.dims[0]`);
  for (let i = 0; i < t.data.length; i++) t.data[i] += bias.data[i % width];
  return t;
}

/** The multi-head attention layer; see the file header. */
export function multiHeadAttention(engine: Engine, x: TensorLike<Float32Array>, weights: MultiHeadWeights, options: MultiHeadOptions): Tensor {
  const [batch, seq, embed] = checkFloatTensor(x, 'x', 3);
  if (weights === null || typeof weights !== 'object') throw new AttentionError('INVALID_TENSOR', `weights must be an object { wq, wk, wv, wo, ... }, got ${describe(weights)}`, 'weights');
  const opts = checkOptionsObject(options, 'options') as Partial<MultiHeadOptions>;
  const heads = opts.heads;
  if (typeof heads !== 'number' || !Number.isInteger(heads) || heads < 1) throw new AttentionError('INVALID_OPTION', `options.heads must be an integer >= 1, got ${describe(heads)}`, 'options.heads');
  const kvHeads = opts.kvHeads ?? heads;
  if (!Number.isInteger(kvHeads) || kvHeads < 1 || heads % kvHeads !== 0) {
    throw new AttentionError('INVALID_OPTION', `options.kvHeads must divide options.heads (${heads}), got ${describe(opts.kvHeads)}`, 'options.kvHeads');
  }
  const width = (w: TensorLike<Float32Array>, name: string, rows: number, per: number): number => {
    const [r, c] = checkFloatTensor(w, `weights.${name}`, 2);
    if (r !== rows) throw new AttentionError('SHAPE_MISMATCH', `weights.${name}.dims[0] is ${r} but must be ${rows}`, `weights.${name}.dims[0]`);
    if (c % per !== 0) throw new AttentionError('SHAPE_MISMATCH', `weights.${name}.dims[1] is ${c}, not a multiple of ${per} heads`, `weights.${name}.dims[1]`);
    return c / per;
  };
  const headDim = width(weights.wq, 'wq', embed, heads);
  const valueDim = width(weights.wv, 'wv', embed, kvHeads);
  if (width(weights.wk, 'wk', embed, kvHeads) !== headDim) {
    throw new AttentionError('SHAPE_MISMATCH', `weights.wk.dims[1] is ${weights.wk.dims[1]} but must be kvHeads·headDim = ${kvHeads * headDim}`, 'weights.wk.dims[1]');
  }
  width(weights.wo, 'wo', heads * valueDim, 1);
  let source = x;
  if (opts.context !== undefined) {
    const [cb, , ce] = checkFloatTensor(opts.context, 'options.context', 3);
    if (cb !== batch || ce !== embed) throw new AttentionError('SHAPE_MISMATCH', `options.context is [${opts.context.dims}] but must be [${batch}, Skv, ${embed}]`, 'options.context.dims');
    source = opts.context;
  }
  const q = addBias(engine.matmul(x, weights.wq), weights.bq, 'weights.bq');
  const k = addBias(engine.matmul(source, weights.wk), weights.bk, 'weights.bk');
  const v = addBias(engine.matmul(source, weights.wv), weights.bv, 'weights.bv');
  const attentionOptions = { causal: opts.causal, mask: opts.mask, scale: opts.scale, softcap: opts.softcap, window: opts.window };
  let attended: AttentionOutput;
  if (opts.cache) {
    const c = opts.cache;
    if (c.kvHeads !== kvHeads || c.headDim !== headDim || c.valueDim !== valueDim || c.batch !== batch) {
      throw new AttentionError('SHAPE_MISMATCH', `options.cache holds batch ${c.batch}, ${c.kvHeads} kv heads of ${c.headDim}/${c.valueDim}; this layer needs batch ${batch}, ${kvHeads} of ${headDim}/${valueDim}`, 'options.cache');
    }
    opts.cache.append(k, v);
    attended = opts.cache.attention(q, attentionOptions);
  } else {
    const seqKV = source.dims[1];
    const rowMajor = (h: number, d: number, s: number) => ({ batch: s * h * d, head: d, row: h * d });
    const layout: AttentionLayout = {
      batch, qHeads: heads, kvHeads, seqQ: seq, seqKV, headDim, valueDim,
      q: rowMajor(heads, headDim, seq), k: rowMajor(kvHeads, headDim, seqKV), v: rowMajor(kvHeads, valueDim, seqKV),
      out: rowMajor(heads, valueDim, seq), outDims: [batch, seq, heads * valueDim], offset: 0,
    };
    const plan = planAttentionOptions(layout, attentionOptions, [[q.data, 'q'], [k.data, 'k'], [v.data, 'v']]);
    attended = engine.runAttention(plan, q.data, k.data, v.data);
  }
  return addBias(engine.matmul(attended, weights.wo), weights.bo, 'weights.bo');
}
