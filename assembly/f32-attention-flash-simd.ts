// Tiled attention with an online softmax (FlashAttention-2 style) for one (batch, head) slice.
//
//   out[i] = sum_j p[i][j] v[j],  p[i] = softmax_j( t[i][j] ),
//   t[i][j] = softcap(scale * (q[i]·k[j])) + mask[i][j]   for visible j, -inf otherwise,
//   visible: i + offset - left <= j <= i + offset + right   (left/right < 0: unbounded on that side;
//            causal is left = -1, right = 0), and 0 <= j < seqKV.
//   A row with no visible key (or only -inf scores) gives out[i] = 0 (and sum 0 in rowStats).
//
// Layout: row-major, strides in elements. q row i at q + i*ldq (headDim floats), k row j at
// k + j*ldk (headDim), v row j at v + j*ldv (valueDim), out row i at out + i*ldo (valueDim),
// mask row i at mask + i*maskRowStride (u8 for bool, f32 for float). rowStats (optional, 0 = none)
// receives [max_i, sum_i] per row, so log-sum-exp_i = max_i + log(sum_i) (sum 0: no visible key).
// weights (optional, 0 = none) receives the attention weights themselves: row i at weights + i*ldw,
//   w[i][j] = p[i][j] = exp(t[i][j] - max_i) / sum_i   for every 0 <= j < seqKV,
// 0 where key j is hidden (causal, window, mask) and for a row that sees no key. The first pass leaves
// each tile's scores t in the weights rows; once a row block's max and sum are final, one more pass
// over those rows turns them into p in place (no second Q·Kᵀ). Callers that split the keys over
// several calls (split-KV) cannot use it: each call normalises by its own keys only.
//
// For each block of ATT_BR query rows the kernel streams blocks of ATT_BC keys: it packs the key
// block as Kᵀ panels, computes the ATT_BR x ATT_BC score tile with the GEMM micro-kernel, folds it
// into the running max m, sum l and output accumulator o (rescaled only when m changes), and adds
// P·V with the micro-kernel again. Key blocks that no row of the query block can see (causal or
// window) are skipped. Blocks of fewer query rows than the micro-kernel's tile (decoding) take the
// row path instead (f32-attention-rows-simd.ts), which reads K and V in place. Extra memory is the
// scratch, O(ATT_BR*ATT_BC + ATT_BC*(headDim + valueDim)).
//
// Range: q is scaled as it is copied into its block (so scores need no multiply), unless scale*q
// overflows there; then the block's scores are scaled instead, right whenever scale*(q·k) fits.
// P is kept as exp(t - m) * 2^-pShift with 2^pShift >= 2*seqKV (an exact power of two in the
// exponent, cancelled in o / l and undone in rowStats): l <= 1/2 and every partial sum of o is at
// most max|v|, so no finite v overflows the accumulator.
// Subnormal q, k and v values are read as 0 on both paths (x86 is many times slower on them); the
// inputs are not modified. Mask values are added as they are.

import { gemm_packed, gemm_rows, GEMM_MR, GEMM_ROW_STRIDE, GEMM_TILE_BYTES } from './f32-gemm-tile';
import { f32_pack_panels, f32_pack_rows } from './f32-pack-panels-simd';
import { scoreRow, expRow, probRow, scaleRow, MASK_BOOL } from './f32-softmax-scale-mask-simd';
import { daz1, daz4, exp1, hmax } from './f32-vmath-simd';
import { dotScores, addWeighted } from './f32-attention-rows-simd';

export const ATT_BR: i32 = 8 * GEMM_MR;
export const ATT_BC: i32 = GEMM_ROW_STRIDE; // P·V reads the score tile's rows as gemm_rows' A

// @ts-ignore: decorator
@inline export function roundUp8(n: i32): i32 {
  return (n + 7) & ~7;
}

/** Query rows per block (ATT_BR), for the TypeScript side's items of whole blocks. */
export function f32_attention_block_rows(): i32 {
  return ATT_BR;
}

/** Scratch bytes f32_attention needs for these head sizes. */
export function f32_attention_scratch_bytes(headDim: i32, valueDim: i32): i32 {
  const dvPad = roundUp8(valueDim);
  return 4 * (headDim * ATT_BC + ATT_BC * dvPad + ATT_BR * ATT_BC + ATT_BR * dvPad + 2 * ATT_BR + 2 * ATT_BR * headDim) + GEMM_TILE_BYTES;
}

/** dst[d] = daz(scale * daz(src[d])) for d < n; returns whether some product overflowed to ±inf
 * from a finite src[d] (a NaN or infinite q is left to propagate as it would). */
export function copyScaled(src: usize, dst: usize, n: i32, scale: f32): bool {
  const vs = f32x4.splat(scale);
  let inMax = f32x4.splat(0.0), outMax = f32x4.splat(0.0);
  let d = 0;
  for (; d + 4 <= n; d += 4) {
    const off = <usize>d << 2;
    const x = v128.load(src + off);
    const y = daz4(f32x4.mul(daz4(x), vs));
    v128.store(dst + off, y);
    inMax = f32x4.pmax(inMax, f32x4.abs(x));
    outMax = f32x4.pmax(outMax, f32x4.abs(y));
  }
  let inM = hmax(inMax), outM = hmax(outMax);
  for (; d < n; d++) {
    const off = <usize>d << 2;
    const x = load<f32>(src + off);
    const y = daz1(daz1(x) * scale);
    store<f32>(dst + off, y);
    inM = max(inM, abs(x));
    outM = max(outM, abs(y));
  }
  return outM == Infinity && inM < Infinity;
}

/** For the tile path, once per block of br query rows: the rows packed for gemm_packed, GEMM_MR at a time
 * (group g at qPack + g*GEMM_MR*headDim), and the score tile's rows from br up to the next multiple of
 * GEMM_MR zeroed (gemm_rows reads them in P·V; nothing else writes them). */
export function prepareTileBlock(qTileRows: usize, br: i32, headDim: i32, qPack: usize, sTile: usize): void {
  for (let i0 = 0; i0 < br; i0 += GEMM_MR) {
    const at = (<usize>i0 * headDim) << 2;
    f32_pack_rows(qTileRows + at, headDim, min(GEMM_MR, br - i0), headDim, qPack + at, GEMM_MR);
  }
  const padded = (br + GEMM_MR - 1) / GEMM_MR * GEMM_MR;
  memory.fill(sTile + ((<usize>br * ATT_BC) << 2), 0, (<usize>(padded - br) * ATT_BC) << 2);
}

/** S[i][j] = qTile_i · k_j for i < br, j < bc (row i of S at sTile + i*ATT_BC; columns up to bc rounded
 * up to 8 are written on the tile path). Tile path: K block packed as Kᵀ panels into kT, then the GEMM
 * micro-kernel over the query rows prepareTileBlock packed into qPack; row path: dotScores reads the K
 * rows in place against qTileRows. */
export function scoreTile(rowPath: bool, qTileRows: usize, qPack: usize, br: i32, kBlock: usize, ldk: i32, bc: i32, headDim: i32, kT: usize, sTile: usize, tile: usize): void {
  if (rowPath) {
    for (let i = 0; i < br; i++) dotScores(qTileRows + ((<usize>i * headDim) << 2), kBlock, ldk, bc, headDim, sTile + ((<usize>i * ATT_BC) << 2));
    return;
  }
  const bcPad = roundUp8(bc);
  f32_pack_panels(kBlock, ldk, true, headDim, bc, kT);
  for (let i0 = 0; i0 < br; i0 += GEMM_MR) {
    const qTile = qPack + ((<usize>i0 * headDim) << 2);
    for (let p = 0; p < bcPad; p += 8) {
      gemm_packed(min(GEMM_MR, br - i0), 8, headDim, qTile, kT + ((<usize>p * headDim) << 2),
        sTile + ((<usize>i0 * ATT_BC + p) << 2), ATT_BC, false, tile);
    }
  }
}

/** O += P·V on the tile path: the bc value rows (at vBlock, ldv apart) packed into 8-wide panels in
 * vPanels, then the GEMM micro-kernel over the br rows of P (sTile, ATT_BC apart; the rows after br up to
 * a multiple of GEMM_MR zero, see prepareTileBlock) into O (oTile, valueDim rounded up to 8 apart). */
export function valueTile(br: i32, bc: i32, vBlock: usize, ldv: i32, valueDim: i32, vPanels: usize, sTile: usize, oTile: usize, tile: usize): void {
  const dvPad = roundUp8(valueDim);
  f32_pack_panels(vBlock, ldv, false, bc, valueDim, vPanels);
  for (let i0 = 0; i0 < br; i0 += GEMM_MR) {
    const pTile = sTile + ((<usize>i0 * ATT_BC) << 2);
    for (let p = 0; p < dvPad; p += 8) {
      gemm_rows(min(GEMM_MR, br - i0), 8, bc, pTile, vPanels + ((<usize>p * bc) << 2),
        oTile + ((<usize>i0 * dvPad + p) << 2), dvPad, true, tile);
    }
  }
}

/** Folds one row's tile of scores (transformed by scoreRow, whose max was rowMax) into the row's
 * running max (at mAt), sum (at lAt) and output accumulator oRow (dvPad floats, rescaled only when
 * the max changes); leaves p = exp(t - m)·2^-pShift in sRow for the P·V product (0 if the row saw nothing yet). */
// @ts-ignore: decorator
@inline export function foldRow(sRow: usize, bcPad: i32, rowMax: f32, mAt: usize, lAt: usize, oRow: usize, dvPad: i32, pShift: i32): void {
  const mOld = load<f32>(mAt);
  const mNew = max(mOld, rowMax);
  if (mNew == -Infinity) {
    memory.fill(sRow, 0, (<usize>bcPad) << 2);
    return;
  }
  const sum = expRow(sRow, bcPad, mNew, pShift);
  let l = load<f32>(lAt);
  if (mNew != mOld && mOld != -Infinity) {
    const alpha = exp1(mOld - mNew);
    scaleRow(oRow, dvPad, alpha);
    l *= alpha;
  }
  store<f32>(lAt, l + sum);
  store<f32>(mAt, mNew);
}

/** dst = oRow / l (valueDim floats; 0 for a row that saw no key), and [m, l·2^pShift] at stats when it is not 0. */
// @ts-ignore: decorator
@inline export function finishRow(oRow: usize, l: f32, m: f32, dst: usize, valueDim: i32, stats: usize, pUnshift: f32): void {
  if (l > 0 || l != l) {
    scaleRow(oRow, valueDim, 1.0 / l);
    memory.copy(dst, oRow, (<usize>valueDim) << 2);
  } else {
    memory.fill(dst, 0, (<usize>valueDim) << 2);
  }
  if (stats != 0) {
    store<f32>(stats, m);
    store<f32>(stats, l * pUnshift, 4);
  }
}

/** Attention of `rows` query rows over `seqKV` keys; see the file header for the exact contract. */
export function f32_attention(
  q: usize, ldq: i32, k: usize, ldk: i32, v: usize, ldv: i32, out: usize, ldo: i32,
  rows: i32, seqKV: i32, headDim: i32, valueDim: i32,
  scale: f32, cap: f32, mask: usize, maskKind: i32, maskRowStride: i32,
  offset: i32, left: i32, right: i32, rowStats: usize, scratch: usize,
  weights: usize, ldw: i32,
): void {
  const dvPad = roundUp8(valueDim);
  const kT = scratch;
  const vPanels = kT + ((<usize>headDim * ATT_BC) << 2);
  const sTile = vPanels + ((<usize>ATT_BC * dvPad) << 2);
  const oTile = sTile + ((<usize>ATT_BR * ATT_BC) << 2);
  const mRow = oTile + ((<usize>ATT_BR * dvPad) << 2);
  const lRow = mRow + ((<usize>ATT_BR) << 2);
  const qTileRows = lRow + ((<usize>ATT_BR) << 2);
  const qPack = qTileRows + ((<usize>ATT_BR * headDim) << 2);
  const tile = qPack + ((<usize>ATT_BR * headDim) << 2);
  const maskShift: usize = maskKind == MASK_BOOL ? 0 : 2;
  // p is kept as exp(t - m) * 2^-pShift with 2^pShift >= 2*seqKV, so the sums l and o stay below
  // max|v| (no overflow for any finite v); the power of two cancels in o / l and is undone in rowStats
  const pShift = 33 - clz(max(seqKV, 1));
  const pUnshift: f32 = reinterpret<f32>((127 + pShift) << 23);

  for (let q0 = 0; q0 < rows; q0 += ATT_BR) {
    const br = min(ATT_BR, rows - q0);
    const rowPath = br < GEMM_MR;
    memory.fill(oTile, 0, (<usize>br * dvPad) << 2);
    // q block, rows contiguous headDim apart, subnormals flushed so no multiply below sees one. It is
    // scaled here so the score pass needs no multiply, unless scale*q overflows somewhere in the block
    // (scale > 1, |q| near the float32 limit): then q stays as it is and the scores are scaled instead,
    // which is right whenever the scaled score itself fits.
    let qOverflow = false;
    for (let i = 0; i < br; i++) {
      qOverflow = copyScaled(q + ((<usize>(q0 + i) * ldq) << 2), qTileRows + ((<usize>i * headDim) << 2), headDim, scale) || qOverflow;
    }
    if (qOverflow) {
      for (let i = 0; i < br; i++) copyScaled(q + ((<usize>(q0 + i) * ldq) << 2), qTileRows + ((<usize>i * headDim) << 2), headDim, 1);
    }
    if (!rowPath) prepareTileBlock(qTileRows, br, headDim, qPack, sTile);
    const scoreScale: f32 = qOverflow ? scale : 1;
    for (let i = 0; i < br; i++) {
      store<f32>(mRow + (<usize>i << 2), -Infinity);
      store<f32>(lRow + (<usize>i << 2), 0);
    }
    // keys any row of this block can see
    const jlo = left < 0 ? 0 : max(0, q0 + offset - left);
    const jhi = right < 0 ? seqKV : min(seqKV, q0 + br - 1 + offset + right + 1);

    for (let j0 = jlo; j0 < jhi; j0 += ATT_BC) {
      const bc = min(ATT_BC, jhi - j0);
      const bcPad = roundUp8(bc);
      // S = Q·Kᵀ for this tile
      scoreTile(rowPath, qTileRows, qPack, br, k + ((<usize>j0 * ldk) << 2), ldk, bc, headDim, kT, sTile, tile);
      // online softmax, row by row
      for (let i = 0; i < br; i++) {
        const r = q0 + i;
        const lo = left < 0 ? 0 : r + offset - left - j0;
        const hi = right < 0 ? bc : min(bc, r + offset + right + 1 - j0);
        const sRow = sTile + ((<usize>i * ATT_BC) << 2);
        const maskRow = mask + ((<usize>r * maskRowStride + j0) << maskShift);
        const rowMax = scoreRow(sRow, sRow, bcPad, scoreScale, cap, maskRow, maskKind, lo, hi, true);
        if (weights != 0) memory.copy(weights + ((<usize>r * ldw + j0) << 2), sRow, (<usize>bc) << 2); // t, for the p pass
        foldRow(sRow, bcPad, rowMax, mRow + (<usize>i << 2), lRow + (<usize>i << 2), oTile + ((<usize>i * dvPad) << 2), dvPad, pShift);
      }
      // O += P·V, with the value block packed into 8-wide panels (the row path reads V in place)
      const vBlock = v + ((<usize>j0 * ldv) << 2);
      if (rowPath) {
        for (let i = 0; i < br; i++) addWeighted(sTile + ((<usize>i * ATT_BC) << 2), bc, vBlock, ldv, valueDim, oTile + ((<usize>i * dvPad) << 2));
        continue;
      }
      valueTile(br, bc, vBlock, ldv, valueDim, vPanels, sTile, oTile, tile);
    }
    // out = o / l
    for (let i = 0; i < br; i++) {
      finishRow(oTile + ((<usize>i * dvPad) << 2), load<f32>(lRow + (<usize>i << 2)), load<f32>(mRow + (<usize>i << 2)),
        out + ((<usize>(q0 + i) * ldo) << 2), valueDim, rowStats == 0 ? 0 : rowStats + ((<usize>(q0 + i)) << 3), pUnshift);
    }
    if (weights == 0) continue;
    // p[i][j] = exp(t[i][j] - m_i) / l_i in place over the scores the first pass left in the weights
    // rows, now that m_i and l_i are final; keys no row of the block sees are 0
    for (let i = 0; i < br; i++) {
      const wRow = weights + ((<usize>(q0 + i) * ldw) << 2);
      const l = load<f32>(lRow + (<usize>i << 2));
      if (l > 0 || l != l) { // then 0 <= jlo < jhi <= seqKV
        memory.fill(wRow, 0, (<usize>jlo) << 2);
        memory.fill(wRow + ((<usize>jhi) << 2), 0, (<usize>(seqKV - jhi)) << 2);
        const wVisible = wRow + ((<usize>jlo) << 2);
        probRow(wVisible, jhi - jlo, load<f32>(mRow + (<usize>i << 2)), 1.0 / (l * pUnshift), wVisible);
      } else {
        memory.fill(wRow, 0, (<usize>seqKV) << 2);
      }
    }
  }
}
