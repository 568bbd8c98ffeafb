// The float64 references of every op, exported as `wasm-attention/reference`: the oracles every
// fast path is tested against. Each lives beside its op (src/ops/<op>/reference.ts).
export type { ReferenceTensor } from './ops/reference-math.js';
export { referenceAttention } from './ops/attention/reference.js';
export type { ReferenceAttention, ReferenceAttentionOptions } from './ops/attention/reference.js';
export { referenceAttentionBackward } from './ops/attention-backward/reference.js';
export type { ReferenceAttentionGradients } from './ops/attention-backward/reference.js';
export { referenceMultiHeadAttention, referenceMultiHeadAttentionBackward } from './features/layer-reference.js';
export type { ReferenceLayerGradients, ReferenceLayerOptions, ReferenceLayerWeights } from './features/layer-reference.js';
export { referenceMatmul } from './ops/matmul/reference.js';
export { referenceSoftmax } from './ops/softmax/reference.js';
export { referenceSoftmaxBackward } from './ops/softmax-backward/reference.js';
export { referenceRotary } from './ops/rope/reference.js';
export type { ReferenceRotaryOptions } from './ops/rope/reference.js';
export { quantizeKV } from './ops/paged-attention/reference.js';
export type { KVDtype } from './ops/paged-attention/reference.js';
