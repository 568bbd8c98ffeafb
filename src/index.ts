// wasm-attention: transformer attention for Node.js on WebAssembly SIMD kernels, with a pure-JS path.
export { createEngine, createEngineSync, Engine } from './engine.js';
export type { BackendName, EngineOptions, ResidentTensor } from './engine.js';
export { AttentionError } from './errors.js';
export type { AttentionErrorCode } from './errors.js';
export type { AttentionOptions, MatmulOptions, SoftmaxOptions } from './plan.js';
export type { Tensor, TensorLike } from './tensor.js';
