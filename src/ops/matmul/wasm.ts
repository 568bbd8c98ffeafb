// Matmul on the wasm kernels: a, b and the per-matrix offsets laid out in WASM memory as a job.
import type { Encoded, WasmCall, WasmOp } from '../../backend.js';
import { HEADER } from '../../job.js';
import { tensorOutput } from '../output.js';
import type { Tensor } from '../../tensor.js';
import { ACTIVATION_CODE, GEMM_M_CHUNK, GEMM_N_CHUNK, GEMM_N_CHUNK_SKINNY, MATMUL_JOB } from './job.js';
import { packedLength } from './packed.js';
import { type MatmulPlan, SKINNY_ROWS } from './plan.js';

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
    // the kernels read subnormals of a as zero themselves; b's are flushed as it is packed
    job[J.a] = call.stage(plan.a, 'a.data');
    const b = call.stage(plan.b, 'b.data');
    const size = matrices * m * n;
    const outPtr = call.output(plan.out, size);
    job[J.c] = outPtr;
    job[J.bias] = plan.bias ? call.stage(plan.bias, 'options.bias') : 0;
    job[J.activation] = plan.activation ? ACTIVATION_CODE[plan.activation] : 0;
    job[J.transA] = plan.transposeA ? 1 : 0;
    // Every b matrix is packed once here, on the calling thread, into the panels the items read (packed
    // weights already are): items then share them instead of each packing its own column block again.
    const panels = new Map<number, number>();
    for (const offset of plan.bOffsets) {
      if (panels.has(offset)) continue;
      if (plan.packed) panels.set(offset, b);
      else if (k === 0) panels.set(offset, 0);
      else {
        const to = call.alloc(4 * packedLength(k, n));
        call.kernels.f32_pack_panels(b + 4 * offset, plan.transposeB ? k : n, plan.transposeB ? 1 : 0, k, n, to);
        panels.set(offset, to);
      }
    }
    job[J.offsets] = call.alloc(8 * matrices);
    const i32 = call.i32;
    const base = job[J.offsets] >>> 2;
    for (let i = 0; i < matrices; i++) {
      i32[base + 2 * i] = plan.aOffsets[i];
      i32[base + 2 * i + 1] = panels.get(plan.bOffsets[i])!;
    }
    job[J.mChunk] = GEMM_M_CHUNK;
    // a skinny product's columns are independent sums over the whole K: cut finer for several threads
    job[J.nChunk] = m <= SKINNY_ROWS && call.threads > 1 ? GEMM_N_CHUNK_SKINNY : GEMM_N_CHUNK;
    job[J.mChunks] = Math.ceil(m / GEMM_M_CHUNK);
    job[J.nChunks] = Math.ceil(n / job[J.nChunk]);
    job[HEADER.items] = matrices * job[J.mChunks] * job[J.nChunks];
    return { job, scratchBytes: call.kernels.f32_gemm_packed_scratch_bytes(Math.min(m, GEMM_M_CHUNK), k), outPtr, size };
  },

  finish: tensorOutput,
};
