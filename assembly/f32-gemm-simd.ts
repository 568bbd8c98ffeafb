// C[M x N] = A[M x K] · B[K x N]   (B given as Bᵀ [N x K] when transB)
// Row-major, strides in elements. Blocked for the caches: for each KC x NC block of B, pack it into
// 8-wide panels (scratch), then sweep the rows of A in tiles of MR rows, each tile against every panel.
// The A tile (MR x KC floats) stays in L1 while the panels (KC x NC floats) stream from L2.
// Subnormal values of A and B are read as 0, so no multiply sees one (x86 is many times slower on them);
// A and B themselves are not modified. B is flushed as it is packed. A is read in place, after one scan
// of it finds no subnormal; otherwise each A tile is copied into scratch with its subnormals flushed.
import { gemm_tile, GEMM_MR } from './f32-gemm-tile';
import { f32_pack_panels } from './f32-pack-panels-simd';
import { daz1, daz4 } from './f32-vmath-simd';

export const GEMM_KC: i32 = 256;
export const GEMM_NC: i32 = 256;

/** Scratch bytes that f32_gemm needs (one packed KC x NC block of B, and one MR x KC tile of A for an A with subnormals). */
export function f32_gemm_scratch_bytes(): i32 {
  return (GEMM_KC * GEMM_NC + GEMM_MR * GEMM_KC) * 4;
}

/** Whether some A[i][p] (i < m, p < k, rows lda apart) is subnormal (nonzero with |x| < 2^-126). */
function hasSubnormal(a: usize, lda: i32, m: i32, k: i32): bool {
  const vecEnd = k & ~3;
  const one = i32x4.splat(1), below = i32x4.splat(0x007fffff);
  for (let i = 0; i < m; i++) {
    const row = a + ((<usize>i * lda) << 2);
    let found = i32x4.splat(0);
    // |x| bits - 1 < 0x7fffff (unsigned) exactly for the subnormals: 0 wraps around to 0xffffffff
    for (let p = 0; p < vecEnd; p += 4) {
      const bits = v128.and(v128.load(row + (<usize>p << 2)), i32x4.splat(0x7fffffff));
      found = v128.or(found, i32x4.lt_u(i32x4.sub(bits, one), below));
    }
    if (v128.any_true(found)) return true;
    for (let p = vecEnd; p < k; p++) {
      const bits = reinterpret<u32>(load<f32>(row + (<usize>p << 2))) & 0x7fffffff;
      if (bits - 1 < 0x007fffff) return true;
    }
  }
  return false;
}

/** dst row i (kc floats apart) = src row i (lda apart) with subnormals as 0, for i < mr, kc columns. */
function copyTileFlushed(src: usize, lda: i32, mr: i32, kc: i32, dst: usize): void {
  const vecEnd = kc & ~3;
  for (let i = 0; i < mr; i++) {
    const s = src + ((<usize>i * lda) << 2);
    const d = dst + ((<usize>i * kc) << 2);
    let p = 0;
    for (; p < vecEnd; p += 4) v128.store(d + (<usize>p << 2), daz4(v128.load(s + (<usize>p << 2))));
    for (; p < kc; p++) store<f32>(d + (<usize>p << 2), daz1(load<f32>(s + (<usize>p << 2))));
  }
}

/** Full GEMM; scratch must hold f32_gemm_scratch_bytes(). C need not be initialised. */
export function f32_gemm(m: i32, n: i32, k: i32, a: usize, lda: i32, b: usize, ldb: i32, transB: bool, c: usize, ldc: i32, scratch: usize): void {
  if (k == 0) {
    for (let i = 0; i < m; i++) memory.fill(c + ((<usize>i * ldc) << 2), 0, (<usize>n) << 2);
    return;
  }
  const flushA = hasSubnormal(a, lda, m, k);
  const aCopy = scratch + ((<usize>GEMM_KC * GEMM_NC) << 2);
  for (let k0 = 0; k0 < k; k0 += GEMM_KC) {
    const kc = min(GEMM_KC, k - k0);
    for (let n0 = 0; n0 < n; n0 += GEMM_NC) {
      const nc = min(GEMM_NC, n - n0);
      const bBlock = transB ? b + ((<usize>n0 * ldb + k0) << 2) : b + ((<usize>k0 * ldb + n0) << 2);
      f32_pack_panels(bBlock, ldb, transB, kc, nc, scratch);
      for (let m0 = 0; m0 < m; m0 += GEMM_MR) {
        const mr = min(GEMM_MR, m - m0);
        let aTile = a + ((<usize>m0 * lda + k0) << 2);
        let aStride = lda;
        if (flushA) {
          copyTileFlushed(aTile, lda, mr, kc, aCopy);
          aTile = aCopy;
          aStride = kc;
        }
        const cRow = c + ((<usize>m0 * ldc + n0) << 2);
        for (let p = 0; p < nc; p += 8) {
          gemm_tile(mr, min(8, nc - p), kc, aTile, aStride, scratch + (<usize>p * kc << 2), cRow + (<usize>p << 2), ldc, k0 > 0);
        }
      }
    }
  }
}
