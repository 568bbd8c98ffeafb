// The main job: attention on the default workload, each backend side by side in one run.
//   npm run bench                     the default shapes, all backends this runtime has (about 2 minutes,
//                                     about 1.7 GB of RSS at its peak; add --shapes decode-b8,long-4096
//                                     for the big ones, which need several GB)
//   node bench/attention.bench.js --shapes bert-128,decode --threads 1,2 --backends wasm-simd,js --json
// For each shape, backend and thread count: median ms per call (inputs copied in and the result copied out),
// GFLOP/s = 4·B·H·Sq·Skv·D / time (half for causal), the ratio to the js backend, and the max
// error against the float64 reference. Each wasm build's FLOP ceiling is measured first, in the same
// run (assembly/ceiling-probe.ts: the build's multiply-add in a register-only loop, the best of two
// forms), and every one-thread figure is also given as a fraction of it; then matmul 1024³ the same way.
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { Bench } from 'tinybench';
import { createEngineSync } from '../dist/index.js';
import { referenceAttention } from '../dist/reference.js';
import { buildSupported } from '../dist/backends/wasm-module.js';
import { collect, relaunchWithRelaxedSimd } from './relaxed-flag.js';

relaunchWithRelaxedSimd();

export const SHAPES = {
  'bert-128': { batch: 1, heads: 12, seqQ: 128, seqKV: 128, headDim: 64, causal: false },
  'bert-512': { batch: 1, heads: 12, seqQ: 512, seqKV: 512, headDim: 64, causal: false },
  'gpt-1024': { batch: 1, heads: 12, seqQ: 1024, seqKV: 1024, headDim: 64, causal: true },
  decode: { batch: 2, heads: 32, seqQ: 1, seqKV: 2048, headDim: 128, causal: false },
  'decode-b8': { batch: 8, heads: 32, seqQ: 1, seqKV: 2048, headDim: 128, causal: false },
  'long-4096': { batch: 1, heads: 8, seqQ: 4096, seqKV: 4096, headDim: 64, causal: true },
};

const { values } = parseArgs({
  options: {
    shapes: { type: 'string', default: 'bert-128,bert-512,gpt-1024,decode' },
    backends: { type: 'string' },
    json: { type: 'boolean', default: false },
    time: { type: 'string', default: '1500' },
    'skip-extras': { type: 'boolean', default: false },
    threads: { type: 'string', default: `1,${Math.min(4, availableParallelism())}` },
  },
});

const threadCounts = [...new Set(values.threads.split(',').map(Number))];
const backends = values.backends?.split(',') ?? ['wasm-relaxed-simd', 'wasm-simd', 'js'].filter((b) => b === 'js' || buildSupported(b));
const random = (() => {
  let s = 12345;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) / 4294967296) * 2 - 1;
})();
const tensor = (dims) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, random), dims });

// The FLOP ceiling of each wasm build, one thread (engine.runtime is internal: the bench reaches in).
const ceilings = {};
for (const backend of backends.filter((b) => b !== 'js')) {
  const engine = createEngineSync({ backend, threads: 1 });
  ceilings[backend] = engine.runtime.flopCeiling();
  engine.dispose();
}

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
    for (const threads of backend === 'js' ? [1] : threadCounts) {
      if (!values.json) process.stderr.write(` ${backend}/${threads}...`);
      const engine = createEngineSync({ backend, threads });
      const y = engine.attention(q, k, v, options).data;
      let maxError = 0;
      for (let i = 0; i < y.length; i++) maxError = Math.max(maxError, Math.abs(y[i] - reference[i]));
      const bench = new Bench({ time: Number(values.time), iterations: 3, warmupIterations: 1, warmupTime: 0 });
      bench.add(`${name} ${backend}`, () => engine.attention(q, k, v, options));
      await bench.run();
      const ms = bench.tasks[0].result.latency.p50;
      rows.push({ shape: name, backend, threads, ms, gflops: flops / ms / 1e6, maxError });
      engine.dispose();
      collect();
    }
  }
  if (!values.json) process.stderr.write('\n');
}
for (const row of rows) {
  const js = rows.find((r) => r.shape === row.shape && r.backend === 'js');
  row.vsJs = js ? js.ms / row.ms : undefined;
}

// matmul 1024 x 1024 x 1024 on each backend and thread count
if (!values['skip-extras']) {
  const a = tensor([1024, 1024]), b = tensor([1024, 1024]);
  for (const backend of backends.filter((x) => x !== 'js')) {
    for (const threads of threadCounts) {
      if (!values.json) process.stderr.write(`matmul 1024: ${backend}/${threads}...\n`);
      const engine = createEngineSync({ backend, threads });
      const bench = new Bench({ time: Number(values.time), iterations: 3, warmupIterations: 1, warmupTime: 0 });
      bench.add('matmul', () => engine.matmul(a, b));
      await bench.run();
      const ms = bench.tasks[0].result.latency.p50;
      rows.push({ shape: 'matmul-1024', backend, threads, ms, gflops: (2 * 1024 ** 3) / ms / 1e6, maxError: NaN });
      engine.dispose();
      collect();
    }
  }
}
// x·W with W packed once (engine.packWeights), 4096 x 4096 (64 MiB), M = 1, 4 and 16 rows: the bytes of W
// read per second against memory.copy of the same bytes inside WASM memory, in the same engine.
const skinny = [];
if (!values['skip-extras']) {
  const W = tensor([4096, 4096]);
  const bytes = W.data.byteLength;
  for (const backend of backends.filter((x) => x !== 'js')) {
    for (const threads of threadCounts) {
      if (!values.json) process.stderr.write(`packed x·W 4096²: ${backend}/${threads}...\n`);
      const engine = createEngineSync({ backend, threads });
      const w = engine.packWeights(W);
      const [src, dst] = [engine.tensor([W.data.length]), engine.tensor([W.data.length])];
      const bench = new Bench({ time: Number(values.time), iterations: 5, warmupIterations: 1, warmupTime: 0 });
      bench.add('memory.copy', () => engine.runtime.copyBytes(dst.data.byteOffset, src.data.byteOffset, bytes));
      const ms = [1, 4, 16];
      const xs = ms.map((m) => tensor([m, 4096]));
      const outs = ms.map((m) => engine.tensor([m, 4096]));
      ms.forEach((m, i) => bench.add(`M${m}`, () => engine.matmul(xs[i], w, { out: outs[i] })));
      await bench.run();
      const [copy, ...times] = bench.tasks.map((t) => t.result.latency.p50);
      for (let i = 0; i < ms.length; i++) {
        skinny.push({ backend, threads, m: ms[i], ms: times[i], weightGBs: bytes / times[i] / 1e6, copyGBs: bytes / copy / 1e6, gflops: (2 * ms[i] * 4096 * 4096) / times[i] / 1e6 });
      }
      engine.dispose();
      collect();
    }
  }
}
for (const row of rows) row.ofCeiling = row.threads === 1 && ceilings[row.backend] ? row.gflops / ceilings[row.backend] : undefined;

// Decoding with K and V resident in WASM memory (engine.tensor), against memory.copy of the same
// bytes inside WASM; and the per-call overhead of a tiny call.
const extras = [];
if (!values['skip-extras']) {
  for (const backend of backends.filter((b) => b !== 'js')) {
    if (!values.json) process.stderr.write(`resident decode and small calls: ${backend}...\n`);
    const engine = createEngineSync({ backend, threads: 1 });
    const s = SHAPES.decode;
    const [rq, rk, rv, rout] = [[s.batch, s.heads, 1, s.headDim], [s.batch, s.heads, s.seqKV, s.headDim], [s.batch, s.heads, s.seqKV, s.headDim], [s.batch, s.heads, 1, s.headDim]].map((dims) => engine.tensor(dims));
    for (const t of [rq, rk, rv]) t.data.set(tensor(t.dims).data);
    const bytes = rk.data.byteLength + rv.data.byteLength;
    const scratch = engine.tensor([bytes / 4]);
    const bench = new Bench({ time: Number(values.time), iterations: 5, warmupIterations: 1, warmupTime: 0 });
    bench.add('decode resident', () => engine.attention(rq, rk, rv, { out: rout.data }));
    // engine.runtime is internal (the WasmBackend); the bench reaches in for the memory.copy yardstick only
    bench.add('memory.copy', () => engine.runtime.copyBytes(scratch.data.byteOffset, rk.data.byteOffset, bytes));
    const q = tensor([1, 1, 1, 64]), k = tensor([1, 1, 16, 64]), v = tensor([1, 1, 16, 64]);
    const out = new Float32Array(64);
    // 1000 calls per sample: a single call is too short for the timer
    bench.add('small call x1000', () => {
      for (let i = 0; i < 1000; i++) engine.attention(q, k, v, { out });
    });
    await bench.run();
    const [decode, copy, small] = bench.tasks.map((t) => t.result.latency.p50);
    extras.push({ backend, decodeGBs: bytes / decode / 1e6, copyGBs: bytes / copy / 1e6, smallMicros: small });
    engine.dispose();
    collect();
  }
}

if (values.json) {
  console.log(JSON.stringify({ node: process.version, ceilings, rows, skinny, extras }, null, 2));
} else {
  console.log(`\nnode ${process.version}, median of >= 3 calls; vs 1 thread: the same backend on one thread`);
  console.log(`FLOP ceilings, one thread (register-only multiply-add loop): ${Object.entries(ceilings).map(([b, g]) => `${b} ${g.toFixed(1)} GFLOP/s`).join(', ')}\n`);
  console.log('| shape | backend | threads | median ms | GFLOP/s | of ceiling | vs js | vs 1 thread | max error |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const one = rows.find((o) => o.shape === r.shape && o.backend === r.backend && o.threads === 1);
    console.log(`| ${r.shape} | ${r.backend} | ${r.threads} | ${r.ms.toFixed(2)} | ${r.gflops.toFixed(2)} | ${r.ofCeiling ? (r.ofCeiling * 100).toFixed(0) + '%' : '-'} | ${r.vsJs ? r.vsJs.toFixed(1) + 'x' : '-'} | ${one ? (one.ms / r.ms).toFixed(2) + 'x' : '-'} | ${Number.isNaN(r.maxError) ? '-' : r.maxError.toExponential(1)} |`);
  }
}
if (!values.json && skinny.length) {
  console.log('\nx·W with W packed (4096 x 4096, 64 MiB): W read per second against memory.copy of its bytes\n');
  console.log('| backend | threads | rows M | median ms | W read: GB/s | memory.copy: GB/s | vs memory.copy | GFLOP/s |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of skinny) {
    console.log(`| ${r.backend} | ${r.threads} | ${r.m} | ${r.ms.toFixed(2)} | ${r.weightGBs.toFixed(1)} | ${r.copyGBs.toFixed(1)} | ${(r.weightGBs / r.copyGBs * 100).toFixed(0)}% | ${r.gflops.toFixed(1)} |`);
  }
}
if (!values.json && extras.length) {
  console.log('\n| backend | decode, K/V resident: GB/s of K and V read | memory.copy of those bytes: GB/s | ratio | B1 H1 Sq1 Skv16 D64 call: median µs |');
  console.log('|---|---:|---:|---:|---:|');
  for (const e of extras) {
    console.log(`| ${e.backend} | ${e.decodeGBs.toFixed(2)} | ${e.copyGBs.toFixed(2)} | ${(e.decodeGBs / e.copyGBs * 100).toFixed(0)}% | ${e.smallMicros.toFixed(2)} |`);
  }
}
