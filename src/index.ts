// wasm-attention: transformer attention for Node.js on WebAssembly SIMD kernels, with a pure-JS path.
export { createEngine, createEngineSync, Engine } from './engine.js';
export type { BackendName, EngineOptions, WasmBuild } from './engine.js';
export { AttentionError } from './errors.js';
export type { AttentionErrorCode } from './errors.js';
export { ResidentTensor } from './memory/resident.js';
export type { ResidentType } from './memory/resident.js';
export type { MemoryStats } from './backend.js';
export type { AttentionOptions, AttentionOutput, AttentionRopeOptions } from './ops/attention/plan.js';
export type { AttentionBackwardOptions, AttentionGradients } from './ops/attention-backward/plan.js';
export type { Activation, MatmulOptions } from './ops/matmul/plan.js';
export { PackedWeights, type PackWeightsOptions } from './ops/matmul/packed.js';
export type { SoftmaxOptions } from './ops/softmax/plan.js';
export type { SoftmaxBackwardOptions } from './ops/softmax-backward/plan.js';
export type { RotaryOptions } from './ops/rope/plan.js';
export type { RopeOptions } from './ops/rope/options.js';
export type { Tensor, TensorLike } from './tensor.js';
export { mergeAttention } from './ops/attention/merge.js';
export type { AttentionChunk } from './ops/attention/merge.js';
export { KVCache } from './features/kv-cache.js';
export type { CacheAppendOptions, CacheAttentionOptions, KVCacheOptions } from './features/kv-cache.js';
export { KVPool, KVSequence } from './features/kv-pool.js';
export type { Batcher, KVPoolOptions, KVPoolStats, PoolStepItem, PoolStepOptions } from './features/kv-pool.js';
export type { KVDtype } from './ops/paged-attention/pages.js';
export type { BatcherOptions } from './features/batcher.js';
export type {
  OnnxAttentionAttributes, OnnxAttentionInputs, OnnxAttentionOutputs, OnnxAttentionRequest, OnnxOutputTensor, OnnxTensor,
} from './features/onnx.js';
export type { MultiHeadGradients, MultiHeadOptions, MultiHeadTrainOutput, MultiHeadWeights } from './features/layer.js';
export { MultiHeadSaved } from './features/layer.js';
export { floatsToHalves, halvesToFloats } from './float16.js';
