// RoPE on the wasm kernels: x and the cos/sin tables laid out as a job.
import type { Encoded, WasmCall, WasmOp } from '../../backend.js';
import { HEADER } from '../../job.js';
import { tensorOutput } from '../output.js';
import type { Tensor } from '../../tensor.js';
import { ROPE_JOB, ROPE_ROW_CHUNK } from './job.js';
import type { RotaryPlan } from './plan.js';

const J = ROPE_JOB.at;

export const ropeWasm: WasmOp<RotaryPlan, Tensor> = {
  layout: ROPE_JOB,

  encode(plan: RotaryPlan, call: WasmCall): Encoded {
    const { batch, heads, seq, headDim } = plan;
    const job = ROPE_JOB.create();
    const size = batch * heads * seq * headDim;
    job[J.x] = call.stage(plan.x, 'x.data');
    const outPtr = call.output(plan.out, size);
    job[J.out] = outPtr;
    job[J.cos] = call.stage(plan.cos, 'cos');
    job[J.sin] = call.stage(plan.sin, 'sin');
    job[J.heads] = heads;
    job[J.seq] = seq;
    job[J.headDim] = headDim;
    job[J.dims] = plan.dims;
    job[J.strideB] = plan.strideB;
    job[J.strideH] = plan.strideH;
    job[J.strideS] = plan.strideS;
    job[J.tableBatchStride] = plan.tableBatchStride;
    job[J.interleaved] = plan.interleaved ? 1 : 0;
    job[J.rowChunk] = ROPE_ROW_CHUNK;
    job[J.rowChunks] = Math.ceil(seq / ROPE_ROW_CHUNK);
    job[HEADER.items] = size === 0 ? 0 : batch * heads * job[J.rowChunks];
    return { job, scratchBytes: 0, outPtr, size };
  },

  finish: tensorOutput,
};
