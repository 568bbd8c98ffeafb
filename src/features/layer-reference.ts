// The multi-head attention layer and its backward in float64: the oracles of engine.multiHeadAttention
// and engine.multiHeadAttentionBackward. Plain loops and the float64 attention references; they check
// nothing (give them valid inputs).
//
//   q = x·wq + bq, k = c·wk + bk, v = c·wv + bv (c = context, else x), heads split from [B, S, H·D]
//   A = attention(q, k, v) merged back to [B, S, Hq·Dv],  y = A·wo + bo
// The backward by the chain rule: dA = dy·woᵀ, dwo = Aᵀ·dy, dbo = Σ dy; attention's backward
// (referenceAttentionBackward) gives dq, dk, dv; dwq = xᵀ·dq, dbq = Σ dq (k and v likewise, from c);
// dx = dq·wqᵀ, and dc = dk·wkᵀ + dv·wvᵀ is added to dx when c is x.
import type { TensorLike } from '../tensor.js';
import { type ReferenceAttentionOptions, referenceAttention } from '../ops/attention/reference.js';
import { referenceAttentionBackward } from '../ops/attention-backward/reference.js';
import type { ReferenceTensor } from '../ops/reference-math.js';

type Numbers = TensorLike<ArrayLike<number>>;

export interface ReferenceLayerWeights {
  wq: Numbers;
  wk: Numbers;
  wv: Numbers;
  wo: Numbers;
  bq?: Numbers;
  bk?: Numbers;
  bv?: Numbers;
  bo?: Numbers;
}

export interface ReferenceLayerOptions extends ReferenceAttentionOptions {
  heads: number;
  kvHeads?: number;
  /** [B, Skv, E]: keys and values from this sequence (cross-attention). */
  context?: Numbers;
}

export interface ReferenceLayerGradients {
  dx: ReferenceTensor;
  dcontext?: ReferenceTensor;
  dwq: ReferenceTensor;
  dwk: ReferenceTensor;
  dwv: ReferenceTensor;
  dwo: ReferenceTensor;
  dbq?: ReferenceTensor;
  dbk?: ReferenceTensor;
  dbv?: ReferenceTensor;
  dbo?: ReferenceTensor;
}

/** a [rows, inner] · b [inner, cols] (+ bias), with either operand read transposed. */
function product(a: ArrayLike<number>, b: ArrayLike<number>, rows: number, inner: number, cols: number, { ta = false, tb = false, bias }: { ta?: boolean; tb?: boolean; bias?: Numbers } = {}): Float64Array {
  const c = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      let sum = bias ? Number(bias.data[j]) : 0;
      for (let t = 0; t < inner; t++) sum += Number(ta ? a[t * rows + i] : a[i * inner + t]) * Number(tb ? b[j * inner + t] : b[t * cols + j]);
      c[i * cols + j] = sum;
    }
  }
  return c;
}

/** [B, S, H·D] <-> [B, H, S, D] (toHeads false: back). */
function heads(x: ArrayLike<number>, batch: number, seq: number, count: number, dim: number, toHeads: boolean): Float64Array {
  const y = new Float64Array(batch * seq * count * dim);
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < seq; s++) {
      for (let h = 0; h < count; h++) {
        for (let d = 0; d < dim; d++) {
          const merged = ((b * seq + s) * count + h) * dim + d;
          const split = ((b * count + h) * seq + s) * dim + d;
          if (toHeads) y[split] = Number(x[merged]);
          else y[merged] = Number(x[split]);
        }
      }
    }
  }
  return y;
}

/** Column sums of [rows, cols]. */
function columnSums(x: ArrayLike<number>, rows: number, cols: number): ReferenceTensor {
  const sums = new Float64Array(cols);
  for (let i = 0; i < rows * cols; i++) sums[i % cols] += Number(x[i]);
  return { data: sums, dims: [cols] };
}

/** Shapes and the projected, head-split tensors of a layer call. */
function forwardParts(x: Numbers, w: ReferenceLayerWeights, options: ReferenceLayerOptions) {
  const [batch, seq, embed] = x.dims;
  const c = options.context ?? x;
  const seqKV = c.dims[1];
  const qHeads = options.heads;
  const kvHeads = options.kvHeads ?? qHeads;
  const headDim = w.wq.dims[1] / qHeads;
  const valueDim = w.wv.dims[1] / kvHeads;
  const q = { data: heads(product(x.data, w.wq.data, batch * seq, embed, qHeads * headDim, { bias: w.bq }), batch, seq, qHeads, headDim, true), dims: [batch, qHeads, seq, headDim] };
  const k = { data: heads(product(c.data, w.wk.data, batch * seqKV, embed, kvHeads * headDim, { bias: w.bk }), batch, seqKV, kvHeads, headDim, true), dims: [batch, kvHeads, seqKV, headDim] };
  const v = { data: heads(product(c.data, w.wv.data, batch * seqKV, embed, kvHeads * valueDim, { bias: w.bv }), batch, seqKV, kvHeads, valueDim, true), dims: [batch, kvHeads, seqKV, valueDim] };
  const { heads: _h, kvHeads: _k, context: _c, ...attentionOptions } = options;
  return { batch, seq, embed, c, seqKV, qHeads, kvHeads, headDim, valueDim, q, k, v, attentionOptions, outWidth: w.wo.dims[1] };
}

/** y = the layer of x, in float64; see the file header. */
export function referenceMultiHeadAttention(x: Numbers, weights: ReferenceLayerWeights, options: ReferenceLayerOptions): ReferenceTensor {
  const p = forwardParts(x, weights, options);
  const attended = heads(referenceAttention(p.q, p.k, p.v, p.attentionOptions).data, p.batch, p.seq, p.qHeads, p.valueDim, false);
  return { data: product(attended, weights.wo.data, p.batch * p.seq, p.qHeads * p.valueDim, p.outWidth, { bias: weights.bo }), dims: [p.batch, p.seq, p.outWidth] };
}

/** The gradients of sum(dy ∘ layer(x)) with respect to x (and the context), the weights and the biases. */
export function referenceMultiHeadAttentionBackward(x: Numbers, weights: ReferenceLayerWeights, dy: Numbers, options: ReferenceLayerOptions): ReferenceLayerGradients {
  const p = forwardParts(x, weights, options);
  const { batch, seq, embed, seqKV, qHeads, kvHeads, headDim, valueDim, outWidth } = p;
  const rows = batch * seq;
  const kvRows = batch * seqKV;
  const attended = heads(referenceAttention(p.q, p.k, p.v, p.attentionOptions).data, batch, seq, qHeads, valueDim, false);
  const dA = product(dy.data, weights.wo.data, rows, outWidth, qHeads * valueDim, { tb: true });
  const dOut = { data: heads(dA, batch, seq, qHeads, valueDim, true), dims: [batch, qHeads, seq, valueDim] };
  const g = referenceAttentionBackward(p.q, p.k, p.v, dOut, p.attentionOptions);
  const dq = heads(g.dq.data, batch, seq, qHeads, headDim, false);
  const dk = heads(g.dk.data, batch, seqKV, kvHeads, headDim, false);
  const dv = heads(g.dv.data, batch, seqKV, kvHeads, valueDim, false);
  const dx = product(dq, weights.wq.data, rows, qHeads * headDim, embed, { tb: true });
  const dc = product(dk, weights.wk.data, kvRows, kvHeads * headDim, embed, { tb: true });
  const dcv = product(dv, weights.wv.data, kvRows, kvHeads * valueDim, embed, { tb: true });
  for (let i = 0; i < dc.length; i++) dc[i] += dcv[i];
  if (!options.context) for (let i = 0; i < dx.length; i++) dx[i] += dc[i];
  const result: ReferenceLayerGradients = {
    dx: { data: dx, dims: [batch, seq, embed] },
    dwq: { data: product(x.data, dq, embed, rows, qHeads * headDim, { ta: true }), dims: [embed, qHeads * headDim] },
    dwk: { data: product(p.c.data, dk, embed, kvRows, kvHeads * headDim, { ta: true }), dims: [embed, kvHeads * headDim] },
    dwv: { data: product(p.c.data, dv, embed, kvRows, kvHeads * valueDim, { ta: true }), dims: [embed, kvHeads * valueDim] },
    dwo: { data: product(attended, dy.data, qHeads * valueDim, rows, outWidth, { ta: true }), dims: [qHeads * valueDim, outWidth] },
  };
  if (options.context) result.dcontext = { data: dc, dims: [batch, seqKV, embed] };
  if (weights.bq) result.dbq = columnSums(dq, rows, qHeads * headDim);
  if (weights.bk) result.dbk = columnSums(dk, kvRows, kvHeads * headDim);
  if (weights.bv) result.dbv = columnSums(dv, kvRows, kvHeads * valueDim);
  if (weights.bo) result.dbo = columnSums(dy.data, rows, outWidth);
  return result;
}
