// onnxruntime tensors in and out: wasm-attention takes ort Tensors as they are ({ data, dims } with a
// type), and its results wrap straight back into ort Tensors for the next onnxruntime session.
// Run: node examples/ort-interop/index.js
import { Tensor } from 'onnxruntime-common';
import { createEngine, floatsToHalves } from 'wasm-attention';

export async function main() {
  const engine = await createEngine();
  const [B, H, S, D] = [1, 4, 6, 8];
  const values = (n, phase) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + phase));
  const q = new Tensor('float32', values(B * H * S * D, 0), [B, H, S, D]);
  const k = new Tensor('float32', values(B * H * S * D, 1), [B, H, S, D]);
  const v = new Tensor('float32', values(B * H * S * D, 2), [B, H, S, D]);
  const mask = new Tensor('bool', Uint8Array.from({ length: S * S }, (_, i) => (i % S <= Math.floor(i / S) ? 1 : 0)), [S, S]);

  // 1. plain attention on ort tensors, the result back into an ort Tensor
  const y = engine.attention(q, k, v, { mask });
  const yTensor = new Tensor('float32', y.data, y.dims);

  // 2. the ONNX operator itself on float16 tensors, as onnxruntime holds them (Uint16Array bits)
  const toHalf = (t) => new Tensor('float16', floatsToHalves(t.data), t.dims);
  const { Y } = engine.onnxAttention({ Q: toHalf(q), K: toHalf(k), V: toHalf(v), attn_mask: mask });
  const yHalf = new Tensor(Y.type, Y.data, Y.dims);

  console.log(`attention -> ort Tensor ${yTensor.type} [${yTensor.dims}]; onnxAttention float16 -> ort Tensor ${yHalf.type} [${yHalf.dims}]`);
  engine.dispose();
  return { yTensor, yHalf };
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
