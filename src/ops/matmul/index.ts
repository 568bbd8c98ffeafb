// The matmul op: [..., M, K] · [..., K, N] -> [..., M, N], batch dims broadcast, b optionally
// transposed. Its files: plan.ts, js.ts, job.ts and wasm.ts (the kernels' job), reference.ts.
import type { Op } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { matmulJs } from './js.js';
import type { MatmulPlan } from './plan.js';
import { matmulWasm } from './wasm.js';

export const matmulOp: Op<MatmulPlan, Tensor> = { name: 'matmul', inputs: (plan) => [plan.a, plan.b, plan.bias], js: matmulJs, wasm: matmulWasm };
