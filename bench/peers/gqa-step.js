// onnxruntime-node peer for one batched decode step of grouped-query attention: the com.microsoft
// GroupQueryAttention contrib op (CPU EP) on a ragged batch whose sequences each get one new token.
//   npm --prefix bench/peers ci && node bench/peers/gqa-step.js [--threads 1,2] [--rope] [--variants output-only,shared-kv]
// Self-contained: no wasm-attention code is loaded, so the numbers are ORT's alone.
//
// Layout (GroupQueryAttention's): q [B, 1, Hq·D], k and v [B, 1, Hkv·D], past_key and past_value
// [B, Hkv, maxLen, D] (right-padded, BNSH), seqlens_k int32 [B] = total length - 1 per sequence,
// total_sequence_length int32 scalar, with do_rotary: cos_cache and sin_cache [maxLen, D/2].
//
// Variants. What the CPU kernel does is from contrib_ops/cpu/bert/gqa_attention_base.h (onnxruntime
// 1.30): it calls past and present "shared" when past_key.data == present_key.data (and likewise for
// values), and then only writes the new token's k and v at position seqlens_k[b]; otherwise it zeroes
// the whole present buffer (B·Hkv·maxLen·D floats) and copies each sequence's past into it.
// - output-only (the default, the fastest): only `output` is fetched. ORT builds a throwaway present
//   in its arena (zeroed, each sequence's past copied in) and drops it; run() itself appends the new
//   k (rotated with rope, by the same float32 tables) and v to the caller's past at lengths[b]-1, so
//   the cache ends the step exactly as in shared-kv (a B·Hkv·D copy).
// - shared-kv: present_key/present_value are preallocated outputs wrapping the very Float32Arrays fed
//   as past_key/past_value. onnxruntime-node 1.30 wraps CPU typed arrays without copying (inputs and
//   preallocated outputs), so the kernel takes its shared path and writes only the new token. But the
//   1.30 binding then copies every fetched output, preallocated or not, into a fresh ArrayBuffer
//   (the result's present_key.data is a new buffer), i.e. 2·B·Hkv·maxLen·D floats per step, and its
//   IO binding path only takes 'gpu-buffer' tensors ("Tensor.location must be 'gpu-buffer' for IO
//   binding"; preferredOutputLocation 'cpu' / 'cpu-pinned' change nothing). So in Node this variant
//   is several times slower than output-only; it is kept to show that.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { INT32, encodeModel } from './onnx-proto.js';

export const VARIANTS = ['output-only', 'shared-kv'];

/** A seeded generator of floats in [-1, 1) (mulberry32), so every run sees the same data. */
export function seededRandom(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  };
}

/** `count` lengths evenly spaced over [min, max] (both included), in a seeded shuffled order. */
export function evenLengths(count, min, max, seed = 7) {
  const lengths = Array.from({ length: count }, (_, i) => (count === 1 ? max : Math.round(min + ((max - min) * i) / (count - 1))));
  const random = seededRandom(seed);
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(((random() + 1) / 2) * (i + 1));
    [lengths[i], lengths[j]] = [lengths[j], lengths[i]];
  }
  return lengths;
}

/** Float32Array of n seeded values in [-1, 1). */
export function seededArray(n, seed) {
  const random = seededRandom(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = random();
  return out;
}

/** RoPE angle tables [maxLen, D/2]: cos and sin of p·base^(-2i/D), rounded to float32 (half-split layout). */
export function ropeTables(maxLen, headDim, base = 10000) {
  const half = headDim / 2;
  const cos = new Float32Array(maxLen * half);
  const sin = new Float32Array(maxLen * half);
  for (let p = 0; p < maxLen; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * base ** ((-2 * i) / headDim);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** The one-node ONNX model: com.microsoft GroupQueryAttention (opset 1 of that domain), fixed shapes. */
export function gqaStepModel({ batch, qHeads, kvHeads, headDim, maxLen, rope }) {
  const cacheDims = [batch, kvHeads, maxLen, headDim];
  const inputs = [
    { name: 'query', dims: [batch, 1, qHeads * headDim] },
    { name: 'key', dims: [batch, 1, kvHeads * headDim] },
    { name: 'value', dims: [batch, 1, kvHeads * headDim] },
    { name: 'past_key', dims: cacheDims },
    { name: 'past_value', dims: cacheDims },
    { name: 'seqlens_k', dims: [batch], type: INT32 },
    { name: 'total_sequence_length', dims: [], type: INT32 },
  ];
  if (rope) inputs.push({ name: 'cos_cache', dims: [maxLen, headDim / 2] }, { name: 'sin_cache', dims: [maxLen, headDim / 2] });
  const attrs = { num_heads: qHeads, kv_num_heads: kvHeads, scale: { float: 1 / Math.sqrt(headDim) } };
  if (rope) Object.assign(attrs, { do_rotary: 1, rotary_interleaved: 0 });
  const outputs = [
    { name: 'output', dims: [batch, 1, qHeads * headDim] },
    { name: 'present_key', dims: cacheDims },
    { name: 'present_value', dims: cacheDims },
  ];
  const node = { op: 'GroupQueryAttention', domain: 'com.microsoft', inputs: inputs.map((i) => i.name), outputs: outputs.map((o) => o.name), attrs };
  return encodeModel({ graph: { name: 'gqa_step', nodes: [node], inputs, outputs }, opsets: { '': 17, 'com.microsoft': 1 } });
}

/** Rotates one head vector x (length D, half-split pairs i and i + D/2) to position p, in float64. */
function rotate(x, p, base) {
  const d = x.length;
  const half = d / 2;
  const out = new Float64Array(d);
  for (let i = 0; i < half; i++) {
    const angle = p * base ** ((-2 * i) / d);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    out[i] = x[i] * c - x[i + half] * s;
    out[i + half] = x[i + half] * c + x[i] * s;
  }
  return out;
}

/**
 * Float64 reference for the step: per sequence b and query head h (kv head g = h / (Hq/Hkv)),
 * softmax(q·kᵀ/√D)·v over keys 0..lengths[b]-1, where keys/values 0..lengths[b]-2 come from the
 * past buffers as stored (already rotated) and the last one is the new k/v. With rope, q and the new
 * k are rotated to position lengths[b]-1. Returns [B, Hq·D].
 */
export function referenceGqaStep({ lengths, qHeads, kvHeads, headDim, maxLen, rope }, pastKey, pastValue, q, k, v) {
  const D = headDim;
  const group = qHeads / kvHeads;
  const base = rope ? (rope.base ?? 10000) : 0;
  const out = new Float64Array(lengths.length * qHeads * D);
  const scale = 1 / Math.sqrt(D);
  for (let b = 0; b < lengths.length; b++) {
    const L = lengths[b];
    for (let g = 0; g < kvHeads; g++) {
      const cache = (b * kvHeads + g) * maxLen * D;
      const kvAt = (b * kvHeads + g) * D;
      let newK = k.subarray(kvAt, kvAt + D);
      if (rope) newK = rotate(newK, L - 1, base);
      const newV = v.subarray(kvAt, kvAt + D);
      for (let j = 0; j < group; j++) {
        const h = g * group + j;
        const qAt = (b * qHeads + h) * D;
        let qh = q.subarray(qAt, qAt + D);
        if (rope) qh = rotate(qh, L - 1, base);
        const scores = new Float64Array(L);
        let max = -Infinity;
        for (let t = 0; t < L; t++) {
          const key = t === L - 1 ? newK : pastKey.subarray(cache + t * D, cache + (t + 1) * D);
          let dot = 0;
          for (let i = 0; i < D; i++) dot += qh[i] * key[i];
          scores[t] = dot * scale;
          if (scores[t] > max) max = scores[t];
        }
        let sum = 0;
        for (let t = 0; t < L; t++) sum += scores[t] = Math.exp(scores[t] - max);
        const o = out.subarray(qAt, qAt + D);
        for (let t = 0; t < L; t++) {
          const w = scores[t] / sum;
          const val = t === L - 1 ? newV : pastValue.subarray(cache + t * D, cache + (t + 1) * D);
          for (let i = 0; i < D; i++) o[i] += w * val[i];
        }
      }
    }
  }
  return out;
}

export function maxAbsError(actual, expected) {
  if (actual.length !== expected.length) return NaN;
  let m = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= m)) m = d; // a NaN sticks
  }
  return m;
}

/**
 * One decode step through onnxruntime-node's GroupQueryAttention.
 * options: lengths (total length per sequence, new token included), qHeads, kvHeads, headDim,
 * threads (intraOpNumThreads, default 1), rope (false | true | { base }), variant ('output-only' default,
 * or 'shared-kv'), maxLen (default max(lengths)), past ({ key, value } Float32Arrays of
 * [B, Hkv, maxLen, D] to use instead of allocating and filling new seeded ones), seed.
 * Returns { variant, maxLen, pastKey, pastValue, run(q, k, v) → Promise<Float32Array [B, Hq·D]>, close() }.
 * Both variants leave the new k (rotated, with rope) and v in the past buffers at position lengths[b]-1.
 * In shared-kv, run returns the same preallocated array each time (overwritten by the next run).
 */
export async function createOrtGqaStep({ lengths, qHeads, kvHeads, headDim, threads = 1, rope = false, variant = 'output-only', maxLen, past, seed = 1 }) {
  if (!VARIANTS.includes(variant)) throw new Error(`variant must be one of ${VARIANTS.join(', ')}, got ${variant}`);
  if (qHeads % kvHeads !== 0) throw new Error(`qHeads (${qHeads}) must be a multiple of kvHeads (${kvHeads})`);
  const ort = await import('onnxruntime-node');
  const batch = lengths.length;
  const longest = Math.max(...lengths);
  maxLen ??= longest;
  if (longest > maxLen || Math.min(...lengths) < 1) throw new Error(`lengths must lie in 1..maxLen (${maxLen})`);
  const cacheSize = batch * kvHeads * maxLen * headDim;
  const pastKey = past?.key ?? seededArray(cacheSize, seed);
  const pastValue = past?.value ?? seededArray(cacheSize, seed + 1);
  if (pastKey.length !== cacheSize || pastValue.length !== cacheSize) throw new Error(`past buffers must hold ${cacheSize} floats`);

  const session = await ort.InferenceSession.create(gqaStepModel({ batch, qHeads, kvHeads, headDim, maxLen, rope }), {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    logSeverityLevel: 3,
  });

  const cacheDims = [batch, kvHeads, maxLen, headDim];
  const pastKeyTensor = new ort.Tensor('float32', pastKey, cacheDims);
  const pastValueTensor = new ort.Tensor('float32', pastValue, cacheDims);
  const fixed = {
    past_key: pastKeyTensor,
    past_value: pastValueTensor,
    seqlens_k: new ort.Tensor('int32', Int32Array.from(lengths, (L) => L - 1), [batch]),
    total_sequence_length: new ort.Tensor('int32', Int32Array.of(longest), []),
  };
  let tables;
  if (rope) {
    tables = ropeTables(maxLen, headDim, rope.base ?? 10000);
    const { cos, sin } = tables;
    fixed.cos_cache = new ort.Tensor('float32', cos, [maxLen, headDim / 2]);
    fixed.sin_cache = new ort.Tensor('float32', sin, [maxLen, headDim / 2]);
  }
  const output = new Float32Array(batch * qHeads * headDim);
  const fetches =
    variant === 'shared-kv'
      ? { output: new ort.Tensor('float32', output, [batch, 1, qHeads * headDim]), present_key: pastKeyTensor, present_value: pastValueTensor }
      : ['output'];

  // output-only: the step's k (rotated like GQA does it, half-split, at position lengths[b]-1) and v go
  // into the caller's past at lengths[b]-1, as the shared kernel path would have written them.
  const half = headDim / 2;
  function appendToPast(k, v) {
    for (let b = 0; b < batch; b++) {
      const pos = lengths[b] - 1;
      for (let g = 0; g < kvHeads; g++) {
        const src = (b * kvHeads + g) * headDim;
        const dst = ((b * kvHeads + g) * maxLen + pos) * headDim;
        pastValue.set(v.subarray(src, src + headDim), dst);
        if (!tables) {
          pastKey.set(k.subarray(src, src + headDim), dst);
          continue;
        }
        for (let i = 0; i < half; i++) {
          const c = tables.cos[pos * half + i];
          const s = tables.sin[pos * half + i];
          const x1 = k[src + i];
          const x2 = k[src + i + half];
          pastKey[dst + i] = x1 * c - x2 * s;
          pastKey[dst + i + half] = x2 * c + x1 * s;
        }
      }
    }
  }

  return {
    variant: `${variant}${rope ? ' +rotary' : ''}`,
    maxLen,
    pastKey,
    pastValue,
    async run(q, k, v) {
      const feeds = {
        ...fixed,
        query: new ort.Tensor('float32', q, [batch, 1, qHeads * headDim]),
        key: new ort.Tensor('float32', k, [batch, 1, kvHeads * headDim]),
        value: new ort.Tensor('float32', v, [batch, 1, kvHeads * headDim]),
      };
      const result = await session.run(feeds, fetches);
      if (variant === 'shared-kv') return output;
      appendToPast(k, v);
      return result.output.data;
    },
    close: () => session.release(),
  };
}

// ---------------------------------------------------------------------------------------------
// CLI: the workload.

/** Busy CPU seconds of the whole machine so far (Linux /proc/stat, USER_HZ = 100), or NaN elsewhere. */
function machineBusySeconds() {
  try {
    const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = fields[3] + (fields[4] ?? 0); // idle + iowait
    return (fields.slice(0, 8).reduce((a, b) => a + b, 0) - idle) / 100;
  } catch {
    return NaN;
  }
}

/** CPU seconds this process has used (all its threads, ORT's pool included). */
const ownCpuSeconds = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};

async function main() {
  const { values } = parseArgs({
    options: {
      threads: { type: 'string', default: '1' },
      rope: { type: 'boolean', default: false },
      variants: { type: 'string', default: VARIANTS.join(',') },
      steps: { type: 'string', default: '10' },
      warmup: { type: 'string', default: '2' },
      batch: { type: 'string', default: '64' },
      'min-len': { type: 'string', default: '256' },
      'max-len': { type: 'string', default: '4096' },
      json: { type: 'boolean', default: false },
    },
  });
  const threadList = values.threads.split(',').map(Number);
  for (const t of threadList) if (!Number.isInteger(t) || t < 1) throw new Error(`--threads takes integers >= 1, got ${values.threads}`);
  const variants = values.variants.split(',');
  for (const v of variants) if (!VARIANTS.includes(v)) throw new Error(`unknown variant ${v}; known: ${VARIANTS.join(', ')}`);
  const steps = Number(values.steps);
  const warmup = Number(values.warmup);
  const log = (text) => process.stderr.write(text);
  const MB = 1024 * 1024;

  const shape = { qHeads: 32, kvHeads: 8, headDim: 128, rope: values.rope ? { base: 10000 } : false };
  const lengths = evenLengths(Number(values.batch), Number(values['min-len']), Number(values['max-len']));
  const maxLen = Math.max(...lengths);
  const B = lengths.length;
  const { qHeads, kvHeads, headDim } = shape;
  const kvBytesPerStep = lengths.reduce((a, L) => a + L, 0) * kvHeads * headDim * 2 * 4;
  const cacheBytes = B * kvHeads * maxLen * headDim * 4 * 2;

  log(`filling the padded past (${(cacheBytes / 2 ** 30).toFixed(2)} GiB)...`);
  const t0 = performance.now();
  const past = { key: seededArray(B * kvHeads * maxLen * headDim, 1), value: seededArray(B * kvHeads * maxLen * headDim, 2) };
  const q = seededArray(B * qHeads * headDim, 3);
  const k = seededArray(B * kvHeads * headDim, 4);
  const v = seededArray(B * kvHeads * headDim, 5);
  log(` ${((performance.now() - t0) / 1000).toFixed(1)} s; float64 reference...`);
  const t1 = performance.now();
  const expected = referenceGqaStep({ lengths, maxLen, ...shape }, past.key, past.value, q, k, v);
  log(` ${((performance.now() - t1) / 1000).toFixed(1)} s\n`);
  // A collector to call before each session, so that one variant's garbage (shared-kv's copied-out
  // ArrayBuffers) does not count against the next.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc');
  const settle = async () => {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 200));
    gc();
  };

  const rows = [];
  for (const threads of threadList) {
    for (const variant of variants) {
      log(`threads ${threads}, ${variant}${shape.rope ? ' +rotary' : ''}:`);
      await settle();
      const rssBefore = process.memoryUsage().rss;
      const step = await createOrtGqaStep({ lengths, maxLen, threads, variant, past, ...shape });
      try {
        const first = await step.run(q, k, v);
        const maxError = maxAbsError(first, expected);
        for (let i = 1; i < warmup; i++) await step.run(q, k, v);
        const times = [];
        const busy0 = machineBusySeconds();
        const own0 = ownCpuSeconds();
        const wall0 = performance.now();
        for (let i = 0; i < steps; i++) {
          const s = performance.now();
          await step.run(q, k, v);
          times.push(performance.now() - s);
        }
        const wall = (performance.now() - wall0) / 1000;
        // Cores' worth of CPU that other processes used while the steps ran: a shared machine shows here.
        const otherCores = Math.max(0, machineBusySeconds() - busy0 - (ownCpuSeconds() - own0)) / wall;
        times.sort((a, b) => a - b);
        const ms = times[Math.floor(times.length / 2)];
        const row = {
          threads,
          variant: step.variant,
          medianMs: ms,
          minMs: times[0],
          maxMs: times[times.length - 1],
          kvGBps: kvBytesPerStep / (ms / 1000) / 1e9,
          maxError,
          otherCores,
          rssMB: process.memoryUsage().rss / MB,
          rssGrowthMB: (process.memoryUsage().rss - rssBefore) / MB,
        };
        rows.push(row);
        log(` median ${ms.toFixed(1)} ms, max error ${maxError.toExponential(2)}, other processes ${otherCores.toFixed(2)} cores\n`);
      } finally {
        await step.close();
      }
    }
  }

  const ort = await import('onnxruntime-node');
  const header = {
    node: process.version,
    onnxruntimeNode: ort.env.versions?.node,
    batch: B,
    lengths: `${Math.min(...lengths)}..${maxLen}, sum ${lengths.reduce((a, L) => a + L, 0)}`,
    qHeads,
    kvHeads,
    headDim,
    rope: Boolean(shape.rope),
    maxLen,
    paddedPastGiB: cacheBytes / 2 ** 30,
    kvBytesPerStep,
    steps,
    warmup,
  };
  if (values.json) {
    console.log(JSON.stringify({ ...header, rows }, null, 2));
    return;
  }
  console.log(
    `\nonnxruntime-node ${header.onnxruntimeNode} GroupQueryAttention, node ${header.node}: B ${B}, lengths ${header.lengths}, Hq ${qHeads}, Hkv ${kvHeads}, D ${headDim}, ` +
      `rotary ${header.rope ? 'on' : 'off'}, padded past ${header.paddedPastGiB.toFixed(2)} GiB (maxLen ${maxLen}), KV read per step ${(kvBytesPerStep / 1e9).toFixed(3)} GB; ` +
      `median of ${steps} timed steps after ${warmup} untimed\n`,
  );
  console.log('| threads | variant | median ms | min..max ms | KV GB/s | max abs error | RSS MB | RSS Δ MB | other load |');
  console.log('|---:|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.threads} | ${r.variant} | ${r.medianMs.toFixed(1)} | ${r.minMs.toFixed(1)}..${r.maxMs.toFixed(1)} | ${r.kvGBps.toFixed(2)} | ${r.maxError.toExponential(2)} | ${r.rssMB.toFixed(0)} | ${r.rssGrowthMB.toFixed(0)} | ${r.otherCores.toFixed(2)} |`,
    );
  }
  console.log('\n- KV GB/s = sum(lengths)·Hkv·D·2·4 bytes / median step time (the K and V bytes a step must read).');
  console.log('- max abs error: the first step\'s output against the float64 reference in this file.');
  console.log('- RSS: resident memory of the whole process after the timed steps (the padded past, inputs and reference included); RSS Δ: its growth from before the session was created (after a GC).');
  console.log('- other load: cores\' worth of CPU that other processes used during the timed steps (/proc/stat minus this process); above ~0.1 the figures are contended.');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
