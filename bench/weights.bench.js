// The cost of returnWeights: attention with the weights [B, Hq, Sq, Skv] materialised (by the
// kernel, from the same score tiles) against attention alone, best of 8, one thread, per backend.
//   node --experimental-wasm-relaxed-simd bench/weights.bench.js   (the flag only matters on Node 20)
import { createEngineSync } from '../dist/index.js';
import { buildSupported } from '../dist/backends/wasm-module.js';

const dims = [1, 12, 512, 64];
const t = { data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => Math.random() - 0.5), dims };
const best = (call) => {
  let ms = Infinity;
  for (let i = 0; i < 8; i++) {
    const t0 = performance.now();
    call();
    ms = Math.min(ms, performance.now() - t0);
  }
  return ms;
};
console.log(`node ${process.version}, attention B1 H12 S512 D64, best of 8 ms`);
console.log('| backend | causal | attention | with returnWeights | ratio |');
console.log('|---|---|---:|---:|---:|');
for (const backend of ['wasm-relaxed-simd', 'wasm-simd'].filter(buildSupported)) {
  const engine = createEngineSync({ backend, threads: 1 });
  for (const causal of [false, true]) {
    const plain = best(() => engine.attention(t, t, t, { causal }));
    const weights = best(() => engine.attention(t, t, t, { causal, returnWeights: true }));
    console.log(`| ${backend} | ${causal} | ${plain.toFixed(1)} | ${weights.toFixed(1)} | ${(weights / plain).toFixed(2)} |`);
  }
  engine.dispose();
}
