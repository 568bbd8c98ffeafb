// Matmul on the wasm kernels: a, b and the per-matrix offsets laid out in WASM memory as a job.
import type { Encoded, WasmCall, WasmOp } from '../../backend.js';
import { HEADER } from '../../job.js';
import { tensorOutput } from '../output.js';
import type { Tensor } from '../../tensor.js';
import { ACTIVATION_CODE, GEMM_M_CHUNK, GEMM_N_CHUNK, MATMUL_JOB } from './job.js';
import type { MatmulPlan } from './plan.js';

const J = MATMUL_JOB.at;

export const matmulWasm: WasmOp<MatmulPlan, Tensor> = {
  layout: MATMUL_JOB,

  encode(plan: MatmulPlan, call: WasmCall): Encoded {
    const { m, n, k } = plan;
    const matrices = plan.aOffsets.length;
    const job = MATMUL_JOB.create();
    job[J.m] = m;
    job[J.n] = n;
    job[J.k] = k;
    // f32_gemm reads subnormals of A and B as zero itself, wherever they live (packed weights were
    // flushed when packed)
    job[J.a] = call.stage(plan.a, 'a.data');
    job[J.b] = call.stage(plan.b, 'b.data');
    const size = matrices * m * n;
    const outPtr = call.output(plan.out, size);
    job[J.c] = outPtr;
    job[J.transB] = plan.transposeB ? 1 : 0;
    job[J.packed] = plan.packed ? 1 : 0;
    job[J.bias] = plan.bias ? call.stage(plan.bias, 'options.bias') : 0;
    job[J.activation] = plan.activation ? ACTIVATION_CODE[plan.activation] : 0;
    job[J.offsets] = call.alloc(8 * matrices);
    const i32 = call.i32;
    const base = job[J.offsets] >>> 2;
    for (let i = 0; i < matrices; i++) {
      i32[base + 2 * i] = plan.aOffsets[i];
      i32[base + 2 * i + 1] = plan.bOffsets[i];
    }
    job[J.mChunk] = GEMM_M_CHUNK;
    job[J.nChunk] = GEMM_N_CHUNK;
    job[J.mChunks] = Math.ceil(m / GEMM_M_CHUNK);
    job[J.nChunks] = Math.ceil(n / GEMM_N_CHUNK);
    job[HEADER.items] = matrices * job[J.mChunks] * job[J.nChunks];
    const scratchBytes = plan.packed ? call.kernels.f32_gemm_packed_scratch_bytes(k) : call.kernels.f32_gemm_scratch_bytes();
    return { job, scratchBytes, outPtr, size };
  },

  finish: tensorOutput,
};
