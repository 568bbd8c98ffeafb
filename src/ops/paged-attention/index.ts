// Paged attention: causal attention of ragged items over histories kept in the KV pool's pages
// (src/features/kv-pool.ts). Its files: plan.ts (the plan the pool builds), js.ts, job.ts and
// wasm.ts (the kernel's job), assembly/f32-attention-paged-simd.ts (the kernel).
import type { Op } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { pagedAttentionJs } from './js.js';
import type { PagedAttentionPlan } from './plan.js';
import { pagedAttentionWasm } from './wasm.js';

export const pagedAttentionOp: Op<PagedAttentionPlan, Tensor[]> = {
  name: 'pagedAttention',
  inputs: (plan) => [...plan.items.map((item) => item.q), ...plan.store.slabs.map((slab) => ({ resident: slab, offset: 0, length: slab.length }))],
  js: pagedAttentionJs,
  wasm: pagedAttentionWasm,
};
