// Peer benchmark: wasm-attention against onnxruntime-web (wasm), onnxruntime-node (native CPU, a
// reference column) and tfjs-backend-wasm, on the same inputs, in one run, one thread by default.
//   npm --prefix bench/peers ci && node bench/peers/peers.bench.js      (after `npm run build` in the root)
//   node bench/peers/peers.bench.js --shapes bert-128,matmul --threads 2 --json
// Each call takes Float32Arrays in and gives a Float32Array out, so every library pays for its copies
// (tensor creation, session.run's copies in and out, dataSync). Every library's output is compared with
// ours (max abs difference), so a wrong graph cannot produce a fake number. Progress goes to stderr,
// the table (or JSON) to stdout.
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Bench } from 'tinybench';
import { relaunchWithRelaxedSimd } from '../relaxed-flag.js';
import { causalMask, fusedAttentionModel, matmulModel, unfusedAttentionModel } from './models.js';

relaunchWithRelaxedSimd();

const { createEngineSync } = await import('../../dist/index.js');
const { buildSupported } = await import('../../dist/backends/wasm-module.js');

/** Attention shapes: q [B, H, Sq, D], k and v [B, H, Skv, D]. */
const SHAPES = {
  'bert-128': { batch: 1, heads: 12, seqQ: 128, seqKV: 128, headDim: 64, causal: false },
  'bert-512': { batch: 1, heads: 12, seqQ: 512, seqKV: 512, headDim: 64, causal: false },
  'S384-D80': { batch: 2, heads: 16, seqQ: 384, seqKV: 384, headDim: 80, causal: false },
  'gpt-1024': { batch: 1, heads: 12, seqQ: 1024, seqKV: 1024, headDim: 64, causal: true },
  decode: { batch: 8, heads: 32, seqQ: 1, seqKV: 2048, headDim: 128, causal: false },
  'long-4096': { batch: 1, heads: 8, seqQ: 4096, seqKV: 4096, headDim: 64, causal: true },
  matmul: { matmul: true, m: 1024, n: 1024, k: 1024 },
};
const LIBS = ['ours', 'ort-web', 'ort-node', 'tfjs-wasm'];

const { values } = parseArgs({
  options: {
    shapes: { type: 'string', default: Object.keys(SHAPES).join(',') },
    libs: { type: 'string', default: LIBS.join(',') },
    threads: { type: 'string', default: '1' },
    'ort-graphs': { type: 'string', default: 'both' },
    time: { type: 'string', default: '800' },
    json: { type: 'boolean', default: false },
  },
});
const threads = Number(values.threads);
if (!Number.isInteger(threads) || threads < 1) throw new Error(`--threads must be an integer >= 1, got ${values.threads}`);
const libs = values.libs.split(',');
for (const l of libs) if (!LIBS.includes(l)) throw new Error(`unknown library ${l}; known: ${LIBS.join(', ')}`);
const ortGraphs = { both: ['unfused', 'attention-23'], unfused: ['unfused'], fused: ['attention-23'] }[values['ort-graphs']];
if (!ortGraphs) throw new Error('--ort-graphs must be both, unfused or fused');
const shapeNames = values.shapes.split(',');
for (const n of shapeNames) if (!SHAPES[n]) throw new Error(`unknown shape ${n}; known: ${Object.keys(SHAPES).join(', ')}`);

const notes = [];
const log = (text) => process.stderr.write(text);
const MB = 1024 * 1024;
// A collector to call between libraries, so that RSS growth is not muddied by the previous one's garbage.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

// ---------------------------------------------------------------------------------------------
// Workloads: inputs, flop counts, and the call each library makes.

const random = (() => {
  let s = 12345;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) / 4294967296) * 2 - 1;
})();
const filled = (n) => Float32Array.from({ length: n }, random);

function makeWorkload(name) {
  const s = SHAPES[name];
  if (s.matmul) {
    return {
      name,
      shape: s,
      flops: 2 * s.m * s.n * s.k,
      inputs: { a: filled(s.m * s.k), b: filled(s.k * s.n) },
      dims: { a: [s.m, s.k], b: [s.k, s.n] },
    };
  }
  const qd = [s.batch, s.heads, s.seqQ, s.headDim];
  const kd = [s.batch, s.heads, s.seqKV, s.headDim];
  return {
    name,
    shape: s,
    flops: (4 * s.batch * s.heads * s.seqQ * s.seqKV * s.headDim) / (s.causal ? 2 : 1),
    inputs: { q: filled(qd.reduce((a, b) => a * b)), k: filled(kd.reduce((a, b) => a * b)), v: filled(kd.reduce((a, b) => a * b)) },
    dims: { q: qd, k: kd, v: kd },
  };
}

// ---------------------------------------------------------------------------------------------
// Libraries. Each `prepare(work)` returns { run: () => Float32Array | Promise<Float32Array>,
// threads, dispose } or throws; `variants` lists the graphs a library is measured with.

async function loadOurs() {
  const builds = ['wasm-relaxed-simd', 'wasm-simd'].filter((b) => buildSupported(b));
  if (!builds.includes('wasm-relaxed-simd')) notes.push('wasm-relaxed-simd: not supported by this runtime, skipped.');
  return builds.map((backend) => ({
    lib: `ours ${backend.replace('wasm-', '')}`,
    ours: backend,
    variants: ['fused'],
    prepare(work) {
      const engine = createEngineSync({ backend, threads });
      const { inputs: x, dims: d } = work;
      const run = work.shape.matmul
        ? () => engine.matmul({ data: x.a, dims: d.a }, { data: x.b, dims: d.b }).data
        : () => engine.attention({ data: x.q, dims: d.q }, { data: x.k, dims: d.k }, { data: x.v, dims: d.v }, { causal: work.shape.causal }).data;
      return { run, threads: engine.threads, dispose: () => engine.dispose() };
    },
  }));
}

function ortModel(work, graph) {
  if (work.shape.matmul) return matmulModel(work.shape);
  return graph === 'attention-23' ? fusedAttentionModel(work.shape) : unfusedAttentionModel(work.shape);
}

function ortPrepare(ort, sessionOptions, effectiveThreads) {
  return async (work, graph) => {
    const session = await ort.InferenceSession.create(ortModel(work, graph), sessionOptions);
    const names = work.shape.matmul ? ['a', 'b'] : ['q', 'k', 'v'];
    const output = session.outputNames[0];
    const run = async () => {
      const feeds = {};
      for (const n of names) feeds[n] = new ort.Tensor('float32', work.inputs[n], work.dims[n]);
      const result = await session.run(feeds);
      return result[output].data;
    };
    return { run, threads: effectiveThreads, dispose: () => session.release() };
  };
}

async function loadOrtWeb() {
  const ort = await import('onnxruntime-web');
  // 1.30 ships only SIMD builds (ort-wasm-simd-threaded.*); numThreads > 1 runs a worker_threads pool.
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all', executionMode: 'sequential' };
  return [{ lib: 'ort-web', variants: ortGraphs, prepare: ortPrepare(ort, options, threads), version: ort.env.versions?.web }];
}

async function loadOrtNode() {
  const ort = await import('onnxruntime-node');
  const options = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    logSeverityLevel: 3,
  };
  return [{ lib: 'ort-node (native)', variants: ortGraphs, prepare: ortPrepare(ort, options, threads), version: ort.env.versions?.node }];
}

async function loadTfjs() {
  const tf = await import('@tensorflow/tfjs-core');
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  // The Node build finds its .wasm files next to its own script; no setWasmPaths needed.
  wasm.setThreadsCount(threads);
  if (!(await tf.setBackend('wasm'))) throw new Error('tf.setBackend("wasm") failed');
  await tf.ready();
  const effective = wasm.getThreadsCount();
  if (threads > 1 && effective !== threads) {
    const mt = await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT');
    notes.push(`tfjs-wasm: asked for ${threads} threads, runs ${effective} (WASM_HAS_MULTITHREAD_SUPPORT is ${mt}: tfjs-backend-wasm 4.22 turns its threaded build off under Node, tfjs issue #3830).`);
  }
  return [
    {
      lib: 'tfjs-wasm',
      // unfused: 4-D matMuls over [B, H, S, D] (tfjs-backend-wasm runs batched matMul outside XNNPACK);
      // per-head-2d: each head sliced in JS and multiplied as rank-2 matMuls with no transpose flags (K
      // transposed once per head by tf.transpose), which tfjs-backend-wasm hands to XNNPACK
      variants: ['unfused', 'per-head-2d'],
      version: tf.version_core,
      prepare(work, graph) {
        const { inputs: x, dims: d, shape: s } = work;
        // Constants live outside the timed call, like the ONNX initializers.
        const scale = s.matmul ? undefined : tf.scalar(1 / Math.sqrt(s.headDim));
        const mask = s.causal ? tf.tensor2d(causalMask(s.seqQ, s.seqKV), [s.seqQ, s.seqKV]) : undefined;
        const perHead = () => {
          const [qRows, kRows] = [s.seqQ * s.headDim, s.seqKV * s.headDim];
          const outs = [];
          for (let head = 0; head < s.batch * s.heads; head++) {
            const q = tf.tensor2d(x.q.subarray(head * qRows, (head + 1) * qRows), [s.seqQ, s.headDim]);
            const kT = tf.transpose(tf.tensor2d(x.k.subarray(head * kRows, (head + 1) * kRows), [s.seqKV, s.headDim]));
            let logits = tf.mul(tf.matMul(q, kT), scale);
            if (mask) logits = tf.add(logits, mask);
            outs.push(tf.matMul(tf.softmax(logits, -1), tf.tensor2d(x.v.subarray(head * kRows, (head + 1) * kRows), [s.seqKV, s.headDim])));
          }
          return tf.concat(outs, 0);
        };
        const compute = s.matmul
          ? () => tf.matMul(tf.tensor(x.a, d.a), tf.tensor(x.b, d.b))
          : graph === 'per-head-2d'
            ? perHead
            : () => {
                let logits = tf.mul(tf.matMul(tf.tensor(x.q, d.q), tf.tensor(x.k, d.k), false, true), scale);
                if (mask) logits = tf.add(logits, mask);
                return tf.matMul(tf.softmax(logits, -1), tf.tensor(x.v, d.v));
              };
        const run = () => {
          const y = tf.tidy(compute);
          const data = y.dataSync();
          y.dispose();
          return data;
        };
        return { run, threads: effective, dispose: () => tf.dispose([scale, mask].filter(Boolean)) };
      },
    },
  ];
}

const loaders = { ours: loadOurs, 'ort-web': loadOrtWeb, 'ort-node': loadOrtNode, 'tfjs-wasm': loadTfjs };
const contenders = [];
const versions = {};
for (const l of libs) {
  try {
    const loaded = await loaders[l]();
    for (const c of loaded) if (c.version) versions[c.lib] = c.version;
    contenders.push(...loaded);
  } catch (err) {
    notes.push(`${l}: skipped, failed to load (${oneLine(err)}).`);
    log(`${l}: failed to load: ${oneLine(err)}\n`);
  }
}

function oneLine(err) {
  // onnxruntime's messages carry the build machine's source path; keep the part that says what failed.
  const text = String(err?.message ?? err).split('\n')[0].replace(/ERROR_MESSAGE: \S*onnxruntime\/\S+:\d+ /, 'ERROR_MESSAGE: ');
  return text.slice(0, 240);
}

function maxAbsDiff(a, b) {
  if (a.length !== b.length) return NaN;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates: a NaN output is reported, never hidden.
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Measurement.

/** Collects garbage and lets V8 hand freed ArrayBuffer backing stores back, which it does off-thread. */
async function settle() {
  gc();
  await new Promise((resolve) => setTimeout(resolve, 100));
  gc();
}

async function measure(contender, work, graph, expected) {
  await settle();
  const rssBefore = process.memoryUsage().rss;
  const prepared = await contender.prepare(work, graph);
  try {
    const first = await prepared.run(); // untimed: warms up and is the output checked
    const bench = new Bench({ time: Number(values.time), iterations: 3, warmup: false, throws: true });
    bench.add(`${work.name} ${contender.lib} ${graph}`, prepared.run);
    await bench.run();
    const { latency } = bench.tasks[0].result;
    const rssAfter = process.memoryUsage().rss;
    return {
      ms: latency.p50,
      samples: latency.samplesCount,
      threads: prepared.threads,
      output: first,
      maxDiff: expected ? maxAbsDiff(first, expected) : 0,
      rssGrowthMB: (rssAfter - rssBefore) / MB,
    };
  } finally {
    await prepared.dispose();
  }
}

const started = performance.now();
const rows = [];
for (const name of shapeNames) {
  const work = makeWorkload(name);
  log(`${name}:`);
  let expected; // the first of ours to finish is the output every other library is checked against
  for (const c of contenders) {
    const tried = [];
    for (const graph of c.variants) {
      if (work.shape.matmul && tried.length) break; // one MatMul graph only
      const graphLabel = work.shape.matmul ? 'MatMul' : graph;
      log(` ${c.lib}${c.variants.length > 1 && !work.shape.matmul ? ` [${graph}]` : ''}...`);
      const t0 = performance.now();
      try {
        const r = await measure(c, work, graph, expected);
        log(` ${((performance.now() - t0) / 1000).toFixed(1)}s`);
        if (c.ours && !expected) expected = r.output;
        delete r.output;
        tried.push({ shape: name, lib: c.lib, ours: c.ours, graph: graphLabel, ...r, gflops: work.flops / r.ms / 1e6 });
      } catch (err) {
        log(` failed (${oneLine(err)})`);
        tried.push({ shape: name, lib: c.lib, ours: c.ours, graph: graphLabel, error: oneLine(err) });
      }
    }
    const ok = tried.filter((t) => !t.error).sort((a, b) => a.ms - b.ms);
    if (ok.length) {
      const best = ok[0];
      best.others = ok.slice(1).map((o) => ({ graph: o.graph, ms: o.ms, maxDiff: o.maxDiff }));
      best.failedGraphs = tried.filter((t) => t.error).map((t) => ({ graph: t.graph, error: t.error }));
      rows.push(best);
    } else rows.push(tried[tried.length - 1]);
  }
  log('\n');
}
const totalSeconds = (performance.now() - started) / 1000;

for (const row of rows) {
  row.vs = {};
  for (const our of rows.filter((r) => r.ours && r.shape === row.shape && !r.error)) {
    if (!row.error) row.vs[our.ours] = row.ms / our.ms; // = our GFLOP/s ÷ theirs
  }
}

// ---------------------------------------------------------------------------------------------
// Report.

const cpu = cpus();
const header = {
  node: process.version,
  cpu: `${cpu[0]?.model ?? 'unknown CPU'} x${cpu.length}`,
  threads,
  versions,
  timePerTaskMs: Number(values.time),
  totalSeconds,
};

if (values.json) {
  console.log(JSON.stringify({ ...header, rows, notes }, null, 2));
  process.exit(0);
}

const oursBackends = [...new Set(rows.filter((r) => r.ours).map((r) => r.ours))];
const fmt = (x, digits = 2) => (x === undefined || Number.isNaN(x) ? '-' : (Number(x.toFixed(digits)) || 0).toFixed(digits));
const ratio = (x) => (x === undefined ? '-' : `${x.toFixed(2)}x`);
const diff = (x) => (x === undefined ? '-' : Number.isNaN(x) ? 'NaN' : x === 0 ? '0' : x.toExponential(1));

console.log(`\nnode ${header.node}, ${header.cpu}, threads ${threads}, median of >= 3 timed calls (>= ${header.timePerTaskMs} ms per cell); run took ${totalSeconds.toFixed(0)} s`);
console.log(`versions: ${Object.entries(versions).map(([k, v]) => `${k} ${v}`).join(', ')}\n`);
const ratioHeads = oursBackends.map((b) => `ours ${b.replace('wasm-', '')} ÷ this`);
console.log(`| shape | library | graph | threads | median ms | GFLOP/s | ${ratioHeads.join(' | ')} | max abs diff vs ours | RSS Δ MB |`);
console.log(`|---|---|---|---:|---:|---:|${ratioHeads.map(() => '---:|').join('')}---:|---:|`);
for (const r of rows) {
  if (r.error) {
    console.log(`| ${r.shape} | ${r.lib} | ${r.graph} | ${threads} | failed | - |${ratioHeads.map(() => ' - |').join('')} - | - |`);
    continue;
  }
  const ratios = oursBackends.map((b) => ratio(r.vs[b]));
  console.log(
    `| ${r.shape} | ${r.lib} | ${r.graph} | ${r.threads} | ${fmt(r.ms)} | ${fmt(r.gflops, 1)} | ${ratios.join(' | ')} | ${diff(r.maxDiff)} | ${fmt(r.rssGrowthMB, 0)} |`,
  );
}

const footnotes = [
  'GFLOP/s = 4·B·H·Sq·Skv·D / time (half of that for causal shapes, for every library), matmul 2·M·N·K; "ours X ÷ this" = our GFLOP/s ÷ this row\'s (above 1: ours is faster).',
  'graph: fused = wasm-attention\'s own kernel; unfused = MatMul(q, kᵀ) → Mul(1/√D) → [Add(causal -inf mask)] → Softmax → MatMul(·, v) (ONNX opset 17 for ort, the same ops in tfjs); attention-23 = the ONNX opset-23 Attention op (is_causal). For ort the faster of the graphs tried is shown.',
  'max abs diff: against the output of the first of ours measured on that shape (0 for that row itself).',
  'RSS Δ: resident memory after the timed calls minus before the library\'s setup; WebAssembly heaps never shrink, so a heap already grown on an earlier shape or graph is not counted again.',
];
for (const r of rows) {
  for (const o of r.others ?? []) footnotes.push(`${r.shape} ${r.lib}: ${o.graph} graph took ${fmt(o.ms)} ms (max abs diff ${diff(o.maxDiff)}).`);
  for (const f of r.failedGraphs ?? []) footnotes.push(`${r.shape} ${r.lib}: ${f.graph} graph failed: ${f.error}.`);
  if (r.error) footnotes.push(`${r.shape} ${r.lib}: failed: ${r.error}.`);
}
console.log('');
for (const n of [...footnotes, ...notes]) console.log(`- ${n}`);
