// The serving workload: one decode step of many sequences at once through the paged KV pool.
//   node bench/pool.bench.js                   64 sequences, contexts spread over 256..4096, Hq 32, Hkv 8, D 128
//   node bench/pool.bench.js --sequences 16 --max 1024 --threads 1 --json
// For each thread count: median ms per step (every sequence appends one token, rotated by RoPE, and
// attends over its whole history), the K and V bytes read per second, and their ratio to
// memory.copy's bandwidth measured in the same run (a 256 MiB copy inside WASM memory). On one
// thread, the same step as 64 separate kvCache calls (append, then attention; one cache per
// sequence, batch 1) over the same data. The outputs of two sequences are checked against the
// float64 reference over their exported history. About 1.2 GB of K and V (2.4 GB with the caches).
// Then, when bench/peers is installed (npm --prefix bench/peers ci), the same step on onnxruntime-node's
// GroupQueryAttention (native CPU, seqlens_k for the ragged batch, do_rotary; its fastest variant from
// Node, see bench/peers/gqa-step.js; about 5 GB of RSS) at each thread count, in the same process.
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { Bench } from 'tinybench';
import { createEngineSync } from '../dist/index.js';
import { referenceAttention, referenceRotary } from '../dist/reference.js';
import { buildSupported } from '../dist/backends/wasm-module.js';
import { collect, relaunchWithRelaxedSimd } from './relaxed-flag.js';

relaunchWithRelaxedSimd();

const { values } = parseArgs({
  options: {
    sequences: { type: 'string', default: '64' },
    min: { type: 'string', default: '256' },
    max: { type: 'string', default: '4096' },
    'q-heads': { type: 'string', default: '32' },
    'kv-heads': { type: 'string', default: '8' },
    'head-dim': { type: 'string', default: '128' },
    'page-size': { type: 'string', default: '16' },
    threads: { type: 'string', default: `1,${Math.min(2, availableParallelism())}` },
    backend: { type: 'string' },
    time: { type: 'string', default: '3000' },
    json: { type: 'boolean', default: false },
    'skip-caches': { type: 'boolean', default: false },
    'skip-peer': { type: 'boolean', default: false },
  },
});

const count = Number(values.sequences);
const [qHeads, kvHeads, headDim, pageSize] = [values['q-heads'], values['kv-heads'], values['head-dim'], values['page-size']].map(Number);
const backend = values.backend ?? (buildSupported('wasm-relaxed-simd') ? 'wasm-relaxed-simd' : 'wasm-simd');
const threadCounts = [...new Set(values.threads.split(',').map(Number))];
const rope = {};
// contexts spread evenly over min..max: sequence s holds lengths[s] positions before the step
const lengths = Array.from({ length: count }, (_, s) => Math.round(Number(values.min) + ((Number(values.max) - Number(values.min)) * s) / Math.max(1, count - 1)));
const totalKeys = lengths.reduce((a, b) => a + b, 0);
const log = (line) => values.json || process.stderr.write(`${line}\n`);

/** Seeded uniform floats in [-1, 1) (xorshift32: filling a GB with Math.random is slow). */
function filler(seed) {
  let x = seed >>> 0 || 1;
  return (n) => {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = (x >>> 0) / 2 ** 31 - 1;
    }
    return out;
  };
}

/** A step's new token for every sequence: q [Hq, 1, D], k [Hkv, 1, D], v [Hkv, 1, D]. */
function tokens(random) {
  return lengths.map(() => ({
    q: { data: random(qHeads * headDim), dims: [qHeads, 1, headDim] },
    k: { data: random(kvHeads * headDim), dims: [kvHeads, 1, headDim] },
    v: { data: random(kvHeads * headDim), dims: [kvHeads, 1, headDim] },
  }));
}

/** The history's bytes each step reads, and the headroom the timed steps need. */
const stepBytes = (extra) => (totalKeys + count * extra) * kvHeads * headDim * 2 * 4;
const headroom = 400;

/** A pool filled with each sequence's history (seeded), plus the sequences. */
function filledPool(engine) {
  const pool = engine.kvPool({ kvHeads, headDim, pageSize, maxTokens: totalKeys + count * (headroom + pageSize) });
  const random = filler(1);
  const sequences = lengths.map((length) => {
    const sequence = pool.sequence();
    sequence.append({ data: random(kvHeads * length * headDim), dims: [kvHeads, length, headDim] }, { data: random(kvHeads * length * headDim), dims: [kvHeads, length, headDim] });
    return sequence;
  });
  return { pool, sequences };
}

/** Max |error| of two sequences' step outputs against the reference over their exported history. */
function check(pool, sequences, step, outputs) {
  let worst = 0;
  for (const s of [0, count - 1]) {
    const bytes = sequences[s].export();
    const length = sequences[s].length;
    const body = new Float32Array(bytes.buffer.slice(32));
    const k = body.subarray(0, kvHeads * length * headDim);
    const v = body.subarray(kvHeads * length * headDim);
    const positions = { data: Int32Array.of(length - 1), dims: [1] };
    const q = referenceRotary({ data: step[s].q.data, dims: [1, qHeads, 1, headDim] }, { positions, ...rope });
    const expected = referenceAttention(q, { data: k, dims: [1, kvHeads, length, headDim] }, { data: v, dims: [1, kvHeads, length, headDim] }, { causal: true, offset: length - 1 });
    for (let i = 0; i < expected.data.length; i++) worst = Math.max(worst, Math.abs(outputs[s].data[i] - expected.data[i]));
  }
  return worst;
}

const rows = [];
let copyGBs;
for (const threads of threadCounts) {
  log(`${backend}, ${threads} thread(s): filling ${count} sequences (${totalKeys} positions, ${(stepBytes(0) / 2 ** 30).toFixed(2)} GiB of K and V)...`);
  const engine = createEngineSync({ backend, threads });
  const { pool, sequences } = filledPool(engine);
  const random = filler(2);
  const step = tokens(random);
  const items = () => sequences.map((sequence, s) => ({ sequence, ...step[s] }));
  // correctness first, on one step
  const maxError = check(pool, sequences, step, threads === 1 ? pool.step(items(), { rope }) : await pool.stepAsync(items(), { rope }));
  const bench = new Bench({ time: Number(values.time), iterations: 5, warmupIterations: 1, warmupTime: 0 });
  let steps = 1;
  if (threads === 1) bench.add('pool.step', () => void (steps++, pool.step(items(), { rope })));
  else bench.add('pool.stepAsync', async () => void (steps++, await pool.stepAsync(items(), { rope })));
  let caches;
  if (threads === 1 && !values['skip-caches']) {
    // the same histories in 64 separate caches (the keys as the pool holds them: already rotated)
    caches = sequences.map((sequence) => {
      const length = sequence.length;
      const body = new Float32Array(sequence.export().buffer.slice(32));
      const cache = engine.kvCache({ batch: 1, kvHeads, headDim, maxSeq: length + headroom });
      cache.append({ data: body.subarray(0, kvHeads * length * headDim), dims: [1, kvHeads, length, headDim] }, { data: body.subarray(kvHeads * length * headDim), dims: [1, kvHeads, length, headDim] });
      return cache;
    });
    bench.add(`${count} x kvCache`, () => {
      caches.forEach((cache, s) => {
        cache.append({ data: step[s].k.data, dims: [1, kvHeads, 1, headDim] }, { data: step[s].v.data, dims: [1, kvHeads, 1, headDim] });
        cache.attention({ data: step[s].q.data, dims: [1, qHeads, 1, headDim] });
      });
    });
  }
  if (copyGBs === undefined) {
    const bytes = 256 * 2 ** 20;
    const [src, dst] = [engine.tensor([bytes / 4]), engine.tensor([bytes / 4])];
    // engine.runtime is internal (the WasmBackend); the bench reaches in for the memory.copy yardstick only
    bench.add('memory.copy 256 MiB', () => engine.runtime.copyBytes(dst.data.byteOffset, src.data.byteOffset, bytes));
    await bench.run();
    const copy = bench.tasks.find((t) => t.name.startsWith('memory.copy')).result.latency.p50;
    copyGBs = bytes / copy / 1e6;
    src.release();
    dst.release();
  } else {
    await bench.run();
  }
  const poolTask = bench.tasks[0];
  const ms = poolTask.result.latency.p50;
  // sequences grew by one position per step: the median step read about the history at mid-run
  const bytesRead = stepBytes(steps / 2);
  const row = { backend, threads, ms, kvGBs: bytesRead / ms / 1e6, maxError, steps: poolTask.result.latency.samples?.length };
  if (caches) row.separateMs = bench.tasks[1].result.latency.p50;
  rows.push(row);
  for (const cache of caches ?? []) cache.dispose();
  pool.dispose();
  engine.dispose();
  collect();
}

// onnxruntime-node's GroupQueryAttention on the same step (each sequence's total length: its history plus the new token)
const peer = [];
let peerNote;
if (!values['skip-peer']) {
  let createOrtGqaStep;
  try {
    ({ createOrtGqaStep } = await import('./peers/gqa-step.js'));
    await import(new URL('./peers/node_modules/onnxruntime-node/package.json', import.meta.url), { with: { type: 'json' } });
  } catch {
    peerNote = 'onnxruntime-node not installed (npm --prefix bench/peers ci): no peer column';
  }
  for (const threads of createOrtGqaStep ? threadCounts : []) {
    log(`onnxruntime-node GroupQueryAttention, ${threads} thread(s)...`);
    const ort = await createOrtGqaStep({ lengths: lengths.map((l) => l + 1), qHeads, kvHeads, headDim, threads, rope: { base: 10000 } });
    const random = filler(3);
    const [q, k, v] = [qHeads, kvHeads, kvHeads].map((heads) => random(count * heads * headDim));
    const bench = new Bench({ time: Number(values.time), iterations: 5, warmupIterations: 1, warmupTime: 0 });
    bench.add('ort', async () => void (await ort.run(q, k, v)));
    await bench.run();
    peer.push({ threads, ms: bench.tasks[0].result.latency.p50, variant: ort.variant });
    await ort.close();
    collect();
  }
}

const one = rows.find((r) => r.threads === 1);
if (values.json) {
  console.log(JSON.stringify({ node: process.version, sequences: count, lengths: [values.min, values.max], qHeads, kvHeads, headDim, pageSize, copyGBs, rows, peer, peerNote }, null, 2));
} else {
  console.log(`\nnode ${process.version}, ${backend}; decode step of ${count} sequences, contexts ${values.min}..${values.max} (${totalKeys} positions), Hq ${qHeads}, Hkv ${kvHeads}, D ${headDim}, pages of ${pageSize}, RoPE; median of the timed steps`);
  console.log(`memory.copy: ${copyGBs.toFixed(2)} GB/s\n`);
  console.log('| threads | pool step: median ms | K and V read: GB/s | vs memory.copy | vs 1 thread | separate kvCache calls: ms | batched speed-up | onnxruntime-node GQA: ms | vs onnxruntime-node | max error |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const separate = r.separateMs ? `${r.separateMs.toFixed(1)} | ${(r.separateMs / r.ms).toFixed(2)}x` : '- | -';
    const ort = peer.find((p) => p.threads === r.threads);
    const vsOrt = ort ? `${ort.ms.toFixed(1)} | ${(ort.ms / r.ms).toFixed(2)}x` : '- | -';
    console.log(`| ${r.threads} | ${r.ms.toFixed(1)} | ${r.kvGBs.toFixed(2)} | ${((r.kvGBs / copyGBs) * 100).toFixed(0)}% | ${one ? (one.ms / r.ms).toFixed(2) + 'x' : '-'} | ${separate} | ${vsOrt} | ${r.maxError.toExponential(1)} |`);
  }
  if (peer.length) console.log(`\nonnxruntime-node: ${peer[0].variant} (bench/peers/gqa-step.js); vs onnxruntime-node above 1 means ours is faster`);
  if (peerNote) console.log(`\n${peerNote}`);
}
