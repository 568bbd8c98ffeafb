// The main job: attention on the default workload, each backend side by side in one run.
//   npm run bench                     all shapes, all backends this runtime has
//   node bench/attention.bench.js --shapes bert-128,decode --json
// For each shape and backend: median ms per call (inputs copied in and the result copied out),
// GFLOP/s = 4·B·H·Sq·Skv·D / time (half for causal), the ratio to the js backend, and the max
// error against the float64 reference.
import { parseArgs } from 'node:util';
import { Bench } from 'tinybench';
import { createEngineSync } from '../dist/index.js';
import { referenceAttention } from '../dist/reference.js';
import { buildSupported } from '../dist/wasm-module.js';
import { relaunchWithRelaxedSimd } from './relaxed-flag.js';

relaunchWithRelaxedSimd();

export const SHAPES = {
  'bert-128': { batch: 1, heads: 12, seqQ: 128, seqKV: 128, headDim: 64, causal: false },
  'bert-512': { batch: 1, heads: 12, seqQ: 512, seqKV: 512, headDim: 64, causal: false },
  'gpt-1024': { batch: 1, heads: 12, seqQ: 1024, seqKV: 1024, headDim: 64, causal: true },
  decode: { batch: 8, heads: 32, seqQ: 1, seqKV: 2048, headDim: 128, causal: false },
};

const { values } = parseArgs({
  options: {
    shapes: { type: 'string', default: Object.keys(SHAPES).join(',') },
    backends: { type: 'string' },
    json: { type: 'boolean', default: false },
    time: { type: 'string', default: '1500' },
  },
});

const backends = values.backends?.split(',') ?? ['wasm-relaxed-simd', 'wasm-simd', 'js'].filter((b) => b === 'js' || buildSupported(b));
const random = (() => {
  let s = 12345;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) / 4294967296) * 2 - 1;
})();
const tensor = (dims) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, random), dims });

const rows = [];
for (const name of values.shapes.split(',')) {
  const s = SHAPES[name];
  if (!s) throw new Error(`unknown shape ${name}; known: ${Object.keys(SHAPES).join(', ')}`);
  const q = tensor([s.batch, s.heads, s.seqQ, s.headDim]);
  const k = tensor([s.batch, s.heads, s.seqKV, s.headDim]);
  const v = tensor([s.batch, s.heads, s.seqKV, s.headDim]);
  const options = { causal: s.causal };
  const flops = (4 * s.batch * s.heads * s.seqQ * s.seqKV * s.headDim) / (s.causal ? 2 : 1);
  if (!values.json) process.stderr.write(`${name}: reference...`);
  const reference = referenceAttention(q, k, v, options).data;
  for (const backend of backends) {
    if (!values.json) process.stderr.write(` ${backend}...`);
    const engine = createEngineSync({ backend });
    const y = engine.attention(q, k, v, options).data;
    let maxError = 0;
    for (let i = 0; i < y.length; i++) maxError = Math.max(maxError, Math.abs(y[i] - reference[i]));
    const bench = new Bench({ time: Number(values.time), iterations: 3, warmupIterations: 1, warmupTime: 0 });
    bench.add(`${name} ${backend}`, () => engine.attention(q, k, v, options));
    await bench.run();
    const ms = bench.tasks[0].result.latency.p50;
    rows.push({ shape: name, backend, ms, gflops: flops / ms / 1e6, maxError });
    engine.dispose();
  }
  if (!values.json) process.stderr.write('\n');
}
for (const row of rows) {
  const js = rows.find((r) => r.shape === row.shape && r.backend === 'js');
  row.vsJs = js ? js.ms / row.ms : undefined;
}

if (values.json) {
  console.log(JSON.stringify({ node: process.version, rows }, null, 2));
} else {
  console.log(`\nnode ${process.version}, one thread, median of >= 3 calls\n`);
  console.log('| shape | backend | median ms | GFLOP/s | vs js | max error |');
  console.log('|---|---|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.shape} | ${r.backend} | ${r.ms.toFixed(2)} | ${r.gflops.toFixed(2)} | ${r.vsJs ? r.vsJs.toFixed(1) + 'x' : '-'} | ${r.maxError.toExponential(1)} |`);
  }
}
