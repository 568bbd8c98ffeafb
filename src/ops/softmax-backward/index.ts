// Softmax's backward op: dx from the forward's output y and its gradient dy. Its files: plan.ts, js.ts,
// job.ts and wasm.ts (the kernel's job), reference.ts.
import type { Op } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { softmaxBackwardJs } from './js.js';
import type { SoftmaxBackwardPlan } from './plan.js';
import { softmaxBackwardWasm } from './wasm.js';

export const softmaxBackwardOp: Op<SoftmaxBackwardPlan, Tensor> = {
  name: 'softmaxBackward', inputs: (plan) => [plan.y, plan.dy], js: softmaxBackwardJs, wasm: softmaxBackwardWasm,
};
