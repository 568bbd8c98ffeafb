// Thread-pool measurements:
//  1. the crossover: per call size, one thread against the pool, to set MIN_PARALLEL_FLOPS from data
//     (the engine runs calls below it on the calling thread; here both engines are forced);
//  2. event-loop delay (perf_hooks.monitorEventLoopDelay) while an attentionAsync call of about a
//     second runs on the workers.
//   node bench/threads.bench.js [--threads 2]
import { availableParallelism } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createEngineSync } from '../dist/index.js';
import { MIN_PARALLEL_FLOPS } from '../dist/pool/pool.js';

const { values } = parseArgs({ options: { threads: { type: 'string', default: String(Math.min(4, availableParallelism())) } } });
const threads = Number(values.threads);
let seed = 7;
const tensor = (dims) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5), dims });

function median(run, repeats) {
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    run();
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[repeats >> 1];
}

const one = createEngineSync({ threads: 1 });
const many = createEngineSync({ threads });
many.runtime.pool.minParallelFlops = 0; // internal: force the pool for every size
console.log(`node ${process.version}, ${one.backend}, pool of ${threads} threads; MIN_PARALLEL_FLOPS now ${MIN_PARALLEL_FLOPS.toExponential(1)}\n`);
console.log('| attention shape | MFLOP | 1 thread µs | pool (forced) µs | speed-up |');
console.log('|---|---:|---:|---:|---:|');
for (const seq of [8, 16, 32, 64, 96, 128, 192, 256, 512]) {
  const q = tensor([1, 4, seq, 64]);
  const flops = 4 * 4 * seq * seq * 64;
  const repeats = Math.max(15, Math.min(2000, Math.round(2e9 / flops)));
  for (let i = 0; i < 5; i++) [one, many].forEach((e) => e.attention(q, q, q)); // warm up (tier-up, memory)
  const alone = median(() => one.attention(q, q, q), repeats);
  const forced = median(() => many.attention(q, q, q), repeats);
  console.log(`| B1 H4 S${seq} D64 | ${(flops / 1e6).toFixed(1)} | ${(alone * 1000).toFixed(1)} | ${(forced * 1000).toFixed(1)} | ${(alone / forced).toFixed(2)}x |`);
}

// 2. event-loop delay while a ~1 s async call runs
const big = tensor([1, 8, 4096, 64]);
await many.attentionAsync(big, big, big, { causal: true });
const histogram = monitorEventLoopDelay({ resolution: 1 });
histogram.enable();
const t0 = performance.now();
await many.attentionAsync(big, big, big, { causal: true });
const callMs = performance.now() - t0;
histogram.disable();
console.log(`\nattentionAsync B1 H8 S4096 D64 causal on ${threads} threads: ${callMs.toFixed(0)} ms; event-loop delay p50 ${(histogram.percentile(50) / 1e6).toFixed(2)} ms, p99 ${(histogram.percentile(99) / 1e6).toFixed(2)} ms, max ${(histogram.max / 1e6).toFixed(2)} ms`);
one.dispose();
many.dispose();
