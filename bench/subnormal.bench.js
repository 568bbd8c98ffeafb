// Attention and softmax on normal inputs against the same calls on subnormal inputs (|x| ~ 1e-39),
// best of 8: the kernels read subnormals as zero, since x86 is many times slower on them otherwise.
//   node bench/subnormal.bench.js
import { createEngineSync } from '../dist/index.js';

const engine = createEngineSync({ threads: 1 });
const tensor = (scale) => ({ data: Float32Array.from({ length: 12 * 256 * 64 }, () => (Math.random() - 0.5) * scale), dims: [1, 12, 256, 64] });
const inputs = { normal: tensor(1), subnormal: tensor(1e-39) };
for (const round of [1, 2]) {
  for (const [name, t] of Object.entries(inputs)) {
    let best = Infinity;
    for (let i = 0; i < 8; i++) {
      const t0 = performance.now();
      engine.attention(t, t, t);
      best = Math.min(best, performance.now() - t0);
    }
    console.log(`round ${round}, ${engine.backend}, attention B1 H12 S256 D64, ${name} inputs: ${best.toFixed(2)} ms`);
    const x = { data: t.data, dims: [192, 1024] };
    best = Infinity;
    for (let i = 0; i < 8; i++) {
      const t0 = performance.now();
      engine.softmax(x, { scale: 0.5 });
      best = Math.min(best, performance.now() - t0);
    }
    console.log(`round ${round}, ${engine.backend}, softmax 192x1024 scale 0.5, ${name} inputs: ${best.toFixed(2)} ms`);
  }
}
engine.dispose();
