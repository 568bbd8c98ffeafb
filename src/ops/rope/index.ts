// The rotary position embedding op (RoPE): each token's head vectors rotated pairwise by angles
// of its position. Its files: plan.ts, js.ts, job.ts and wasm.ts (the kernel's job), reference.ts.
import type { Op } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { rotaryJs } from './js.js';
import type { RotaryPlan } from './plan.js';
import { ropeWasm } from './wasm.js';

export const rotaryOp: Op<RotaryPlan, Tensor> = { name: 'rotary', inputs: (plan) => [plan.x, plan.cos, plan.sin], js: rotaryJs, wasm: ropeWasm };
