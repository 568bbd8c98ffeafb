// Attention's backward op: the gradients of q, k and v from the forward's output, its gradient and
// log-sum-exp (FlashAttention-2's, memory O(N)). Its files: plan.ts (arguments read once and
// checked), js.ts (plain TypeScript), job.ts and wasm.ts (the kernels' job and its encoder),
// reference.ts (float64 oracle, by the chain rule over the materialised weights).
import type { Op } from '../../backend.js';
import { attentionBackwardJs } from './js.js';
import type { AttentionBackwardPlan, AttentionGradients } from './plan.js';
import { attentionBackwardWasm } from './wasm.js';

export const attentionBackwardOp: Op<AttentionBackwardPlan, AttentionGradients> = {
  name: 'attentionBackward',
  inputs: (plan) => [plan.forward.q, plan.forward.k, plan.forward.v, plan.forward.mask?.operand, plan.output, plan.gradOutput, plan.logSumExp],
  js: attentionBackwardJs,
  wasm: attentionBackwardWasm,
};
