// The README's quick start, as it is there: attention with GQA and a causal mask, sync and async,
// checked against the float64 reference.   node examples/quick-start/index.js
import { createEngine } from 'wasm-attention';
import { referenceAttention } from 'wasm-attention/reference';

const engine = await createEngine(); // the fastest build this runtime runs
const random = (dims) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b) }, () => Math.random() - 0.5), dims });
const q = random([1, 12, 128, 64]); // [batch, query heads, queries, head dim]
const k = random([1, 4, 128, 64]); //  [batch, kv heads, keys, head dim]: 4 kv heads for 12 query heads (GQA)
const v = random([1, 4, 128, 64]);

const y = engine.attention(q, k, v, { causal: true }); // { data: Float32Array, dims: [1, 12, 128, 64] }
const z = await engine.attentionAsync(q, k, v, { causal: true }); // on the worker threads, same bits
const check = referenceAttention(q, k, v, { causal: true }); // float64

let error = 0;
for (let i = 0; i < y.data.length; i++) error = Math.max(error, Math.abs(y.data[i] - check.data[i]));
console.log(`backend ${engine.backend}, ${engine.threads} threads`);
console.log(`y dims [${y.dims}], async result identical: ${y.data.every((x, i) => x === z.data[i])}`);
console.log(`max difference to the float64 reference: ${error.toExponential(1)}`);
engine.dispose(); // ends the worker threads
