// Softmax backward on the wasm kernels: y, dy and dx laid out as a job of row blocks.
import type { Encoded, WasmCall, WasmOp } from '../../backend.js';
import { HEADER } from '../../job.js';
import type { Tensor } from '../../tensor.js';
import { tensorOutput } from '../output.js';
import { SOFTMAX_BACKWARD_JOB, SOFTMAX_BACKWARD_ROW_CHUNK } from './job.js';
import type { SoftmaxBackwardPlan } from './plan.js';

const J = SOFTMAX_BACKWARD_JOB.at;

export const softmaxBackwardWasm: WasmOp<SoftmaxBackwardPlan, Tensor> = {
  layout: SOFTMAX_BACKWARD_JOB,

  encode(plan: SoftmaxBackwardPlan, call: WasmCall): Encoded {
    const job = SOFTMAX_BACKWARD_JOB.create();
    job[J.y] = call.stage(plan.y, 'y.data');
    job[J.dy] = call.stage(plan.dy, 'dy.data');
    const size = plan.rows * plan.cols;
    const outPtr = call.output(plan.out, size);
    job[J.dx] = outPtr;
    job[J.rows] = plan.rows;
    job[J.cols] = plan.cols;
    job[J.scale] = plan.scale;
    job[J.rowChunk] = SOFTMAX_BACKWARD_ROW_CHUNK;
    job[HEADER.items] = Math.ceil(plan.rows / SOFTMAX_BACKWARD_ROW_CHUNK);
    return { job, scratchBytes: 0, outPtr, size };
  },

  finish: tensorOutput,
};
