// The softmax op: along the last axis of scale·x + mask, optionally causal. Its files: plan.ts,
// js.ts, job.ts and wasm.ts (the kernels' job), reference.ts.
import type { Op } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { softmaxJs } from './js.js';
import type { SoftmaxPlan } from './plan.js';
import { softmaxWasm } from './wasm.js';

export const softmaxOp: Op<SoftmaxPlan, Tensor> = { name: 'softmax', inputs: (plan) => [plan.x, plan.mask?.operand], js: softmaxJs, wasm: softmaxWasm };
