// Softmax on the wasm kernels: x, the mask and its per-matrix offsets laid out as a job.
import type { Encoded, WasmCall, WasmOp } from '../../backend.js';
import { HEADER } from '../../job.js';
import { tensorOutput } from '../output.js';
import type { Tensor } from '../../tensor.js';
import { MASK_KIND } from '../../backends/kernels.js';
import { SOFTMAX_JOB, SOFTMAX_ROW_CHUNK } from './job.js';
import type { SoftmaxPlan } from './plan.js';

const J = SOFTMAX_JOB.at;

export const softmaxWasm: WasmOp<SoftmaxPlan, Tensor> = {
  layout: SOFTMAX_JOB,

  encode(plan: SoftmaxPlan, call: WasmCall): Encoded {
    const { matrices, rows, cols, mask } = plan;
    const job = SOFTMAX_JOB.create();
    job[J.x] = call.stage(plan.x, 'x.data');
    const size = matrices * rows * cols;
    const outPtr = call.output(plan.out, size);
    job[J.out] = outPtr;
    job[J.rows] = rows;
    job[J.cols] = cols;
    job[J.scale] = plan.scale;
    job[J.mask] = mask ? call.stage(mask.operand, 'options.mask.data') : 0;
    job[J.maskKind] = mask ? MASK_KIND[mask.kind] : 0;
    job[J.maskBytes] = mask?.kind === 'bool' ? 1 : 4;
    job[J.maskRow] = plan.maskRowStride;
    job[J.causal] = plan.causal ? 1 : 0;
    if (mask) {
      job[J.maskOffsets] = call.alloc(4 * matrices);
      call.i32.set(plan.maskOffsets, job[J.maskOffsets] >>> 2);
    }
    job[J.rowChunk] = SOFTMAX_ROW_CHUNK;
    job[J.rowChunks] = Math.ceil(rows / SOFTMAX_ROW_CHUNK);
    job[HEADER.items] = matrices * job[J.rowChunks];
    return { job, scratchBytes: 0, outPtr, size };
  },

  finish: tensorOutput,
};
