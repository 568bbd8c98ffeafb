// Peer benchmark of attention's backward pass: wasm-attention's engine.attentionBackward against
// tfjs-backend-wasm's automatic differentiation of the unfused attention graph, one thread, in one run.
//   npm run bench:peers:backward       (in the repo root, after `npm run build`; about 50 s on 2 cores)
//   npm --prefix bench/peers ci && node bench/peers/backward-peers.bench.js
//   node bench/peers/backward-peers.bench.js --shapes bert-128 --graphs per-head-2d --grads tfjs,flag-free --time 300 --json
//   node bench/peers/backward-peers.bench.js --outputs fresh   ours writes new arrays every call (default: reused)
// What each call does, from Float32Arrays to Float32Arrays (every library pays for its copies):
// - ours: engine.attentionBackward(q, k, v, out, dOut, { causal, logSumExp }) on the relaxed-SIMD build
//   (the SIMD build where relaxed SIMD does not run), threads: 1, with the output and log-sum-exp of one
//   earlier engine.attention(q, k, v, { causal, returnLogSumExp: true }) call; and, as a second row,
//   that forward call and the backward together, since tfjs cannot differentiate without its forward.
//   By default (--outputs reused) ours writes into the same caller arrays every call (options.grads,
//   and options.out for the forward), as a training loop does (bench/backward.bench.js does the same);
//   tfjs reuses its own heap's memory from call to call. --outputs fresh: new arrays every call.
// - tfjs: tf.grads((q, k, v) => softmax(q·kᵀ·scale + mask)·v)([q, k, v], dOut), i.e. the gradients of
//   sum(dOut ∘ attention) with respect to q, k and v, inside tf.tidy, then dataSync() of dq, dk and dv.
//   The mask (causal shapes only: an additive [Sq, Skv] tensor, -inf above the diagonal by default,
//   --mask -1e9 for the finite one) and the scale are made once, outside the timed call.
//   Graphs (--graphs): per-head-2d, one tf.grads per head on rank-2 tensors with kᵀ made by
//   tf.transpose, so that the forward's matMuls carry no transpose flag; batched-4d, tf.matMul on the
//   [B, H, S, D] tensors. tfjs-backend-wasm 4.22 runs a matMul on XNNPACK only when it is rank-2 (batch
//   1) with no transpose flag, every other one in its own scalar loop (src/cc/batch_mat_mul_impl.cc),
//   and tfjs-core's gradient of a matMul is two matMuls with transpose flags. tfjs-core's Node bundle
//   registers no gradients (see registerGradients below), so this bench registers them, with two forms
//   of the matMul gradient (--grads): "tfjs", tfjs-core's own formulas, and "flag-free", the same
//   products with the operands transposed by tf.transpose first, so that rank-2 ones reach XNNPACK.
//   Every graph with every form is checked (below); one whose first call takes over --prune (3) times
//   the fastest first call is not timed, and the fastest of those timed is shown, the others in footnotes.
// Before timing, each combination's dq, dk and dv are checked against ours: max |tfjs - ours| ÷
// max |ours| per tensor, the worst of the three; one above --tolerance (1e-3) is reported and not timed.
// The calls are timed in interleaved rounds, at least --rounds (3) and at least --time ms per shape: in
// each round every contender, in a rotated order, makes as many calls as fit in --block ms (at least one,
// so a slow tfjs call is one, and ours makes several). The median of each contender's calls is reported,
// and the ratio tfjs ms ÷ ours ms from those medians (goal: >= 3x against the backward alone).
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { relaunchWithRelaxedSimd } from '../relaxed-flag.js';
import { causalMask } from './models.js';

relaunchWithRelaxedSimd();

const { createEngineSync } = await import('../../dist/index.js');
const { buildSupported } = await import('../../dist/backends/wasm-module.js');

/** Attention shapes: q [B, H, Sq, D], k and v [B, H, Skv, D]. */
const SHAPES = {
  'bert-128': { batch: 1, heads: 12, seqQ: 128, seqKV: 128, headDim: 64, causal: false },
  'bert-512': { batch: 1, heads: 12, seqQ: 512, seqKV: 512, headDim: 64, causal: false },
  'gpt-1024': { batch: 1, heads: 12, seqQ: 1024, seqKV: 1024, headDim: 64, causal: true },
};
// in the order tried: the one expected fastest first, so that a shape's one-time costs (tfjs's heap
// growing to the shape's size) fall on it, and the pruning below can only be the more cautious for it
const GRAPHS = ['per-head-2d', 'batched-4d'];
const GRAD_FORMS = ['flag-free', 'tfjs'];

const { values } = parseArgs({
  options: {
    shapes: { type: 'string', default: Object.keys(SHAPES).join(',') },
    graphs: { type: 'string', default: GRAPHS.join(',') },
    grads: { type: 'string', default: GRAD_FORMS.join(',') },
    prune: { type: 'string', default: '3' },
    mask: { type: 'string', default: '-inf' },
    time: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '3' },
    block: { type: 'string', default: '500' },
    tolerance: { type: 'string', default: '1e-3' },
    outputs: { type: 'string', default: 'reused' },
    json: { type: 'boolean', default: false },
  },
});
const shapeNames = values.shapes.split(',');
for (const n of shapeNames) if (!SHAPES[n]) throw new Error(`unknown shape ${n}; known: ${Object.keys(SHAPES).join(', ')}`);
const graphs = values.graphs.split(',');
for (const g of graphs) if (!GRAPHS.includes(g)) throw new Error(`unknown graph ${g}; known: ${GRAPHS.join(', ')}`);
const gradForms = values.grads.split(',');
for (const g of gradForms) if (!GRAD_FORMS.includes(g)) throw new Error(`unknown gradient form ${g}; known: ${GRAD_FORMS.join(', ')}`);
const maskValue = /^-inf(inity)?$/i.test(values.mask) ? -Infinity : Number(values.mask);
if (!(maskValue < -1e6)) throw new Error(`--mask must be -inf or a large negative number, got ${values.mask}`);
const tolerance = Number(values.tolerance);
if (values.outputs !== 'reused' && values.outputs !== 'fresh') throw new Error(`--outputs must be reused or fresh, got ${values.outputs}`);
const reuse = values.outputs === 'reused';
const log = (text) => process.stderr.write(text);
const notes = [];

const random = (() => {
  let s = 12345;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) / 4294967296) * 2 - 1;
})();
const filled = (n) => Float32Array.from({ length: n }, random);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
/** max |actual - expected| ÷ max |expected| (NaN propagates). */
function relativeError(actual, expected) {
  if (actual.length !== expected.length) return NaN;
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= diff)) diff = d;
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return scale === 0 ? diff : diff / scale;
}
function oneLine(err) {
  return String(err?.message ?? err).split('\n')[0].slice(0, 240);
}

// ---------------------------------------------------------------------------------------------
// Ours.

const backend = buildSupported('wasm-relaxed-simd') ? 'wasm-relaxed-simd' : 'wasm-simd';
if (backend !== 'wasm-relaxed-simd') notes.push('wasm-relaxed-simd: not supported by this runtime; ours ran the wasm-simd build.');
const engine = createEngineSync({ backend, threads: 1 });

// ---------------------------------------------------------------------------------------------
// tfjs-backend-wasm, loaded as bench/peers/peers.bench.js loads it.

const tf = await import('@tensorflow/tfjs-core');
const tfWasm = await import('@tensorflow/tfjs-backend-wasm');
tfWasm.setThreadsCount(1);
if (!(await tf.setBackend('wasm'))) throw new Error('tf.setBackend("wasm") failed');
await tf.ready();
const tfThreads = tfWasm.getThreadsCount();

// tfjs-core's Node bundle (dist/tf-core.node.js) registers no gradients: they come with the
// @tensorflow/tfjs union package (tfjs-core/dist/register_all_gradients.js, an ES module tree with
// extensionless imports that Node does not load as it is). So the five this graph needs are registered
// here through tfjs's own registerGradient, with the formulas of tfjs-core 4.22's
// dist/gradients/{BatchMatMul,Multiply,Add,Softmax,Transpose}_grad.js; BatchMatMul's also in the
// flag-free form, picked by `matMulGradForm` at each call. A gradient already registered (by the union
// package, say) is left as it is, and then only the "tfjs" form is measured. tf.grads, its tape and
// every kernel are tfjs's.
let matMulGradForm = 'tfjs';
/** x with its last two axes swapped, by tf.transpose (a Transpose kernel, then a flag-free matMul). */
const swapLast = (x) => tf.transpose(x, [...x.shape.keys()].map((i, _, all) => (i < all.length - 2 ? i : i === all.length - 2 ? all.length - 1 : all.length - 2)));
function registerGradients() {
  const { assertAndGetBroadcastShape, getReductionAxes } = tf.broadcast_util;
  const reduceTo = (res, shape, outShape) => {
    const axes = getReductionAxes(shape, outShape);
    return tf.reshape(axes.length > 0 ? tf.sum(res, axes) : res, shape);
  };
  const T = swapLast;
  const configs = [
    {
      kernelName: 'BatchMatMul',
      inputsToSave: ['a', 'b'],
      gradFunc: (dy, [a, b], { transposeA, transposeB }) => {
        if (matMulGradForm === 'flag-free') {
          // y = op(a)·op(b): the same products as below, every operand laid out first, no flag
          if (!transposeA && !transposeB) return { a: () => tf.matMul(dy, T(b)), b: () => tf.matMul(T(a), dy) };
          if (!transposeA && transposeB) return { a: () => tf.matMul(dy, b), b: () => tf.matMul(T(dy), a) };
          if (transposeA && !transposeB) return { a: () => tf.matMul(b, T(dy)), b: () => tf.matMul(a, dy) };
          return { a: () => tf.matMul(T(b), T(dy)), b: () => tf.matMul(T(dy), T(a)) };
        }
        if (!transposeA && !transposeB) return { a: () => tf.matMul(dy, b, false, true), b: () => tf.matMul(a, dy, true, false) };
        if (!transposeA && transposeB) return { a: () => tf.matMul(dy, b, false, false), b: () => tf.matMul(dy, a, true, false) };
        if (transposeA && !transposeB) return { a: () => tf.matMul(b, dy, false, true), b: () => tf.matMul(a, dy, false, false) };
        return { a: () => tf.matMul(b, dy, true, true), b: () => tf.matMul(dy, a, true, true) };
      },
    },
    {
      kernelName: 'Multiply',
      inputsToSave: ['a', 'b'],
      gradFunc: (dy, [a, b]) => {
        const outShape = assertAndGetBroadcastShape(a.shape, b.shape);
        return {
          a: () => reduceTo(tf.mul(dy, tf.cast(b, 'float32')), a.shape, outShape),
          b: () => reduceTo(tf.mul(dy, tf.cast(a, 'float32')), b.shape, outShape),
        };
      },
    },
    {
      kernelName: 'Add',
      inputsToSave: ['a', 'b'],
      gradFunc: (dy, [a, b]) => {
        const outShape = assertAndGetBroadcastShape(a.shape, b.shape);
        return { a: () => reduceTo(dy, a.shape, outShape), b: () => reduceTo(dy, b.shape, outShape) };
      },
    },
    {
      kernelName: 'Softmax',
      outputsToSave: [true],
      gradFunc: (dy, [y], { dim }) => {
        const dyTimesY = tf.mul(dy, y);
        return { logits: () => tf.sub(dyTimesY, tf.mul(tf.sum(dyTimesY, [dim], true), y)) };
      },
    },
    {
      kernelName: 'Transpose',
      gradFunc: (dy, saved, { perm }) => ({ x: () => tf.transpose(dy, tf.backend_util.getUndoAxesPermutation(perm)) }),
    },
  ];
  const registered = [];
  for (const config of configs) {
    if (tf.getGradient(config.kernelName)) continue;
    tf.registerGradient(config);
    registered.push(config.kernelName);
  }
  return registered;
}
const registeredGradients = registerGradients();
if (registeredGradients.length) {
  notes.push(`tfjs-core ${tf.version_core}'s Node bundle registers no gradients (they come with the @tensorflow/tfjs package); this bench registered ${registeredGradients.join(', ')} with tf.registerGradient: tfjs-core's formulas (dist/gradients/*_grad.js), and for BatchMatMul also the flag-free form.`);
}
const forms = registeredGradients.includes('BatchMatMul') ? gradForms : gradForms.filter((f) => f === 'tfjs');
if (forms.length < gradForms.length) notes.push('BatchMatMul\'s gradient was registered already (not by this bench), so the flag-free form was not measured.');

/** The tfjs call of one graph: Float32Arrays in, { dq, dk, dv } Float32Arrays out. */
function tfjsCall(graph, s, x, scale, mask) {
  const attention4d = (q, k, v) => {
    let logits = tf.mul(tf.matMul(q, k, false, true), scale);
    if (mask) logits = tf.add(logits, mask);
    return tf.matMul(tf.softmax(logits, -1), v);
  };
  const attention2d = (q, k, v) => {
    let logits = tf.mul(tf.matMul(q, tf.transpose(k)), scale);
    if (mask) logits = tf.add(logits, mask);
    return tf.matMul(tf.softmax(logits, -1), v);
  };
  const qd = [s.batch, s.heads, s.seqQ, s.headDim];
  const kd = [s.batch, s.heads, s.seqKV, s.headDim];
  if (graph === 'batched-4d') {
    const grads = tf.grads(attention4d);
    return () => {
      const g = tf.tidy(() => grads([tf.tensor(x.q, qd), tf.tensor(x.k, kd), tf.tensor(x.v, kd)], tf.tensor(x.dOut, qd)));
      const [dq, dk, dv] = g.map((t) => t.dataSync());
      tf.dispose(g);
      return { dq, dk, dv };
    };
  }
  const grads = tf.grads(attention2d);
  const [qRows, kRows] = [s.seqQ * s.headDim, s.seqKV * s.headDim];
  return () => {
    const dq = new Float32Array(x.q.length);
    const dk = new Float32Array(x.k.length);
    const dv = new Float32Array(x.v.length);
    for (let head = 0; head < s.batch * s.heads; head++) {
      const [qa, ka] = [head * qRows, head * kRows];
      const g = tf.tidy(() =>
        grads(
          [
            tf.tensor2d(x.q.subarray(qa, qa + qRows), [s.seqQ, s.headDim]),
            tf.tensor2d(x.k.subarray(ka, ka + kRows), [s.seqKV, s.headDim]),
            tf.tensor2d(x.v.subarray(ka, ka + kRows), [s.seqKV, s.headDim]),
          ],
          tf.tensor2d(x.dOut.subarray(qa, qa + qRows), [s.seqQ, s.headDim]),
        ),
      );
      dq.set(g[0].dataSync(), qa);
      dk.set(g[1].dataSync(), ka);
      dv.set(g[2].dataSync(), ka);
      tf.dispose(g);
    }
    return { dq, dk, dv };
  };
}

// ---------------------------------------------------------------------------------------------
// Measurement.

// one call of every combination on a small shape first, so that tfjs's and V8's one-time costs do not
// fall on the first combination checked
{
  const s = { batch: 1, heads: 2, seqQ: 64, seqKV: 64, headDim: 64, causal: true };
  const n = 2 * 64 * 64;
  const x = { q: filled(n), k: filled(n), v: filled(n), dOut: filled(n) };
  const scale = tf.scalar(0.125);
  const mask = tf.tensor2d(causalMask(64, 64).map((m) => (m === 0 ? 0 : maskValue)), [64, 64]);
  for (const form of forms) {
    for (const graph of graphs) {
      matMulGradForm = form;
      tfjsCall(graph, s, x, scale, mask)();
    }
  }
  tf.dispose([scale, mask]);
}

const started = performance.now();
const rows = [];
for (const name of shapeNames) {
  const s = SHAPES[name];
  const qd = [s.batch, s.heads, s.seqQ, s.headDim];
  const kd = [s.batch, s.heads, s.seqKV, s.headDim];
  const x = { q: filled(qd.reduce((a, b) => a * b)), k: filled(kd.reduce((a, b) => a * b)), v: filled(kd.reduce((a, b) => a * b)), dOut: filled(qd.reduce((a, b) => a * b)) };
  const [q, k, v, dOut] = [{ data: x.q, dims: qd }, { data: x.k, dims: kd }, { data: x.v, dims: kd }, { data: x.dOut, dims: qd }];
  const backwardFlops = (2.5 * 4 * s.batch * s.heads * s.seqQ * s.seqKV * s.headDim) / (s.causal ? 2 : 1);
  log(`${name}: ours...`);
  const fwd = engine.attention(q, k, v, { causal: s.causal, returnLogSumExp: true });
  const out = { data: fwd.data, dims: fwd.dims };
  const grads = reuse ? { grads: { dq: new Float32Array(x.q.length), dk: new Float32Array(x.k.length), dv: new Float32Array(x.k.length) } } : {};
  const fwdOut = reuse ? { out: new Float32Array(x.q.length) } : {};
  const ours = () => engine.attentionBackward(q, k, v, out, dOut, { causal: s.causal, logSumExp: fwd.logSumExp, ...grads });
  const oursBoth = () => {
    const f = engine.attention(q, k, v, { causal: s.causal, returnLogSumExp: true, ...fwdOut });
    return engine.attentionBackward(q, k, v, { data: f.data, dims: f.dims }, dOut, { causal: s.causal, logSumExp: f.logSumExp, ...grads });
  };
  // the check's own arrays (ours() overwrites its outputs when they are reused)
  const expected = engine.attentionBackward(q, k, v, out, dOut, { causal: s.causal, logSumExp: fwd.logSumExp });
  ours();
  oursBoth();
  /** ms of one call, the best of two (a call's length sets how many calls it makes per round). */
  const estimate = (fn) => Math.min(...[0, 1].map(() => {
    const t = performance.now();
    fn();
    return performance.now() - t;
  }));
  const contenders = [
    { id: 'ours', run: ours, callMs: estimate(ours) },
    { id: 'ours-both', run: oursBoth, callMs: estimate(oursBoth) },
  ];

  const scale = tf.scalar(1 / Math.sqrt(s.headDim));
  const mask = s.causal ? tf.tensor2d(causalMask(s.seqQ, s.seqKV).map((m) => (m === 0 ? 0 : maskValue)), [s.seqQ, s.seqKV]) : undefined;
  const tfjs = [];
  const variants = forms.flatMap((form) => graphs.map((graph) => ({ graph, form, label: `${graph}, ${form} grads` })));
  for (const { graph, form, label } of variants) {
    log(` tfjs ${label}: check...`);
    const t0 = performance.now();
    try {
      const call = tfjsCall(graph, s, x, scale, mask);
      const run = () => {
        matMulGradForm = form;
        return call();
      };
      const got = run(); // untimed: warms up and is the output checked
      const errors = { dq: relativeError(got.dq, expected.dq.data), dk: relativeError(got.dk, expected.dk.data), dv: relativeError(got.dv, expected.dv.data) };
      const maxError = Math.max(errors.dq, errors.dk, errors.dv);
      const entry = { graph: label, errors, maxError: Number.isNaN(errors.dq + errors.dk + errors.dv) ? NaN : maxError, checkMs: performance.now() - t0 };
      tfjs.push(entry);
      log(` ${(entry.checkMs / 1000).toFixed(1)}s, max rel. error ${entry.maxError.toExponential(1)};`);
      if (entry.maxError <= tolerance) contenders.push({ id: label, run, entry, callMs: entry.checkMs });
      else entry.error = `gradients disagree with ours: max rel. error ${entry.maxError} > ${tolerance}; not timed`;
    } catch (err) {
      log(` failed (${oneLine(err)});`);
      tfjs.push({ graph: label, error: oneLine(err) });
    }
  }
  // a combination whose first call took over --prune times the fastest first call is not timed
  const fastestFirst = Math.min(...contenders.filter((c) => c.entry).map((c) => c.entry.checkMs));
  for (const c of contenders.filter((c) => c.entry && c.entry.checkMs > Number(values.prune) * fastestFirst)) {
    c.entry.error = `not timed: its first (untimed) call took ${c.entry.checkMs.toFixed(0)} ms, over ${values.prune}x the fastest combination's ${fastestFirst.toFixed(0)} ms`;
    contenders.splice(contenders.indexOf(c), 1);
  }

  log(' timing');
  const samples = new Map(contenders.map((c) => [c.id, []]));
  const t0 = performance.now();
  let rounds = 0;
  for (let round = 0; round < Number(values.rounds) || performance.now() - t0 < Number(values.time); round++, rounds++) {
    for (let i = 0; i < contenders.length; i++) {
      const c = contenders[(round + i) % contenders.length];
      // a block of calls per round, as many as fit in --block ms (at least one)
      const done = samples.get(c.id);
      const calls = Math.max(1, Math.floor(Number(values.block) / (done.length ? median(done) : c.callMs)));
      for (let n = 0; n < calls; n++) {
        const t = performance.now();
        c.run();
        samples.get(c.id).push(performance.now() - t);
      }
    }
    log('.');
  }
  log('\n');
  tf.dispose([scale, mask].filter(Boolean));

  const oursMs = median(samples.get('ours'));
  const oursBothMs = median(samples.get('ours-both'));
  for (const t of tfjs) if (samples.has(t.graph)) t.ms = median(samples.get(t.graph));
  const timed = tfjs.filter((t) => t.ms !== undefined).sort((a, b) => a.ms - b.ms);
  const best = timed[0];
  rows.push({
    shape: name,
    rounds,
    samples: Object.fromEntries([...samples].map(([id, xs]) => [id, xs.length])),
    oursMs,
    oursGflops: backwardFlops / oursMs / 1e6,
    oursBothMs,
    tfjs: best ? { graph: best.graph, ms: best.ms, maxError: best.maxError, errors: best.errors } : undefined,
    tfjsOverOurs: best ? best.ms / oursMs : undefined,
    tfjsOverOursBoth: best ? best.ms / oursBothMs : undefined,
    otherGraphs: tfjs.filter((t) => t !== best),
  });
}
const totalSeconds = (performance.now() - started) / 1000;
engine.dispose();

// ---------------------------------------------------------------------------------------------
// Report.

const cpu = cpus();
const header = {
  node: process.version,
  cpu: `${cpu[0]?.model ?? 'unknown CPU'} x${cpu.length}`,
  ours: backend,
  tfjs: { core: tf.version_core, threads: tfThreads },
  mask: values.mask,
  outputs: values.outputs,
  totalSeconds,
};
if (values.json) {
  console.log(JSON.stringify({ ...header, rows, notes }, null, 2));
  process.exit(0);
}
const fmt = (x, digits = 2) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(digits));
const err = (x) => (x === undefined ? '-' : Number.isNaN(x) ? 'NaN' : x.toExponential(1));
console.log(`\nnode ${header.node}, ${header.cpu}; ours: ${backend}, 1 thread; tfjs-core + tfjs-backend-wasm ${tf.version_core}, ${tfThreads} thread`);
console.log(`interleaved rounds (>= ${values.rounds}, >= ${values.time} ms per shape; in each round every contender makes as many calls as fit in ${values.block} ms, at least one), median of each contender's calls; run took ${totalSeconds.toFixed(0)} s\n`);
console.log('| shape | ours: backward ms | ours: backward GFLOP/s | ours: forward + backward ms | tfjs: tf.grads ms | tfjs graph | tfjs ÷ ours backward | tfjs ÷ ours forward + backward | max rel. error, tfjs vs ours | rounds | calls timed: ours / ours f+b / tfjs |');
console.log('|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|');
for (const r of rows) {
  console.log(
    `| ${r.shape} | ${fmt(r.oursMs)} | ${fmt(r.oursGflops, 1)} | ${fmt(r.oursBothMs)} | ${r.tfjs ? fmt(r.tfjs.ms) : 'failed'} | ${r.tfjs?.graph ?? '-'} | ${r.tfjs ? fmt(r.tfjsOverOurs) + 'x' : '-'} | ${r.tfjs ? fmt(r.tfjsOverOursBoth) + 'x' : '-'} | ${err(r.tfjs?.maxError)} | ${r.rounds} | ${r.samples.ours} / ${r.samples['ours-both']} / ${r.tfjs ? r.samples[r.tfjs.graph] : '-'} |`,
  );
}
const footnotes = [
  `ours: backward = engine.attentionBackward with the forward's output and logSumExp given (the forward not timed); forward + backward = engine.attention(returnLogSumExp) then engine.attentionBackward, in one timed call; outputs ${reuse ? 'written into the same caller arrays every call (options.grads, options.out), as a training loop does' : 'in new arrays every call'} (--outputs). tfjs: tf.grads runs its forward in every call, so "tfjs ÷ ours forward + backward" is the like-for-like ratio, "tfjs ÷ ours backward" the one the goal (>= 3x) names.`,
  'GFLOP/s: 2.5 · 4·B·H·Sq·Skv·D / time, half for causal (gpt-1024).',
  `causal (gpt-1024): tfjs adds a [Sq, Skv] mask of ${values.mask} above the diagonal and computes every score; ours skips the masked blocks.`,
  'max rel. error: max |tfjs - ours| ÷ max |ours| for dq, dk and dv, the worst of the three.',
  'tfjs graph: the fastest combination timed. batched-4d = tf.matMul on the 4-D tensors; per-head-2d = one tf.grads per head on rank-2 tensors, kᵀ by tf.transpose. tfjs grads = tfjs-core\'s matMul gradient (matMuls with a transpose flag, which tfjs-backend-wasm runs in its scalar loop); flag-free grads = the same products with tf.transpose\'d operands (rank-2 ones run on XNNPACK).',
];
for (const r of rows) {
  for (const o of r.otherGraphs) {
    if (o.ms !== undefined) footnotes.push(`${r.shape}: tfjs ${o.graph} took ${fmt(o.ms)} ms (max rel. error vs ours ${err(o.maxError)}).`);
    else footnotes.push(`${r.shape}: tfjs ${o.graph}: ${o.error}${o.maxError !== undefined ? ` (max rel. error vs ours ${err(o.maxError)})` : ''}.`);
  }
}
console.log('');
for (const n of [...footnotes, ...notes]) console.log(`- ${n}`);
