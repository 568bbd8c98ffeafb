// The attention op: softmax(q·kᵀ·scale + mask) · v along the keys, causal and windowed, GQA.
// Its files: plan.ts (arguments read once and checked), js.ts (plain TypeScript), job.ts and
// wasm.ts (the kernels' job and its encoder), reference.ts (float64 oracle), merge.ts (exact
// merge of key chunks).
import type { Op } from '../../backend.js';
import { attentionJs } from './js.js';
import type { AttentionOutput, AttentionPlan } from './plan.js';
import { attentionWasm } from './wasm.js';

export const attentionOp: Op<AttentionPlan, AttentionOutput> = {
  name: 'attention',
  inputs: (plan) => [plan.q, plan.k, plan.v, plan.mask?.operand],
  js: attentionJs,
  wasm: attentionWasm,
};
