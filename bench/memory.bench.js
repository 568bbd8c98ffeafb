// Peak RSS of one long causal attention call beyond its inputs and output:
// Sq = Skv = 16384, H1, D64 (the kernel keeps O(block) scratch, never the Sq x Skv scores).
//   node --expose-gc bench/memory.bench.js [--seq 16384] [--backend wasm-simd]
import { parseArgs } from 'node:util';
import { createEngineSync } from '../dist/index.js';

const { values } = parseArgs({ options: { seq: { type: 'string', default: '16384' }, backend: { type: 'string', default: 'auto' } } });
const S = Number(values.seq);
const D = 64;
const engine = createEngineSync({ backend: values.backend, threads: 1 });
const tensor = () => ({ data: Float32Array.from({ length: S * D }, () => Math.random() - 0.5), dims: [1, 1, S, D] });
const [q, k, v] = [tensor(), tensor(), tensor()];
const out = new Float32Array(S * D);
globalThis.gc?.();
const before = process.memoryUsage().rss;
let peak = before;
const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
const t0 = performance.now();
engine.attention(q, k, v, { causal: true, out });
const ms = performance.now() - t0;
peak = Math.max(peak, process.memoryUsage().rss);
clearInterval(timer);
const mib = (b) => (b / 2 ** 20).toFixed(1);
console.log(`${engine.backend}, S=${S} D${D} causal: ${ms.toFixed(0)} ms, ${((2 * S * S * D) / ms / 1e6).toFixed(2)} GFLOP/s, peak RSS growth ${mib(peak - before)} MiB beyond inputs and output (${mib(4 * S * D * 4)} MiB, allocated before)`);
engine.dispose();
