// Attention's backward pass against its forward pass, on the same engine, in one run.
//   npm run bench:backward                     bert-512 and gpt-1024, each wasm build, threads 1 and 2, then
//                                              the long section (about 30 s on 2 cores)
//   node bench/backward.bench.js --shapes bert-128 --threads 1 --no-long --json
//   node bench/backward.bench.js --long false   (or --no-long) skips the long section; --long-seq 4096 shrinks it
//   node bench/backward.bench.js --outputs fresh  new output arrays every call instead of options.out / options.grads
// For each shape, wasm build and thread count: the forward, engine.attention(q, k, v, { causal,
// returnLogSumExp: true }), and the backward, engine.attentionBackward(q, k, v, out, dOut, { causal,
// logSumExp }) with the forward's output and log-sum-exp, timed in alternation (forward then backward
// in one round, backward then forward in the next, so that a drift in the machine's speed reaches both
// alike); median ms of each over the rounds (inputs copied in; by default the output and the gradients
// written into the same caller arrays every call, options.out and options.grads, as a training loop
// does: a fresh 1.5 MB array costs ms of page faults here, three times as many for the backward), GFLOP/s (forward:
// 4·B·H·Sq·Skv·D, half for causal; backward: 2.5 times that), and backward ms ÷ forward ms, measured in
// the same rounds (goal: <= 2.5). Before timing, head 0's dq, dk and dv are checked against the float64
// reference (max |error| ÷ max |reference| over the three).
// The long section: S = 16384, causal, B1 H1 D64, one forward and one backward call on the fastest build
// at the largest thread count, in a fresh child process, after one small warm-up call of each: resident
// memory (RSS) before the inputs are allocated and right after each call, the peak RSS
// (process.resourceUsage().maxRSS), and the engine's reserved WASM memory (engine.stats().reservedBytes;
// WASM memory never shrinks, so it holds the call's peak), less the bytes the caller holds anyway: q, k,
// v, out, dOut, log-sum-exp, dq, dk, dv as float32 (goal: growth beyond them < 64 MB).
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createEngineSync } from '../dist/index.js';
import { referenceAttentionBackward } from '../dist/reference.js';
import { buildSupported } from '../dist/backends/wasm-module.js';
import { collect, relaunchWithRelaxedSimd } from './relaxed-flag.js';

relaunchWithRelaxedSimd();

const SHAPES = {
  'bert-128': { batch: 1, heads: 12, seqQ: 128, seqKV: 128, headDim: 64, causal: false },
  'bert-512': { batch: 1, heads: 12, seqQ: 512, seqKV: 512, headDim: 64, causal: false },
  'gpt-1024': { batch: 1, heads: 12, seqQ: 1024, seqKV: 1024, headDim: 64, causal: true },
};
const BUILDS = ['wasm-relaxed-simd', 'wasm-simd'];
const MB = 1024 * 1024;

// --no-long and a bare --long are rewritten to --long=false / --long=true, and `--long false` to
// --long=false, so that one string option takes every spelling on every Node 20 and later.
const argv = [];
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '--no-long') argv.push('--long=false');
  else if (a === '--long') {
    const next = process.argv[i + 1];
    if (next !== undefined && /^(true|false|1|0|yes|no)$/i.test(next)) argv.push(`--long=${process.argv[++i]}`);
    else argv.push('--long=true');
  } else argv.push(a);
}
const { values } = parseArgs({
  args: argv,
  options: {
    shapes: { type: 'string', default: 'bert-512,gpt-1024' },
    builds: { type: 'string' },
    threads: { type: 'string', default: `1,${Math.min(2, availableParallelism())}` },
    rounds: { type: 'string', default: '7' },
    time: { type: 'string', default: '2000' },
    long: { type: 'string', default: 'true' },
    'long-seq': { type: 'string', default: '16384' },
    outputs: { type: 'string', default: 'reused' },
    'long-only': { type: 'boolean', default: false }, // internal: the child process of the long section
    json: { type: 'boolean', default: false },
  },
});
const wantLong = !/^(false|0|no)$/i.test(values.long);
const threadCounts = [...new Set(values.threads.split(',').map(Number))];
for (const t of threadCounts) if (!Number.isInteger(t) || t < 1) throw new Error(`--threads: integers >= 1, got ${values.threads}`);
const builds = values.builds?.split(',') ?? BUILDS.filter((b) => buildSupported(b));
for (const b of builds) if (!BUILDS.includes(b)) throw new Error(`unknown build ${b}; known: ${BUILDS.join(', ')}`);
const longSeq = Number(values['long-seq']);
if (values.outputs !== 'reused' && values.outputs !== 'fresh') throw new Error(`--outputs: reused or fresh, got ${values.outputs}`);
const reuse = values.outputs === 'reused';
const log = (text) => {
  if (!values.json) process.stderr.write(text);
};

const random = (() => {
  let s = 12345;
  return () => ((s = (s * 1103515245 + 12345) >>> 0) / 4294967296) * 2 - 1;
})();
const tensor = (dims) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, random), dims });
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const forwardFlops = (s) => (4 * s.batch * s.heads * s.seqQ * s.seqKV * s.headDim) / (s.causal ? 2 : 1);

// ---------------------------------------------------------------------------------------------
// The long section, in its own process (so that its peak RSS is its own): prints one JSON line.
if (values['long-only']) {
  const s = { batch: 1, heads: 1, seqQ: longSeq, seqKV: longSeq, headDim: 64, causal: true };
  const backend = builds[0];
  const threads = Math.max(...threadCounts);
  const engine = createEngineSync({ backend, threads });
  // one small forward and backward first, so that one-time costs (compilation tiers, worker start) fall
  // outside both the timings and the baseline
  {
    const [wq, wk, wv, wd] = [0, 1, 2, 3].map(() => tensor([1, 1, 256, 64]));
    const w = engine.attention(wq, wk, wv, { causal: true, returnLogSumExp: true });
    engine.attentionBackward(wq, wk, wv, { data: w.data, dims: w.dims }, wd, { causal: true, logSumExp: w.logSumExp });
  }
  collect();
  const rss0 = process.memoryUsage().rss;
  const peak0 = process.resourceUsage().maxRSS * 1024;
  const reserved0 = engine.stats().reservedBytes;
  const dims = [s.batch, s.heads, s.seqQ, s.headDim];
  const [q, k, v, dOut] = [tensor(dims), tensor(dims), tensor(dims), tensor(dims)];
  let t0 = performance.now();
  const fwd = engine.attention(q, k, v, { causal: true, returnLogSumExp: true });
  const forwardMs = performance.now() - t0;
  const rss1 = process.memoryUsage().rss;
  const reserved1 = engine.stats().reservedBytes;
  const out = { data: fwd.data, dims: fwd.dims };
  t0 = performance.now();
  const g = engine.attentionBackward(q, k, v, out, dOut, { causal: true, logSumExp: fwd.logSumExp });
  const backwardMs = performance.now() - t0;
  const rss2 = process.memoryUsage().rss;
  const peak2 = process.resourceUsage().maxRSS * 1024;
  const reserved2 = engine.stats().reservedBytes;
  const bytes = (t) => t.data.byteLength;
  const inputBytes = bytes(q) + bytes(k) + bytes(v) + bytes(dOut);
  const forwardBytes = bytes(out) + bytes(fwd.logSumExp);
  const gradBytes = bytes(g.dq) + bytes(g.dk) + bytes(g.dv);
  let finite = true;
  for (const t of [g.dq, g.dk, g.dv]) for (const x of t.data) if (!Number.isFinite(x)) finite = false;
  console.log(
    JSON.stringify({
      shape: s, backend, threads, forwardMs, backwardMs, finite,
      forwardGflops: forwardFlops(s) / forwardMs / 1e6, backwardGflops: (2.5 * forwardFlops(s)) / backwardMs / 1e6,
      rss0, rss1, rss2, peak0, peak2, reserved0, reserved1, reserved2, inputBytes, forwardBytes, gradBytes,
    }),
  );
  engine.dispose();
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// Forward and backward, interleaved.

/** Head 0 of a [B, H, S, D] tensor as [1, 1, S, D]. */
const head0 = (t) => ({ data: t.data.subarray(0, t.dims[2] * t.dims[3]), dims: [1, 1, t.dims[2], t.dims[3]] });
function relativeError(actual, expected) {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (!(d <= diff)) diff = d; // NaN propagates
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return scale === 0 ? diff : diff / scale;
}

const started = performance.now();
const rows = [];
for (const name of values.shapes.split(',')) {
  const s = SHAPES[name];
  if (!s) throw new Error(`unknown shape ${name}; known: ${Object.keys(SHAPES).join(', ')}`);
  const q = tensor([s.batch, s.heads, s.seqQ, s.headDim]);
  const k = tensor([s.batch, s.heads, s.seqKV, s.headDim]);
  const v = tensor([s.batch, s.heads, s.seqKV, s.headDim]);
  const dOut = tensor([s.batch, s.heads, s.seqQ, s.headDim]);
  log(`${name}: reference (head 0)...`);
  const ref = referenceAttentionBackward(head0(q), head0(k), head0(v), head0(dOut), { causal: s.causal });
  const flops = forwardFlops(s);
  for (const backend of builds) {
    for (const threads of threadCounts) {
      log(` ${backend}/${threads}...`);
      const engine = createEngineSync({ backend, threads });
      const fwd = engine.attention(q, k, v, { causal: s.causal, returnLogSumExp: true });
      const out = { data: fwd.data, dims: fwd.dims };
      // reused: each call writes into the same caller arrays (options.out, options.grads), as a training loop does
      const outInto = new Float32Array(fwd.data.length);
      const grads = { dq: new Float32Array(q.data.length), dk: new Float32Array(k.data.length), dv: new Float32Array(v.data.length) };
      const forward = () => engine.attention(q, k, v, { causal: s.causal, returnLogSumExp: true, ...(reuse ? { out: outInto } : {}) });
      const backward = () => engine.attentionBackward(q, k, v, out, dOut, { causal: s.causal, logSumExp: fwd.logSumExp, ...(reuse ? { grads } : {}) });
      forward();
      const g = backward(); // also the warm-up of the backward
      const maxError = Math.max(relativeError(head0(g.dq).data, ref.dq.data), relativeError(head0(g.dk).data, ref.dk.data), relativeError(head0(g.dv).data, ref.dv.data));
      const fwdMs = [];
      const bwdMs = [];
      const time = (fn, into) => {
        const t0 = performance.now();
        fn();
        into.push(performance.now() - t0);
      };
      const t0 = performance.now();
      for (let round = 0; round < Number(values.rounds) || performance.now() - t0 < Number(values.time); round++) {
        if (round % 2 === 0) {
          time(forward, fwdMs);
          time(backward, bwdMs);
        } else {
          time(backward, bwdMs);
          time(forward, fwdMs);
        }
      }
      const [f, b] = [median(fwdMs), median(bwdMs)];
      // the ratio per round too, so that its spread shows; its median is given next to the ratio of the medians
      const perRound = fwdMs.map((x, i) => bwdMs[i] / x);
      rows.push({
        shape: name, backend, threads, rounds: fwdMs.length, forwardMs: f, backwardMs: b,
        forwardGflops: flops / f / 1e6, backwardGflops: (2.5 * flops) / b / 1e6,
        ratio: b / f, ratioPerRound: { median: median(perRound), min: Math.min(...perRound), max: Math.max(...perRound) },
        maxError,
      });
      engine.dispose();
      collect();
    }
  }
  log('\n');
}

const longRuns = [];
if (wantLong) {
  for (const threads of threadCounts) {
    log(`long: S=${longSeq} causal, ${threads} thread(s), one forward and one backward call in a child process...\n`);
    const child = spawnSync(
      process.execPath,
      [...process.execArgv, fileURLToPath(import.meta.url), '--long-only', '--long-seq', String(longSeq), '--threads', String(threads), ...(values.builds ? ['--builds', values.builds] : [])],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, WASM_ATTENTION_NO_RELAUNCH: '1' } },
    );
    if (child.status !== 0) throw new Error(`the long section's child process failed (status ${child.status}): ${child.stdout}`);
    const L = JSON.parse(child.stdout.trim().split('\n').pop());
    L.heldBytes = L.inputBytes + L.forwardBytes + L.gradBytes;
    L.rssGrowthBeyondHeld = L.rss2 - L.rss0 - L.heldBytes;
    L.peakGrowthBeyondHeld = L.peak2 - L.rss0 - L.heldBytes;
    L.backwardRssGrowthBeyondGrads = L.rss2 - L.rss1 - L.gradBytes;
    L.backwardReservedGrowth = L.reserved2 - L.reserved1;
    longRuns.push(L);
  }
}
const totalSeconds = (performance.now() - started) / 1000;

if (values.json) {
  console.log(JSON.stringify({ node: process.version, totalSeconds, rows, long: longRuns }, null, 2));
  process.exit(0);
}

const fmtMB = (bytes) => (bytes / MB).toFixed(1);
console.log(`\nnode ${process.version}, ${availableParallelism()} cores; forward and backward timed in alternation, median of >= ${values.rounds} rounds (>= ${values.time} ms per cell); outputs ${reuse ? 'reused (options.out, options.grads)' : 'fresh arrays every call'}; run took ${totalSeconds.toFixed(0)} s`);
console.log('forward: attention(returnLogSumExp), 4·B·H·Sq·Skv·D flops (half for causal); backward: attentionBackward(logSumExp given), 2.5x the forward\'s flops\n');
console.log('| shape | build | threads | rounds | forward ms | forward GFLOP/s | backward ms | backward GFLOP/s | backward ÷ forward | per round: median (min–max) | max rel. error, head 0 |');
console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|');
for (const r of rows) {
  const p = r.ratioPerRound;
  console.log(
    `| ${r.shape} | ${r.backend.replace('wasm-', '')} | ${r.threads} | ${r.rounds} | ${r.forwardMs.toFixed(2)} | ${r.forwardGflops.toFixed(1)} | ${r.backwardMs.toFixed(2)} | ${r.backwardGflops.toFixed(1)} | ${r.ratio.toFixed(2)} | ${p.median.toFixed(2)} (${p.min.toFixed(2)}–${p.max.toFixed(2)}) | ${r.maxError.toExponential(1)} |`,
  );
}
console.log('\n- backward ÷ forward: the ratio of the two medians (goal <= 2.5); per round: backward ms ÷ forward ms within each round.');
console.log('- max rel. error: head 0\'s dq, dk and dv against referenceAttentionBackward in float64, max |error| ÷ max |reference|, the worst of the three.');
if (longRuns.length) {
  const L0 = longRuns[0];
  const row = (label, f) => console.log(`| ${label} | ${longRuns.map(f).join(' | ')} |`);
  console.log(`\nLong: B1 H1 S${L0.shape.seqQ} D64 causal, ${L0.backend.replace('wasm-', '')}, one forward and one backward call (one sample each) per thread count, each in a fresh process after a small warm-up call\n`);
  console.log(`| | ${longRuns.map((L) => `${L.threads} thread${L.threads > 1 ? 's' : ''}`).join(' | ')} |`);
  console.log(`|---|${longRuns.map(() => '---:|').join('')}`);
  row('forward s (GFLOP/s)', (L) => `${(L.forwardMs / 1000).toFixed(2)} (${L.forwardGflops.toFixed(1)})`);
  row('backward s (GFLOP/s)', (L) => `${(L.backwardMs / 1000).toFixed(2)} (${L.backwardGflops.toFixed(1)})`);
  row('backward ÷ forward', (L) => (L.backwardMs / L.forwardMs).toFixed(2));
  row('gradients all finite', (L) => String(L.finite));
  row(`MB held by the caller: q, k, v, dOut ${fmtMB(L0.inputBytes)} + out, log-sum-exp ${fmtMB(L0.forwardBytes)} + dq, dk, dv ${fmtMB(L0.gradBytes)}`, (L) => fmtMB(L.heldBytes));
  row('MB RSS before the inputs were allocated', (L) => fmtMB(L.rss0));
  row('MB RSS growth, right after the backward call', (L) => fmtMB(L.rss2 - L.rss0));
  row('**MB RSS growth beyond the held bytes** (goal < 64)', (L) => `**${fmtMB(L.rssGrowthBeyondHeld)}**`);
  row('MB peak RSS (maxRSS) growth beyond the held bytes', (L) => fmtMB(L.peakGrowthBeyondHeld));
  row('MB RSS growth in the backward call alone, beyond dq, dk, dv', (L) => fmtMB(L.backwardRssGrowthBeyondGrads));
  row('MB WASM memory reserved: before / after forward / after backward', (L) => `${fmtMB(L.reserved0)} / ${fmtMB(L.reserved1)} / ${fmtMB(L.reserved2)}`);
  row('MB WASM memory the backward call added', (L) => fmtMB(L.backwardReservedGrowth));
  console.log('\n- RSS is read right after each sync call (a sampling timer cannot run during one); WASM memory never shrinks, so its peak is in that figure, and maxRSS is the process\'s true peak. The WASM memory holds the engine\'s own copies of the inputs and outputs, which count as growth here.');
  for (const L of longRuns) if (L.peak0 > L.rss0 + MB) console.log(`- ${L.threads} thread(s): maxRSS was already ${fmtMB(L.peak0)} MB before the inputs, above the baseline RSS, so the peak row is a lower bound.`);
}
