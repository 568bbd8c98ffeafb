// What an engine costs besides its calls: creating one (once the module is compiled), the RSS of
// its worker threads, and the WASM memory a big call leaves reserved until the engine is disposed.
//   node --expose-gc bench/engine-cost.bench.js
import { setTimeout as sleep } from 'node:timers/promises';
import { createEngineSync } from '../dist/index.js';

const mib = (bytes) => (bytes / 2 ** 20).toFixed(1);
const rss = async () => {
  globalThis.gc?.();
  await sleep(200);
  return process.memoryUsage().rss;
};

createEngineSync({ threads: 1 }).dispose(); // compiles the module once
let best = Infinity;
for (let i = 0; i < 20; i++) {
  const t0 = performance.now();
  const engine = createEngineSync({ threads: 1 });
  best = Math.min(best, performance.now() - t0);
  engine.dispose();
}
console.log(`creating an engine (module compiled, threads 1): best of 20 ${best.toFixed(2)} ms`);

const before = await rss();
const pooled = createEngineSync({ threads: 4 });
const q = { data: new Float32Array(4 * 256 * 32).fill(0.5), dims: [1, 4, 256, 32] };
await pooled.attentionAsync(q, q, q); // every worker has started
await sleep(500);
console.log(`4 worker threads: RSS ${mib(before)} -> ${mib(await rss())} MiB (${mib(((await rss()) - before) / 4)} MiB per thread)`);
pooled.dispose();

let engine = createEngineSync({ threads: 1 });
const n = Number(process.argv[2] ?? 20000);
engine.softmax({ data: new Float32Array(n * n), dims: [n, n] });
console.log(`after one ${n} x ${n} softmax: WASM reserved ${mib(engine.stats().reservedBytes)} MiB, in use ${mib(engine.stats().usedBytes)} MiB`);
const kept = await rss();
engine.dispose();
engine = undefined; // the last reference: V8 may now collect the engine's WebAssembly.Memory
await sleep(500);
console.log(`RSS with the engine ${mib(kept)} MiB; after dispose, dropping it and a collection ${mib(await rss())} MiB`);
