// Soak: many calls of mixed shapes and ops on one engine; prints WASM memory (reserved, in use) and
// process RSS as it goes. WASM memory must stop growing after warm-up and RSS stay flat.
//   npm run soak            (100 000 calls)      node bench/soak.js --calls 20000 --threads 2
import { parseArgs } from 'node:util';
import { createEngineSync } from '../dist/index.js';

const { values } = parseArgs({ options: { calls: { type: 'string', default: '100000' }, threads: { type: 'string', default: '2' } } });
const calls = Number(values.calls);
const engine = createEngineSync({ threads: Number(values.threads) });
let seed = 99;
const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
const tensor = (dims) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, () => random() - 0.5), dims });
const mib = (bytes) => (bytes / 2 ** 20).toFixed(1);
console.log(`${engine.backend}, ${engine.threads} threads, ${calls} calls`);
console.log('| calls | WASM reserved MiB | WASM in use MiB | RSS MiB |');
console.log('|---:|---:|---:|---:|');
const t0 = performance.now();
for (let i = 1; i <= calls; i++) {
  const seq = 1 + Math.floor(random() * 96);
  const kv = 1 + Math.floor(random() * 160);
  const d = [8, 16, 64, 80, 128][i % 5];
  switch (i % 4) {
    case 0:
      engine.attention(tensor([1, 2, seq, d]), tensor([1, 1, kv, d]), tensor([1, 1, kv, d]), { causal: i % 3 === 0 });
      break;
    case 1:
      engine.matmul(tensor([seq, d]), tensor([d, kv]));
      break;
    case 2:
      engine.softmax(tensor([seq, kv]), { causal: true });
      break;
    default: {
      const cache = engine.kvCache({ batch: 1, kvHeads: 1, headDim: d, maxSeq: kv + 1 });
      cache.append(tensor([1, 1, kv, d]), tensor([1, 1, kv, d]));
      cache.attention(tensor([1, 2, 1, d]));
      cache.dispose();
    }
  }
  if (i % Math.max(1, Math.floor(calls / 10)) === 0) {
    const { reservedBytes, usedBytes } = engine.stats();
    console.log(`| ${i} | ${mib(reservedBytes)} | ${mib(usedBytes)} | ${mib(process.memoryUsage().rss)} |`);
  }
}
console.log(`${((performance.now() - t0) / 1000).toFixed(1)} s`);
engine.dispose();
