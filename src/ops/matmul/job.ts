// Matmul as a job (see ../../job.ts): an item is one (matrix, GEMM_M_CHUNK rows, GEMM_N_CHUNK
// columns) block of c, computed by f32_gemm_packed over the whole K from b's panels (a's matrices read
// as [M, K] or, transposed, [K, M]): packed weights as
// they are (one matrix then, a's batch matrices as its rows, with bias and activation), any other b
// packed once by the encoder. offsets holds, per matrix, a's element offset and its panels' address.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const MATMUL_JOB = jobLayout(2, ['m', 'n', 'k', 'a', 'c', 'offsets', 'mChunk', 'nChunk', 'mChunks', 'nChunks', 'bias', 'activation', 'transA'] as const);
const J = MATMUL_JOB.at;

export const GEMM_M_CHUNK = 128;
export const GEMM_N_CHUNK = 256; // a multiple of the packed weights' 8-column panels
/** Columns per item of a skinny product (M <= SKINNY_ROWS) on several threads: finer, so that a GEMV
 * over a few hundred columns still spreads over them (its columns are independent sums over the whole
 * K, so the bits do not depend on the cut; one thread keeps GEMM_N_CHUNK, fewer items to run). */
export const GEMM_N_CHUNK_SKINNY = 64;

/** The kernels' activation codes (assembly/f32-gemm-simd.ts). */
export const ACTIVATION_CODE = { relu: 1, gelu_tanh: 2, silu: 3 } as const;

/** Runs one matmul item; the per-matrix [a offset, b offset] pairs are i32s at job.offsets. */
export const runMatmulItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number, scratch: number, i32: Int32Array): void => {
  const nChunks = job[J.nChunks];
  const mChunks = job[J.mChunks];
  const nc = item % nChunks;
  const rest = (item - nc) / nChunks;
  const mc = rest % mChunks;
  const matrix = (rest - mc) / mChunks;
  const m = job[J.m], n = job[J.n], k = job[J.k];
  const m0 = mc * job[J.mChunk];
  const n0 = nc * job[J.nChunk];
  const offsets = job[J.offsets] >>> 2;
  const aOffset = i32[offsets + 2 * matrix];
  const panels = i32[offsets + 2 * matrix + 1];
  // a's matrix is [M, K] (rows m0.. start at row m0), or [K, M] transposed (they start at column m0)
  const transA = job[J.transA];
  kernels.f32_gemm_packed(
    Math.min(job[J.mChunk], m - m0), Math.min(job[J.nChunk], n - n0), k,
    job[J.a] + 4 * (aOffset + (transA ? m0 : m0 * k)), transA ? m : k, transA, panels + 4 * n0 * k,
    job[J.c] + 4 * (matrix * m * n + m0 * n + n0), n, job[J.bias] === 0 ? 0 : job[J.bias] + 4 * n0, job[J.activation], scratch,
  );
};
