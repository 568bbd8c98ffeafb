// C[M x N] = A[M x K] · B[K x N]   (B given as Bᵀ [N x K] when transB)
// Row-major, strides in elements. Blocked for the caches: for each KC x NC block of B, pack it into
// 8-wide panels (scratch), then sweep the rows of A in tiles of GEMM_MR rows, each tile packed
// (interleaved, f32_pack_rows) against every panel. The A tile (GEMM_MR x KC floats) stays in L1 while
// the panels (KC x NC floats) stream from L2.
// Subnormal values of A and B are read as 0, so no multiply sees one (x86 is many times slower on them):
// both are flushed as they are packed. A and B themselves are not modified.
import { gemm_packed, GEMM_MR, GEMM_TILE_BYTES } from './f32-gemm-tile';
import { f32_pack_panels, f32_pack_rows } from './f32-pack-panels-simd';

export const GEMM_KC: i32 = 256;
export const GEMM_NC: i32 = 256;

/** Scratch bytes that f32_gemm needs (one packed KC x NC block of B, one packed GEMM_MR x KC tile of A and
 * the micro-kernel's accumulators). */
export function f32_gemm_scratch_bytes(): i32 {
  return (GEMM_KC * GEMM_NC + GEMM_MR * GEMM_KC) * 4 + GEMM_TILE_BYTES;
}

/** Full GEMM; scratch must hold f32_gemm_scratch_bytes(). C need not be initialised. */
export function f32_gemm(m: i32, n: i32, k: i32, a: usize, lda: i32, b: usize, ldb: i32, transB: bool, c: usize, ldc: i32, scratch: usize): void {
  if (k == 0) {
    for (let i = 0; i < m; i++) memory.fill(c + ((<usize>i * ldc) << 2), 0, (<usize>n) << 2);
    return;
  }
  const aPacked = scratch + ((<usize>GEMM_KC * GEMM_NC) << 2);
  const tile = aPacked + ((<usize>GEMM_MR * GEMM_KC) << 2);
  for (let k0 = 0; k0 < k; k0 += GEMM_KC) {
    const kc = min(GEMM_KC, k - k0);
    for (let n0 = 0; n0 < n; n0 += GEMM_NC) {
      const nc = min(GEMM_NC, n - n0);
      const bBlock = transB ? b + ((<usize>n0 * ldb + k0) << 2) : b + ((<usize>k0 * ldb + n0) << 2);
      f32_pack_panels(bBlock, ldb, transB, kc, nc, scratch);
      for (let m0 = 0; m0 < m; m0 += GEMM_MR) {
        const mr = min(GEMM_MR, m - m0);
        f32_pack_rows(a + ((<usize>m0 * lda + k0) << 2), lda, mr, kc, aPacked);
        const cRow = c + ((<usize>m0 * ldc + n0) << 2);
        for (let p = 0; p < nc; p += 8) {
          gemm_packed(mr, min(8, nc - p), kc, aPacked, scratch + (<usize>p * kc << 2), cRow + (<usize>p << 2), ldc, k0 > 0, tile);
        }
      }
    }
  }
}
