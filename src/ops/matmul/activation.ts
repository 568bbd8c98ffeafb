// The activations of a packed matmul's epilogue, in float64: what the js backend and the reference
// compute (the wasm kernels' float32 versions are in assembly/f32-gemm-simd.ts).
import type { Activation } from './plan.js';

const GELU_C = Math.sqrt(2 / Math.PI);

/** act(x): relu max(x, 0); gelu_tanh x·½(1 + tanh(√(2/π)(x + 0.044715x³))); silu x·σ(x). */
export function activate(x: number, activation: Activation | undefined): number {
  switch (activation) {
    case undefined:
      return x;
    case 'relu':
      return Number.isNaN(x) ? x : Math.max(x, 0);
    case 'gelu_tanh':
      return 0.5 * x * (1 + Math.tanh(GELU_C * (x + 0.044715 * x * x * x)));
    case 'silu':
      return x / (1 + Math.exp(-x));
  }
}
