// A small transformer learns to copy, by gradient descent, in Node: the forward and backward passes
// on wasm-attention's ops, Adam written here.
//
// The task: a sequence of N random tokens, a separator, then the same N tokens again. The model reads
// the sequence left to right (causal) and predicts each next token; after the separator every token is
// a copy of the one N + 1 places back, which only attention can fetch. Loss and accuracy are counted
// on those N predictions.
//
// The model (one block, pre-residual, no norms):
//   h0 = embed[token]
//   h1 = h0 + MHA(h0)              causal, RoPE, biases (engine.multiHeadAttention, train: true)
//   h2 = h1 + relu(h1·W1 + b1)·W2 + b2
//   logits = h2·Wu
// Backward: softmax cross-entropy's gradient, then the chain rule through each line with
// engine.matmul (transposeA for the weights' gradients xᵀ·dy, transposeB for dy·Wᵀ) and
// engine.multiHeadAttentionBackward for the attention layer.
//
// Run: node examples/train/index.js [--steps 400] [--svg loss.svg]
//   prints the loss and accuracy as it goes, and writes the loss curve as an SVG.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { createEngineSync } from 'wasm-attention';

export const TASK = Object.freeze({ tokens: 16, copyLength: 8 });
const SEPARATOR = TASK.tokens;
const VOCAB = TASK.tokens + 1;
const LENGTH = 2 * TASK.copyLength; // inputs: N tokens, the separator, N - 1 copies
const [WIDTH, HEADS, HIDDEN] = [32, 4, 64];

/** mulberry32: seeded, so a run is the same every time. */
function generator(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const zeros = (dims) => ({ data: new Float32Array(dims.reduce((a, b) => a * b, 1)), dims });

function initialWeights(random) {
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
  const matrix = (rows, cols, gain = 1) => ({ data: Float32Array.from({ length: rows * cols }, () => (normal() * gain) / Math.sqrt(rows)), dims: [rows, cols] });
  return {
    embed: matrix(VOCAB, WIDTH, Math.sqrt(VOCAB)),
    attention: {
      wq: matrix(WIDTH, WIDTH), wk: matrix(WIDTH, WIDTH), wv: matrix(WIDTH, WIDTH), wo: matrix(WIDTH, WIDTH, 0.5),
      bq: zeros([WIDTH]), bk: zeros([WIDTH]), bv: zeros([WIDTH]), bo: zeros([WIDTH]),
    },
    w1: matrix(WIDTH, HIDDEN), b1: zeros([HIDDEN]), w2: matrix(HIDDEN, WIDTH, 0.5), b2: zeros([WIDTH]),
    unembed: matrix(WIDTH, VOCAB),
  };
}

/** Every parameter tensor of the model, flat, with its name. */
const parameters = (w) => [
  ['embed', w.embed], ...Object.entries(w.attention).map(([n, t]) => [`attention.${n}`, t]),
  ['w1', w.w1], ['b1', w.b1], ['w2', w.w2], ['b2', w.b2], ['unembed', w.unembed],
];

/** `batch` sequences of the task: inputs [batch, LENGTH] and the target after each. */
function makeBatch(random, batch) {
  const inputs = new Int32Array(batch * LENGTH);
  const targets = new Int32Array(batch * LENGTH);
  const n = TASK.copyLength;
  for (let b = 0; b < batch; b++) {
    const tokens = Array.from({ length: n }, () => Math.floor(random() * TASK.tokens));
    const sequence = [...tokens, SEPARATOR, ...tokens];
    for (let p = 0; p < LENGTH; p++) {
      inputs[b * LENGTH + p] = sequence[p];
      targets[b * LENGTH + p] = sequence[p + 1];
    }
  }
  return { inputs, targets, batch };
}

/** The predictions that count: after the separator (position N - 1 predicts it; N on are copies). */
const scored = (p) => p >= TASK.copyLength;

const add = (a, b) => {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
  return a;
};

/** x [rows, width] += bias [width]. */
function addRows(x, bias, width) {
  for (let i = 0; i < x.length; i++) x[i] += bias[i % width];
  return x;
}

/** Column sums of [rows, width]: a bias's gradient. */
function columnSums(x, width) {
  const sums = new Float32Array(width);
  for (let i = 0; i < x.length; i++) sums[i % width] += x[i];
  return sums;
}

/** The forward pass; returns the logits and what the backward needs. */
function forward(engine, w, { inputs, batch }) {
  const rows = batch * LENGTH;
  const h0 = new Float32Array(rows * WIDTH);
  for (let r = 0; r < rows; r++) h0.set(w.embed.data.subarray(inputs[r] * WIDTH, (inputs[r] + 1) * WIDTH), r * WIDTH);
  const attended = engine.multiHeadAttention({ data: h0, dims: [batch, LENGTH, WIDTH] }, w.attention, { heads: HEADS, causal: true, rope: {}, train: true });
  const h1 = add(Float32Array.from(h0), attended.data);
  const z = addRows(engine.matmul({ data: h1, dims: [rows, WIDTH] }, w.w1).data, w.b1.data, HIDDEN);
  const hidden = z.map((v) => (v > 0 ? v : 0));
  const h2 = add(addRows(engine.matmul({ data: hidden, dims: [rows, HIDDEN] }, w.w2).data, w.b2.data, WIDTH), h1);
  const logits = engine.matmul({ data: h2, dims: [rows, WIDTH] }, w.unembed).data;
  return { logits, saved: { rows, h1, z, hidden, h2, attention: attended.saved } };
}

/** Mean cross-entropy over the scored positions, its gradient, and how many were right. */
function crossEntropy(logits, { targets, batch }) {
  const grad = new Float32Array(logits.length);
  let loss = 0;
  let right = 0;
  const count = batch * TASK.copyLength;
  for (let r = 0; r < batch * LENGTH; r++) {
    if (!scored(r % LENGTH)) continue;
    const row = logits.subarray(r * VOCAB, (r + 1) * VOCAB);
    let max = -Infinity;
    let best = 0;
    for (let v = 0; v < VOCAB; v++) if (row[v] > max) [max, best] = [row[v], v];
    let sum = 0;
    for (let v = 0; v < VOCAB; v++) sum += Math.exp(row[v] - max);
    loss += (max + Math.log(sum) - row[targets[r]]) / count;
    if (best === targets[r]) right++;
    for (let v = 0; v < VOCAB; v++) grad[r * VOCAB + v] = (Math.exp(row[v] - max) / sum - (v === targets[r] ? 1 : 0)) / count;
  }
  return { loss, accuracy: right / count, grad };
}

/** The backward pass: the gradient of every parameter, by name. */
function backward(engine, w, { inputs }, { rows, h1, z, hidden, h2, attention }, dLogits) {
  const t = (data, cols) => ({ data, dims: [rows, cols] });
  const grads = new Map();
  grads.set('unembed', engine.matmul(t(h2, WIDTH), t(dLogits, VOCAB), { transposeA: true }).data);
  const dh2 = engine.matmul(t(dLogits, VOCAB), w.unembed, { transposeB: true }).data;
  grads.set('w2', engine.matmul(t(hidden, HIDDEN), t(dh2, WIDTH), { transposeA: true }).data);
  grads.set('b2', columnSums(dh2, WIDTH));
  const dz = engine.matmul(t(dh2, WIDTH), w.w2, { transposeB: true }).data.map((g, i) => (z[i] > 0 ? g : 0));
  grads.set('w1', engine.matmul(t(h1, WIDTH), t(dz, HIDDEN), { transposeA: true }).data);
  grads.set('b1', columnSums(dz, HIDDEN));
  const dh1 = add(engine.matmul(t(dz, HIDDEN), w.w1, { transposeB: true }).data, dh2);
  const layer = engine.multiHeadAttentionBackward({ data: dh1, dims: [rows / LENGTH, LENGTH, WIDTH] }, attention);
  for (const name of ['wq', 'wk', 'wv', 'wo', 'bq', 'bk', 'bv', 'bo']) grads.set(`attention.${name}`, layer[`d${name}`].data);
  const dh0 = add(layer.dx.data, dh1);
  const dEmbed = new Float32Array(VOCAB * WIDTH);
  for (let r = 0; r < rows; r++) for (let i = 0; i < WIDTH; i++) dEmbed[inputs[r] * WIDTH + i] += dh0[r * WIDTH + i];
  grads.set('embed', dEmbed);
  return grads;
}

/** Adam (Kingma and Ba), with bias correction. */
function adam(params, { rate = 3e-3, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8 } = {}) {
  const moments = new Map(params.map(([name, t]) => [name, { m: new Float32Array(t.data.length), v: new Float32Array(t.data.length) }]));
  let step = 0;
  return (grads) => {
    step++;
    const c1 = 1 - beta1 ** step;
    const c2 = 1 - beta2 ** step;
    for (const [name, tensor] of params) {
      const g = grads.get(name);
      const { m, v } = moments.get(name);
      for (let i = 0; i < g.length; i++) {
        m[i] = beta1 * m[i] + (1 - beta1) * g[i];
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
        tensor.data[i] -= (rate * (m[i] / c1)) / (Math.sqrt(v[i] / c2) + epsilon);
      }
    }
  };
}

/**
 * Trains for `steps` steps of `batch` sequences; every `every` steps, `log` gets the step, the
 * training loss and the accuracy on a held-out batch. Returns the loss of each step and the final
 * held-out loss and accuracy.
 */
export function train({ steps = 400, batch = 32, seed = 1, every = 25, log = () => {}, engine = createEngineSync() } = {}) {
  const random = generator(seed);
  const weights = initialWeights(random);
  const update = adam(parameters(weights));
  const heldOut = makeBatch(generator(seed + 1000), 256);
  const evaluate = () => crossEntropy(forward(engine, weights, heldOut).logits, heldOut);
  const losses = [];
  for (let step = 1; step <= steps; step++) {
    const data = makeBatch(random, batch);
    const pass = forward(engine, weights, data);
    const { loss, grad } = crossEntropy(pass.logits, data);
    losses.push(loss);
    update(backward(engine, weights, data, pass.saved, grad));
    if (step % every === 0 || step === steps) {
      const { accuracy } = evaluate();
      log({ step, loss, accuracy });
    }
  }
  const final = evaluate();
  return { losses, loss: final.loss, accuracy: final.accuracy };
}

/** The loss curve as an SVG line (log scale), 640 x 320. */
export function lossCurve(losses) {
  const [width, height, pad] = [640, 320, 40];
  const logs = losses.map((l) => Math.log10(Math.max(l, 1e-6)));
  const [lo, hi] = [Math.min(...logs), Math.max(...logs)];
  const x = (i) => pad + ((width - 2 * pad) * i) / Math.max(losses.length - 1, 1);
  const y = (v) => height - pad - ((height - 2 * pad) * (v - lo)) / Math.max(hi - lo, 1e-9);
  const points = logs.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="${points}"/>`,
    `<line x1="${pad}" y1="${height - pad}" x2="${width - pad}" y2="${height - pad}" stroke="black"/>`,
    `<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${height - pad}" stroke="black"/>`,
    `<text x="${width / 2}" y="${height - 10}" text-anchor="middle">step (1 to ${losses.length})</text>`,
    `<text x="${pad}" y="${pad - 10}">training loss, log scale: ${losses[0].toFixed(3)} to ${losses.at(-1).toFixed(4)}</text>`,
    '</svg>',
  ].join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { steps: { type: 'string', default: '400' }, svg: { type: 'string', default: 'loss.svg' }, seed: { type: 'string', default: '1' } } });
  const started = performance.now();
  const result = train({
    steps: Number(values.steps), seed: Number(values.seed),
    log: ({ step, loss, accuracy }) => console.log(`step ${String(step).padStart(4)}  loss ${loss.toFixed(4)}  held-out accuracy ${(100 * accuracy).toFixed(1)}%`),
  });
  writeFileSync(values.svg, lossCurve(result.losses));
  console.log(`held-out: loss ${result.loss.toFixed(4)}, accuracy ${(100 * result.accuracy).toFixed(1)}% after ${values.steps} steps (${((performance.now() - started) / 1000).toFixed(1)} s); loss curve in ${values.svg}`);
}
