// The serving workload: one decode step of many sequences at once through the paged KV pool.
//   node bench/pool.bench.js                   64 sequences, contexts spread over 256..4096, Hq 32, Hkv 8, D 128
//   node bench/pool.bench.js --sequences 16 --max 1024 --threads 1 --dtypes float32,int8 --json
// For each thread count and page dtype (float32, float16, int8): median ms per step (every sequence
// appends one token, rotated by RoPE, and attends over its whole history), tokens per second and their
// ratio to the float32 pool's, the bytes one cached token takes, the K and V bytes read per second and
// their ratio to memory.copy's bandwidth measured in the same run (a 256 MiB copy inside WASM memory),
// and the accuracy of the first step's outputs against the float32 pool's (relative L2 error per
// output row: one query head of one sequence). On one
// thread, the same step as 64 separate kvCache calls (append, then attention; one cache per
// sequence, batch 1) over the same data. The outputs of two sequences are checked against the
// float64 reference over their exported history (dequantized). About 1.2 GB of K and V in float32
// (2.4 GB with the caches); one pool at a time.
// Then, when bench/peers is installed (npm --prefix bench/peers ci), the same step on onnxruntime-node's
// GroupQueryAttention (native CPU, seqlens_k for the ragged batch, do_rotary; its fastest variant from
// Node, see bench/peers/gqa-step.js; about 5 GB of RSS in float32) at each thread count, in the same
// process: for each page dtype, with ORT's cache of that type where its CPU kernel has one (float32,
// float16, int8 per-channel), else its float32 cache; its output checked on two sequences against the
// float64 reference over its cache as stored.
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { Bench } from 'tinybench';
import { createEngineSync, halvesToFloats } from '../dist/index.js';
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
    dtypes: { type: 'string', default: 'float32,float16,int8' },
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
const dtypes = [...new Set(values.dtypes.split(','))];
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

/** The history's bytes each step reads (at `bytesPerToken` per position), and the headroom the timed steps need. */
const stepBytes = (extra, bytesPerToken) => (totalKeys + count * extra) * bytesPerToken;
const headroom = 400;

/** A pool of `dtype` pages filled with each sequence's history (seeded: the same values for every dtype), plus the sequences. */
function filledPool(engine, dtype) {
  const pool = engine.kvPool({ kvHeads, headDim, pageSize, dtype, maxTokens: totalKeys + count * (headroom + pageSize) });
  const random = filler(1);
  const sequences = lengths.map((length) => {
    const sequence = pool.sequence();
    sequence.append({ data: random(kvHeads * length * headDim), dims: [kvHeads, length, headDim] }, { data: random(kvHeads * length * headDim), dims: [kvHeads, length, headDim] });
    return sequence;
  });
  return { pool, sequences };
}

/** A sequence's keys and values [Hkv, length, D] as floats, from its export (float32, float16 or int8 with scales; little-endian). */
function history(sequence) {
  const bytes = sequence.export();
  const header = new DataView(bytes.buffer, bytes.byteOffset);
  const [dtype, length] = [header.getUint32(8, true), header.getUint32(24, true)];
  const n = kvHeads * length * headDim;
  if (dtype === 0) {
    const body = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 32));
    return { k: body.subarray(0, n), v: body.subarray(n), length };
  }
  const k = new Float32Array(n);
  const v = new Float32Array(n);
  if (dtype === 1) {
    const floats = halvesToFloats(new Uint16Array(bytes.buffer.slice(bytes.byteOffset + 32)));
    k.set(floats.subarray(0, n));
    v.set(floats.subarray(n));
  } else {
    const q = new Int8Array(bytes.buffer, bytes.byteOffset + 32, 2 * n);
    const scales = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 32 + 2 * n));
    for (let i = 0; i < n; i++) [k[i], v[i]] = [q[i] * scales[Math.floor(i / headDim)], q[n + i] * scales[kvHeads * length + Math.floor(i / headDim)]];
  }
  return { k, v, length };
}

/** Max |error| of two sequences' step outputs against the reference over their exported history. */
function check(sequences, step, outputs) {
  let worst = 0;
  for (const s of [0, count - 1]) {
    const { k, v, length } = history(sequences[s]);
    const positions = { data: Int32Array.of(length - 1), dims: [1] };
    const q = referenceRotary({ data: step[s].q.data, dims: [1, qHeads, 1, headDim] }, { positions, ...rope });
    const expected = referenceAttention(q, { data: k, dims: [1, kvHeads, length, headDim] }, { data: v, dims: [1, kvHeads, length, headDim] }, { causal: true, offset: length - 1 });
    for (let i = 0; i < expected.data.length; i++) worst = Math.max(worst, Math.abs(outputs[s].data[i] - expected.data[i]));
  }
  return worst;
}

/** Relative L2 error of each output row (one query head of one sequence) against the float32 pool's: [max, median]. */
function rowErrors(outputs, baseline) {
  const errors = [];
  outputs.forEach((y, s) => {
    for (let h = 0; h < qHeads; h++) {
      let [diff, norm] = [0, 0];
      for (let d = h * headDim; d < (h + 1) * headDim; d++) {
        diff += (y.data[d] - baseline[s].data[d]) ** 2;
        norm += baseline[s].data[d] ** 2;
      }
      errors.push(Math.sqrt(diff / norm));
    }
  });
  errors.sort((a, b) => a - b);
  return [errors[errors.length - 1], errors[Math.floor(errors.length / 2)]];
}

const rows = [];
let copyGBs;
/** The float32 pool's first-step outputs (the accuracy baseline; the same at any thread count). */
let baseline;
for (const threads of threadCounts) {
 const engine = createEngineSync({ backend, threads });
 for (const dtype of dtypes) {
  const { pool, sequences } = filledPool(engine, dtype);
  const bytesPerToken = pool.stats().bytesPerToken;
  log(`${backend}, ${threads} thread(s), ${dtype} pages: ${count} sequences (${totalKeys} positions, ${(stepBytes(0, bytesPerToken) / 2 ** 30).toFixed(2)} GiB of K and V)...`);
  const random = filler(2);
  const step = tokens(random);
  const items = () => sequences.map((sequence, s) => ({ sequence, ...step[s] }));
  // correctness first, on one step
  const first = threads === 1 ? pool.step(items(), { rope }) : await pool.stepAsync(items(), { rope });
  const maxError = check(sequences, step, first);
  if (dtype === 'float32') baseline ??= first;
  const [relMax, relMedian] = baseline ? rowErrors(first, baseline) : [NaN, NaN];
  const bench = new Bench({ time: Number(values.time), iterations: 5, warmupIterations: 1, warmupTime: 0 });
  let steps = 1;
  if (threads === 1) bench.add('pool.step', () => void (steps++, pool.step(items(), { rope })));
  else bench.add('pool.stepAsync', async () => void (steps++, await pool.stepAsync(items(), { rope })));
  let caches;
  if (threads === 1 && dtype === 'float32' && !values['skip-caches']) {
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
  const bytesRead = stepBytes(steps / 2, bytesPerToken);
  const row = { backend, threads, dtype, ms, tokensPerSecond: (1000 * count) / ms, bytesPerToken, kvGBs: bytesRead / ms / 1e6, maxError, relL2: { max: relMax, median: relMedian }, steps: poolTask.result.latency.samples?.length };
  if (caches) row.separateMs = bench.tasks[1].result.latency.p50;
  rows.push(row);
  for (const cache of caches ?? []) cache.dispose();
  pool.dispose();
  collect();
 }
 engine.dispose();
}

// onnxruntime-node's GroupQueryAttention on the same step (each sequence's total length: its history plus the new token),
// with the cache type matching each page dtype where ORT's CPU kernel has one, else float32
const peer = [];
let peerNote;
/** ORT's cache type for our `dtype` pages. */
let peerCache = () => undefined;
if (!values['skip-peer']) {
  let gqa;
  try {
    gqa = await import('./peers/gqa-step.js');
    await import(new URL('./peers/node_modules/onnxruntime-node/package.json', import.meta.url), { with: { type: 'json' } });
    peerCache = (dtype) => (gqa.CACHE_TYPES.includes(dtype) ? dtype : 'float32');
  } catch {
    gqa = undefined;
    peerNote = 'onnxruntime-node not installed (npm --prefix bench/peers ci): no peer column';
  }
  for (const threads of gqa ? threadCounts : []) {
    for (const cacheType of new Set(dtypes.map(peerCache))) {
      log(`onnxruntime-node GroupQueryAttention, ${threads} thread(s), ${cacheType} cache...`);
      const ort = await gqa.createOrtGqaStep({ lengths: lengths.map((l) => l + 1), qHeads, kvHeads, headDim, threads, rope: { base: 10000 }, cacheType });
      const random = filler(3);
      const [q, k, v] = [qHeads, kvHeads, kvHeads].map((heads) => random(count * heads * headDim));
      // the first step's output on the same two sequences as ours, against the reference over ORT's cache as stored
      const checked = [0, count - 1];
      const maxError = gqa.maxAbsError(await ort.run(q, k, v), ort.reference(q, checked), { length: qHeads * headDim, indices: checked });
      const bench = new Bench({ time: Number(values.time), iterations: 5, warmupIterations: 1, warmupTime: 0 });
      bench.add('ort', async () => void (await ort.run(q, k, v)));
      await bench.run();
      peer.push({ threads, cacheType, ms: bench.tasks[0].result.latency.p50, variant: ort.variant, maxError });
      await ort.close();
      collect();
    }
  }
}

if (values.json) {
  console.log(JSON.stringify({ node: process.version, sequences: count, lengths: [values.min, values.max], qHeads, kvHeads, headDim, pageSize, copyGBs, rows, peer, peerNote }, null, 2));
} else {
  console.log(`\nnode ${process.version}, ${backend}; decode step of ${count} sequences, contexts ${values.min}..${values.max} (${totalKeys} positions), Hq ${qHeads}, Hkv ${kvHeads}, D ${headDim}, pages of ${pageSize}, RoPE; median of the timed steps`);
  console.log(`memory.copy: ${copyGBs.toFixed(2)} GB/s\n`);
  console.log('| threads | pages | step: median ms | tokens/s | vs float32 pages | bytes/token | vs float32 | K and V read: GB/s | vs memory.copy | vs 1 thread | rel. L2 error per row vs float32: max (median) | max error vs reference |');
  console.log('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const f32 = rows.find((x) => x.threads === r.threads && x.dtype === 'float32');
    const single = rows.find((x) => x.threads === 1 && x.dtype === r.dtype);
    const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}x` : '-');
    const rel = r.dtype === 'float32' || Number.isNaN(r.relL2.max) ? '-' : `${r.relL2.max.toExponential(1)} (${r.relL2.median.toExponential(1)})`;
    console.log(`| ${r.threads} | ${r.dtype} | ${r.ms.toFixed(1)} | ${r.tokensPerSecond.toFixed(0)} | ${ratio(r.tokensPerSecond, f32?.tokensPerSecond)} | ${r.bytesPerToken} | ${ratio(r.bytesPerToken, f32?.bytesPerToken)} | ${r.kvGBs.toFixed(2)} | ${((r.kvGBs / copyGBs) * 100).toFixed(0)}% | ${ratio(single?.ms, r.ms)} | ${rel} | ${r.maxError.toExponential(1)} |`);
  }
  console.log('\nfloat32 pages against separate kvCache calls and onnxruntime-node:\n');
  const one = rows.find((r) => r.threads === 1 && r.dtype === 'float32');
  console.log('| threads | pool step: median ms | K and V read: GB/s | vs memory.copy | vs 1 thread | separate kvCache calls: ms | batched speed-up | onnxruntime-node GQA: ms | vs onnxruntime-node | max error |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows.filter((x) => x.dtype === 'float32')) {
    const separate = r.separateMs ? `${r.separateMs.toFixed(1)} | ${(r.separateMs / r.ms).toFixed(2)}x` : '- | -';
    const ort = peer.find((p) => p.threads === r.threads && p.cacheType === 'float32');
    const vsOrt = ort ? `${ort.ms.toFixed(1)} | ${(ort.ms / r.ms).toFixed(2)}x` : '- | -';
    console.log(`| ${r.threads} | ${r.ms.toFixed(1)} | ${r.kvGBs.toFixed(2)} | ${((r.kvGBs / copyGBs) * 100).toFixed(0)}% | ${one ? (one.ms / r.ms).toFixed(2) + 'x' : '-'} | ${separate} | ${vsOrt} | ${r.maxError.toExponential(1)} |`);
  }
  if (peer.length) {
    console.log(`\nonnxruntime-node: ${[...new Set(peer.map((p) => `${p.cacheType} cache ${p.variant}`))].join(', ')} (bench/peers/gqa-step.js); vs onnxruntime-node above 1 means ours is faster`);
    console.log('\nEach page dtype against onnxruntime-node GroupQueryAttention with the same cache type where its CPU kernel has one (float32, float16, int8 per-channel), else its float32:\n');
    console.log('| threads | pages | pool step: median ms | onnxruntime-node cache | onnxruntime-node GQA: ms | vs onnxruntime-node | onnxruntime-node max error |');
    console.log('|---:|---|---:|---|---:|---:|---:|');
    for (const r of rows) {
      const ort = peer.find((p) => p.threads === r.threads && p.cacheType === peerCache(r.dtype));
      if (ort) console.log(`| ${r.threads} | ${r.dtype} | ${r.ms.toFixed(1)} | ${ort.cacheType}${ort.cacheType === r.dtype ? '' : ' (no ' + r.dtype + ' cache)'} | ${ort.ms.toFixed(1)} | ${(ort.ms / r.ms).toFixed(2)}x | ${ort.maxError.toExponential(1)} |`);
    }
    console.log('\n- onnxruntime-node max error: its first step\'s output on sequences 0 and last against the float64 reference over its cache as stored (decoded; the new token included), as ours is checked.');
  }
  if (peerNote) console.log(`\n${peerNote}`);
}
