// C[M x N] = act(A[M x K] · B[K x N] + bias), row-major, strides in elements (A given as [M, K], or as
// Aᵀ [K, M] with transA: a weight gradient xᵀ·dy without a transposed copy), with B packed beforehand
// (f32_pack_panels over the whole K: panel p, columns 8p..8p+7, is K x 8 contiguous floats at
// b + 32·p·K bytes): packed weights (engine.packWeights), read as they are on every call, or any other
// B, packed once per call by the TypeScript side before the items run. A call packs only its A tiles
// (interleaved, f32_pack_rows or f32_pack_cols: up to GEMM_MR rows) and runs the micro-kernel of exactly that many rows
// against each panel. The bias and the activation are applied to each finished row.
//
// Subnormal values of A and B are read as 0, so no multiply sees one (x86 is many times slower on them):
// both are flushed as they are packed. A and B themselves are not modified.
import { gemm_packed_exact, GEMM_MR, GEMM_TILE_BYTES } from './f32-gemm-tile';
import { f32_pack_cols, f32_pack_rows } from './f32-pack-panels-simd';
import { f32_gemv_1x8c4 } from './f32-gemv-1x8c4-simd';
import { expv } from './f32-vmath-simd';

export const GEMM_KC: i32 = 256;
/** Up to this many rows f32_gemm_packed packs all of A and streams every panel once (see there). */
const SKINNY_ROWS: i32 = 16;

/** Activations f32_gemm_packed applies after the bias (the codes the TypeScript side passes). */
export const ACTIVATION_NONE: i32 = 0;
export const ACTIVATION_RELU: i32 = 1;
export const ACTIVATION_GELU_TANH: i32 = 2;
export const ACTIVATION_SILU: i32 = 3;

/** Floats of packed A that f32_gemm_packed keeps for m rows and a K of k: all of a skinny A, else one
 * tile's K block. */
function packedFloats(m: i32, k: i32): i32 {
  return max(GEMM_MR * GEMM_KC, min(m, SKINNY_ROWS) * k);
}

/** Scratch bytes that f32_gemm_packed needs for up to m rows and a K of k. */
export function f32_gemm_packed_scratch_bytes(m: i32, k: i32): i32 {
  return packedFloats(m, k) * 4 + GEMM_TILE_BYTES;
}

/**
 * Rows of tile i when m rows go in `tiles` tiles of at most GEMM_MR: as even as can be (8 rows as 4 + 4,
 * not 6 + 2: a 2-row tile waits on its multiply-add latency, so two 4-row tiles finish sooner). A row's
 * sums run over k in the same order in any tile, so the split does not change the bits.
 */
// @ts-ignore: decorator
@inline function tileRows(m: i32, tiles: i32, i: i32): i32 {
  return m / tiles + (i < m % tiles ? 1 : 0);
}

/** Packs rows m0 .. m0+mr-1, columns k0 .. k0+kc-1 of A (see f32_gemm_packed) mr wide into dst. */
function packA(a: usize, lda: i32, transA: bool, m0: i32, k0: i32, mr: i32, kc: i32, dst: usize): void {
  if (transA) f32_pack_cols(a + ((<usize>k0 * lda + m0) << 2), lda, mr, kc, dst, mr);
  else f32_pack_rows(a + ((<usize>m0 * lda + k0) << 2), lda, mr, kc, dst, mr);
}

/**
 * C[M x N] = act(A · B + bias) with B packed beforehand (see the file header): A(i, p) is a[i*lda + p], or
 * a[p*lda + i] with transA (a then points at Aᵀ's column of row 0); panels holds the panels of
 * columns n0.. of a B with `k` rows (n0 a multiple of 8, panels pointing at panel n0/8); bias (N floats
 * from column n0, 0 = none); activation one of the ACTIVATION_ codes; scratch: f32_gemm_packed_scratch_bytes(m, k)
 * (or of more rows).
 * Up to SKINNY_ROWS rows (a decode step, a few sessions batched): every tile of rows packed over the whole
 * K first, then each panel read from memory once, from start to end, and used by every tile while it is
 * in cache, so B streams once whatever M is. More rows: K in blocks of GEMM_KC, each block of the panels
 * (KC x N) reused from L2 by every tile of rows.
 */
export function f32_gemm_packed(m: i32, n: i32, k: i32, a: usize, lda: i32, transA: bool, panels: usize, c: usize, ldc: i32, bias: usize, activation: i32, scratch: usize): void {
  const aPacked = scratch;
  const tile = aPacked + ((<usize>packedFloats(m, k)) << 2);
  if (k == 0) {
    for (let i = 0; i < m; i++) memory.fill(c + ((<usize>i * ldc) << 2), 0, (<usize>n) << 2);
  } else if (m <= SKINNY_ROWS) {
    // tile i's rows packed at m0·k floats, m0 its first row
    const tiles = (m + GEMM_MR - 1) / GEMM_MR;
    for (let i = 0, m0 = 0; i < tiles; m0 += tileRows(m, tiles, i++)) packA(a, lda, transA, m0, 0, tileRows(m, tiles, i), k, aPacked + ((<usize>m0 * k) << 2));
    if (m == 1) {
      // x·W: one row, four chains of sums per panel (the 1x8 tile is bound by its one chain)
      for (let p = 0; p < n; p += 8) f32_gemv_1x8c4(min(8, n - p), k, aPacked, panels + ((<usize>p * k) << 2), c + ((<usize>p) << 2));
    } else for (let p = 0; p < n; p += 8) {
      const panel = panels + ((<usize>p * k) << 2);
      for (let i = 0, m0 = 0; i < tiles; m0 += tileRows(m, tiles, i++)) {
        const cTile = c + ((<usize>m0 * ldc + p) << 2);
        gemm_packed_exact(tileRows(m, tiles, i), min(8, n - p), k, aPacked + ((<usize>m0 * k) << 2), panel, cTile, ldc, false, tile);
      }
    }
  } else {
    const tiles = (m + GEMM_MR - 1) / GEMM_MR;
    for (let k0 = 0; k0 < k; k0 += GEMM_KC) {
      const kc = min(GEMM_KC, k - k0);
      for (let i = 0, m0 = 0; i < tiles; m0 += tileRows(m, tiles, i++)) {
        const mr = tileRows(m, tiles, i);
        packA(a, lda, transA, m0, k0, mr, kc, aPacked);
        const cRow = c + ((<usize>m0 * ldc) << 2);
        for (let p = 0; p < n; p += 8) {
          const panel = panels + ((<usize>p * k + <usize>k0 * 8) << 2);
          gemm_packed_exact(mr, min(8, n - p), kc, aPacked, panel, cRow + (<usize>p << 2), ldc, k0 > 0, tile);
        }
      }
    }
  }
  if (bias == 0 && activation == ACTIVATION_NONE) return;
  for (let i = 0; i < m; i++) finishRow(c + ((<usize>i * ldc) << 2), n, bias, activation);
}

/** row[j] = act(row[j] + bias[j]) for j < n (bias 0: none). */
function finishRow(row: usize, n: i32, bias: usize, activation: i32): void {
  let j = 0;
  for (; j + 4 <= n; j += 4) {
    const at = row + ((<usize>j) << 2);
    let x = v128.load(at);
    if (bias != 0) x = f32x4.add(x, v128.load(bias + ((<usize>j) << 2)));
    v128.store(at, activate(x, activation));
  }
  for (; j < n; j++) {
    const at = row + ((<usize>j) << 2);
    let x = f32x4.splat(load<f32>(at));
    if (bias != 0) x = f32x4.add(x, f32x4.splat(load<f32>(bias + ((<usize>j) << 2))));
    store<f32>(at, f32x4.extract_lane(activate(x, activation), 0));
  }
}

// √(2/π) and the cubic coefficient of GELU's tanh approximation
// @ts-ignore: decorator
@inline const GELU_C: f32 = 0.7978845608028654;
// @ts-ignore: decorator
@inline const GELU_A: f32 = 0.044715;

/** relu: max(x, 0); gelu (tanh form): x·σ(2u), u = √(2/π)(x + 0.044715x³), since ½(1 + tanh u) = σ(2u);
 * silu: x·σ(x). σ(y) = 1 / (1 + exp(-y)); exp overflows to +inf for y < -88.4, where σ is 0. */
// @ts-ignore: decorator
@inline function activate(x: v128, activation: i32): v128 {
  if (activation == ACTIVATION_RELU) return f32x4.max(x, f32x4.splat(0));
  if (activation == ACTIVATION_NONE) return x;
  let y = x;
  if (activation == ACTIVATION_GELU_TANH) {
    const x3 = f32x4.mul(f32x4.mul(x, x), x);
    y = f32x4.mul(f32x4.add(x, f32x4.mul(x3, f32x4.splat(GELU_A))), f32x4.splat(2 * GELU_C));
  }
  const sigmoid = f32x4.div(f32x4.splat(1), f32x4.add(f32x4.splat(1), expv(f32x4.neg(y))));
  return f32x4.mul(x, sigmoid);
}
