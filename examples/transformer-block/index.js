// A pre-norm transformer block on wasm-attention, checked against a plain float64 reference:
//   h = x + MHA(LN(x))           (causal self-attention, GQA 8/2)
//   y = h + W2·GELU(W1·LN(h) + b1) + b2
// Run: node examples/transformer-block/index.js   (prints the max error against the reference)
import { createEngine } from 'wasm-attention';
import { referenceAttention, referenceMatmul } from 'wasm-attention/reference';

const [B, S, E, HEADS, KV_HEADS, HIDDEN] = [2, 24, 64, 8, 2, 128];
const HEAD = E / HEADS;

let seed = 1;
const random = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5) * 0.5;
const tensor = (dims) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, random), dims });

export function makeWeights() {
  return {
    attention: {
      wq: tensor([E, HEADS * HEAD]), wk: tensor([E, KV_HEADS * HEAD]), wv: tensor([E, KV_HEADS * HEAD]), wo: tensor([HEADS * HEAD, E]),
      bq: tensor([HEADS * HEAD]), bk: tensor([KV_HEADS * HEAD]), bv: tensor([KV_HEADS * HEAD]), bo: tensor([E]),
    },
    ln1: { gamma: tensor([E]), beta: tensor([E]) },
    ln2: { gamma: tensor([E]), beta: tensor([E]) },
    w1: tensor([E, HIDDEN]), b1: tensor([HIDDEN]), w2: tensor([HIDDEN, E]), b2: tensor([E]),
  };
}

/** Layer norm over the last axis (any array type in, same type out). */
function layerNorm(x, width, { gamma, beta }, Out = Float32Array) {
  const out = new Out(x.length);
  for (let r = 0; r < x.length / width; r++) {
    let mean = 0, varSum = 0;
    for (let i = 0; i < width; i++) mean += x[r * width + i] / width;
    for (let i = 0; i < width; i++) varSum += (x[r * width + i] - mean) ** 2 / width;
    const inv = 1 / Math.sqrt(varSum + 1e-5);
    for (let i = 0; i < width; i++) out[r * width + i] = (x[r * width + i] - mean) * inv * gamma.data[i] + beta.data[i];
  }
  return out;
}

const gelu = (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

/** The block on the engine: attention layer and matmuls in WASM, the elementwise parts in JS. */
export function transformerBlock(engine, x, w) {
  const normed = { data: layerNorm(x.data, E, w.ln1), dims: x.dims };
  const attended = engine.multiHeadAttention(normed, w.attention, { heads: HEADS, kvHeads: KV_HEADS, causal: true });
  const h = attended.data.map((a, i) => a + x.data[i]);
  const hidden = engine.matmul({ data: layerNorm(h, E, w.ln2), dims: x.dims }, w.w1);
  for (let i = 0; i < hidden.data.length; i++) hidden.data[i] = gelu(hidden.data[i] + w.b1.data[i % HIDDEN]);
  const mlp = engine.matmul(hidden, w.w2);
  return { data: mlp.data.map((m, i) => m + w.b2.data[i % E] + h[i]), dims: x.dims };
}

/** The same block in float64 from the reference ops, with the heads split out by hand. */
export function referenceBlock(x, w) {
  const project = (t, m, b) => {
    const r = referenceMatmul(t, m);
    return { data: r.data.map((v, i) => v + b.data[i % m.dims[1]]), dims: r.dims };
  };
  const toHeads = (t, heads) => {
    const out = new Float64Array(t.data.length);
    for (let b = 0; b < B; b++) for (let s = 0; s < S; s++) for (let hd = 0; hd < heads; hd++) for (let d = 0; d < HEAD; d++) {
      out[((b * heads + hd) * S + s) * HEAD + d] = t.data[(b * S + s) * heads * HEAD + hd * HEAD + d];
    }
    return { data: out, dims: [B, heads, S, HEAD] };
  };
  const normed = { data: layerNorm(x.data, E, w.ln1, Float64Array), dims: x.dims };
  const a = w.attention;
  const att = referenceAttention(toHeads(project(normed, a.wq, a.bq), HEADS), toHeads(project(normed, a.wk, a.bk), KV_HEADS), toHeads(project(normed, a.wv, a.bv), KV_HEADS), { causal: true });
  const merged = new Float64Array(B * S * E);
  for (let b = 0; b < B; b++) for (let hd = 0; hd < HEADS; hd++) for (let s = 0; s < S; s++) for (let d = 0; d < HEAD; d++) {
    merged[(b * S + s) * E + hd * HEAD + d] = att.data[((b * HEADS + hd) * S + s) * HEAD + d];
  }
  const attended = project({ data: merged, dims: x.dims }, a.wo, a.bo);
  const h = attended.data.map((v, i) => v + x.data[i]);
  const hidden = project({ data: layerNorm(h, E, w.ln2, Float64Array), dims: x.dims }, w.w1, w.b1);
  const mlp = project({ data: hidden.data.map(gelu), dims: hidden.dims }, w.w2, w.b2);
  return { data: mlp.data.map((m, i) => m + h[i]), dims: x.dims };
}

export async function main() {
  const engine = await createEngine();
  const weights = makeWeights();
  const x = tensor([B, S, E]);
  const y = transformerBlock(engine, x, weights);
  const r = referenceBlock(x, weights);
  let err = 0;
  for (let i = 0; i < r.data.length; i++) err = Math.max(err, Math.abs(y.data[i] - r.data[i]));
  console.log(`transformer block [${y.dims}] on ${engine.backend}: max error against the float64 reference ${err.toExponential(2)}`);
  engine.dispose();
  return err;
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
