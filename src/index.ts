// wasm-attention: transformer attention for Node.js on WebAssembly SIMD kernels, with a pure-JS path.
export { createEngine, createEngineSync, Engine } from './engine.js';
export type { AttentionOutput, BackendName, EngineOptions, ResidentTensor } from './engine.js';
export type { WasmBuild } from './wasm-module.js';
export { AttentionError } from './errors.js';
export type { AttentionErrorCode } from './errors.js';
export type { AttentionOptions, MatmulOptions, SoftmaxOptions } from './plan.js';
export type { Tensor, TensorLike } from './tensor.js';
export { mergeAttention } from './merge.js';
export type { AttentionChunk } from './merge.js';
export { KVCache } from './kv-cache.js';
export type { CacheAttentionOptions, KVCacheOptions } from './kv-cache.js';
export type { OnnxAttentionAttributes, OnnxAttentionInputs, OnnxAttentionOutputs, OnnxOutputTensor, OnnxTensor } from './onnx.js';
export type { MultiHeadOptions, MultiHeadWeights } from './layer.js';
export { floatsToHalves, halvesToFloats } from './float16.js';
