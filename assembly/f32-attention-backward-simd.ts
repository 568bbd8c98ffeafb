// Attention's backward pass (FlashAttention-2's) for one kv head and the `heads` query heads that
// read it: dq of those heads, dk and dv of the kv head, in one call, so no other call writes them.
//
//   z = scale * (q_i·k_j),  t = softcap(z) + mask (-inf where key j is hidden from row i, as in
//   f32_attention), P_ij = exp(t - m_i) / l_i,  D_i = dOut_i·out_i (precomputed: f32_rows_dot)
//   dv_j += P_ij dOut_i,   dS_ij = P_ij (dOut_i·v_j - D_i) * softcap'(z)
//   dq_i += scale * dS_ij k_j,     dk_j += scale * dS_ij q_i
// (the sums of dS k and dS q are taken first and multiplied by scale once at the end: a tiny scale
// with large q and k then never makes dS subnormal)
// [m_i, l_i] are the forward's row stats (f32_attention's rowStats: the max and the sum of exp(t - m),
// so log-sum-exp = m + log(l); [lse, 1] does as well). A row with l_i = 0 saw no key: it takes and
// gives nothing. dq, dk and dv are zeroed here, then accumulated into.
// A call may take a part of the work (its caller then runs the rest in other calls, on other threads):
// parts & BWD_DQ: dq of rows [rowLo, rowHi) of each head; parts & BWD_DKV: dk and dv of keys [keyLo,
// keyHi), from every row that sees them. rowLo is a multiple of BWD_CHUNK, keyLo of BWD_BC, rowHi and
// keyHi are too or the end. Each gradient is summed in the same order whatever the parts: the bits of
// a part are those of the whole call.
//
// Layout: row-major, strides in elements. Head h's row i of q at q + h*qHead + i*ldq (headDim
// floats); of out and dOut at out/dOut + h*oHead + i*ldo (valueDim); of dq at dq + h*dqHead + i*lddq;
// stats at stats + 8*(h*rows + i), delta at delta + 4*(h*rows + i); key j of k, v, dk, dv at k + j*ldk, v + j*ldv, dk + j*lddk,
// dv + j*lddv; the mask row of (h, i) at mask + h*maskHead + i*maskRow (u8 or f32).
//
// For each query head, chunks of BWD_CHUNK rows: the chunk's q (scaled) and dOut packed once, as rows
// and as panels; then key blocks of BWD_BC keys, each packed (K, Kᵀ, Vᵀ), and for each, the chunk's
// tiles of BWD_BR rows that can see it (causal and window skip the others): the score tile S = Q·Kᵀ and
// dP = dOut·Vᵀ by the GEMM micro-kernel, P and dS in place row by row, then dq += dS·K (straight into
// dq), dv += Pᵀ·dOut and dk += dSᵀ·Q (into dv and dk) by the micro-kernel again. Extra memory: the
// scratch, O(BWD_BC*(headDim + valueDim) + BWD_BR*BWD_BC + BWD_CHUNK*(headDim + valueDim)); the order
// of every sum depends on the shape only (dk and dv: heads, then row tiles, in order).
import { gemm_cols, gemm_packed, gemm_rows, GEMM_MR, GEMM_ROW_STRIDE, GEMM_TILE_BYTES } from './f32-gemm-tile';
import { f32_pack_panels, f32_pack_rows } from './f32-pack-panels-simd';
import { daz4, expNegv, softcapv } from './f32-vmath-simd';
import { scaleRow } from './f32-softmax-scale-mask-simd';
import { copyScaled, roundUp8 } from './f32-attention-flash-simd';

// @ts-ignore: decorator
@inline const MASK_BOOL: i32 = 1;
// @ts-ignore: decorator
@inline const MASK_FLOAT: i32 = 2;

/** Keys per block: their K and V panels and the tiles' rows stay in the first cache levels. */
export const BWD_BC: i32 = 64;
/** Query rows per tile: whole register tiles of the micro-kernel; 8 of them measured 3-5% faster than 4
 * (the Pᵀ·dOut and dSᵀ·q products run over the tile's rows: longer sums per stored tile). */
export const BWD_BR: i32 = 8 * GEMM_MR;

/** Query rows whose packed q and dOut are kept while the key blocks pass over them: 16 tiles. */
export const BWD_CHUNK: i32 = 16 * BWD_BR;

/** parts: dq of rows [rowLo, rowHi); dk and dv of keys [keyLo, keyHi). */
export const BWD_DQ: i32 = 1;
export const BWD_DKV: i32 = 2;

/** Row and key multiples a call's parts start at: BWD_CHUNK (low 16 bits) and BWD_BC (high 16). */
export function f32_attention_backward_grain(): i32 {
  return BWD_CHUNK | (BWD_BC << 16);
}

/** Scratch bytes f32_attention_backward needs for these head sizes. */
export function f32_attention_backward_scratch_bytes(headDim: i32, valueDim: i32): i32 {
  const dPad = roundUp8(headDim), dvPad = roundUp8(valueDim);
  return 4 * (
    BWD_BC * dPad * 2 + BWD_BC * dvPad       // Kᵀ and K panels, Vᵀ panels
    + 2 * BWD_BR * GEMM_ROW_STRIDE           // S then P, dP then dS
    + BWD_BR * headDim                       // a tile's q rows scaled
    + BWD_CHUNK * (headDim + valueDim + dPad + dvPad) // the chunk's Q and dOut packed as rows and as panels
    + BWD_CHUNK / BWD_BR                     // the chunk's tiles' overflow flags
  ) + GEMM_TILE_BYTES;
}

/** delta[i] = a_i · b_i for i < rows (valueDim floats each, rows lda and ldb apart): D of the backward. */
export function f32_rows_dot(a: usize, lda: i32, b: usize, ldb: i32, rows: i32, n: i32, delta: usize): void {
  for (let i = 0; i < rows; i++) {
    const ra = a + ((<usize>i * lda) << 2), rb = b + ((<usize>i * ldb) << 2);
    let acc = f32x4.splat(0);
    let d = 0;
    for (; d + 4 <= n; d += 4) acc = f32x4.add(acc, f32x4.mul(v128.load(ra + (<usize>d << 2)), v128.load(rb + (<usize>d << 2))));
    let sum = f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1) + f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3);
    for (; d < n; d++) sum += load<f32>(ra + (<usize>d << 2)) * load<f32>(rb + (<usize>d << 2));
    store<f32>(delta + (<usize>i << 2), sum);
  }
}

/** One row of a tile: sRow (q·k times scoreScale: the score z) becomes P, dRow (dOut·v) becomes dS, for
 * columns < n (a multiple of 4 at least bc; columns outside [lo, hi) and past bc give 0). */
function gradRow(sRow: usize, dRow: usize, n: i32, lo: i32, hi: i32, scoreScale: f32, cap: f32, mask: usize, maskKind: i32, m: f32, l: f32, delta: f32): void {
  lo = max(0, lo);
  hi = max(lo, hi);
  if (!(l > 0 || l != l) || lo >= hi) {
    memory.fill(sRow, 0, (<usize>n) << 2);
    memory.fill(dRow, 0, (<usize>n) << 2);
    return;
  }
  const invCap: f32 = cap > 0 ? 1.0 / cap : 0;
  const maskShift: usize = maskKind == MASK_BOOL ? 0 : 2;
  const vScoreScale = f32x4.splat(scoreScale), vMax = f32x4.splat(m), vInvSum = f32x4.splat(1.0 / l), vDelta = f32x4.splat(delta), vInvCap = f32x4.splat(invCap);
  if (cap == 0 && maskKind == 0 && lo == 0 && hi == n) {
    // the common tile: every column seen, nothing to transform but the scale
    for (let j = 0; j < n; j += 4) {
      const off = (<usize>j) << 2;
      const p = daz4(f32x4.mul(expNegv(f32x4.sub(f32x4.mul(v128.load(sRow + off), vScoreScale), vMax)), vInvSum));
      v128.store(sRow + off, p);
      v128.store(dRow + off, daz4(f32x4.mul(p, f32x4.sub(v128.load(dRow + off), vDelta))));
    }
    return;
  }
  const vLo = i32x4.splat(lo), vHi = i32x4.splat(hi);
  for (let j = 0; j < n; j += 4) {
    const off = (<usize>j) << 2;
    let t = f32x4.mul(daz4(v128.load(sRow + off)), vScoreScale);
    let slope = f32x4.splat(1);
    if (cap > 0) {
      t = softcapv(t, cap, invCap);
      const th = f32x4.mul(t, vInvCap);
      slope = f32x4.sub(f32x4.splat(1), f32x4.mul(th, th));
    }
    const at = i32x4.add(i32x4.splat(j), i32x4(0, 1, 2, 3));
    let hidden = v128.or(i32x4.lt_s(at, vLo), i32x4.ge_s(at, vHi));
    if (maskKind == MASK_FLOAT) {
      // columns past hi may lie past the mask row: read only the visible ones
      t = j + 4 <= hi ? f32x4.add(t, v128.load(mask + (<usize>j << 2))) : addMaskTail(t, mask, j, hi);
    } else if (maskKind == MASK_BOOL) {
      hidden = v128.or(hidden, boolHidden(mask, j, hi));
    }
    // t <= m: m is the row's max, or its log-sum-exp (TRUSTED_LOG_SUM_EXP keeps it from garbage)
    const p = daz4(v128.bitselect(f32x4.splat(0), f32x4.mul(expNegv(f32x4.sub(t, vMax)), vInvSum), hidden));
    const dp = v128.load(dRow + off);
    v128.store(sRow + off, p);
    v128.store(dRow + off, daz4(f32x4.mul(f32x4.mul(p, f32x4.sub(dp, vDelta)), slope)));
  }
}

/** t + the float mask's columns j.. that are below hi (the others are hidden anyway). */
// @ts-ignore: decorator
@inline function addMaskTail(t: v128, mask: usize, j: i32, hi: i32): v128 {
  const m0: f32 = j < hi ? load<f32>(mask + (<usize>j << 2)) : 0;
  const m1: f32 = j + 1 < hi ? load<f32>(mask + (<usize>(j + 1) << 2)) : 0;
  const m2: f32 = j + 2 < hi ? load<f32>(mask + (<usize>(j + 2) << 2)) : 0;
  const m3: f32 = j + 3 < hi ? load<f32>(mask + (<usize>(j + 3) << 2)) : 0;
  return f32x4.add(t, f32x4(m0, m1, m2, m3));
}

/** All-ones lanes where the bool mask's column j + lane is 0 (columns at or past hi: ignored). */
// @ts-ignore: decorator
@inline function boolHidden(mask: usize, j: i32, hi: i32): v128 {
  if (j + 4 <= hi) {
    const m32 = i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v128.load32_zero(mask + <usize>j)));
    return i32x4.eq(m32, i32x4.splat(0));
  }
  const b0: i32 = j < hi ? load<u8>(mask + <usize>j) : 1;
  const b1: i32 = j + 1 < hi ? load<u8>(mask + <usize>(j + 1)) : 1;
  const b2: i32 = j + 2 < hi ? load<u8>(mask + <usize>(j + 2)) : 1;
  const b3: i32 = j + 3 < hi ? load<u8>(mask + <usize>(j + 3)) : 1;
  return i32x4.eq(i32x4(b0, b1, b2, b3), i32x4.splat(0));
}

/** The gradients of one kv head and its query heads; see the file header for the exact contract. */
export function f32_attention_backward(
  q: usize, ldq: i32, qHead: i32, k: usize, ldk: i32, v: usize, ldv: i32,
  out: usize, dOut: usize, ldo: i32, oHead: i32, stats: usize, delta: usize,
  dq: usize, lddq: i32, dqHead: i32, dk: usize, lddk: i32, dv: usize, lddv: i32,
  heads: i32, rows: i32, seqKV: i32, headDim: i32, valueDim: i32, scale: f32, cap: f32,
  mask: usize, maskKind: i32, maskRow: i32, maskHead: i32, offset: i32, left: i32, right: i32, scratch: usize,
  parts: i32, rowLo: i32, rowHi: i32, keyLo: i32, keyHi: i32,
): void {
  const doQ = (parts & BWD_DQ) != 0, doKV = (parts & BWD_DKV) != 0;
  const dPad = roundUp8(headDim), dvPad = roundUp8(valueDim);
  const kT = scratch;                                           // Kᵀ panels: ceil(bc/8) x headDim x 8
  const kP = kT + ((<usize>BWD_BC * dPad) << 2);                // K panels: ceil(headDim/8) x bc x 8
  const vT = kP + ((<usize>BWD_BC * dPad) << 2);                // Vᵀ panels: ceil(bc/8) x valueDim x 8
  const sTile = vT + ((<usize>BWD_BC * dvPad) << 2);            // S, then P: BWD_BR rows, GEMM_ROW_STRIDE apart
  const dTile = sTile + ((<usize>BWD_BR * GEMM_ROW_STRIDE) << 2); // dP, then dS
  const qScaled = dTile + ((<usize>BWD_BR * GEMM_ROW_STRIDE) << 2); // a tile's q rows times scale, contiguous
  // the chunk's tiles, each BWD_BR rows: Q (scaled) and dOut packed as rows (GEMM_MR interleaved), Q and dOut as panels
  const qRows = qScaled + ((<usize>BWD_BR * headDim) << 2);
  const oRows = qRows + ((<usize>BWD_CHUNK * headDim) << 2);
  const qP = oRows + ((<usize>BWD_CHUNK * valueDim) << 2);
  const oP = qP + ((<usize>BWD_CHUNK * dPad) << 2);
  const overflowed = oP + ((<usize>BWD_CHUNK * dvPad) << 2);    // per tile: q was scaled in the scores instead
  const tile = overflowed + ((<usize>(BWD_CHUNK / BWD_BR)) << 2);
  const maskShift: usize = maskKind == MASK_BOOL ? 0 : 2;
  // gemm_cols reads GEMM_MR columns from the last ones of a block on: the columns no block writes stay 0
  memory.fill(sTile, 0, (<usize>(2 * BWD_BR * GEMM_ROW_STRIDE)) << 2);
  if (doQ) {
    for (let h = 0; h < heads; h++) {
      for (let i = rowLo; i < rowHi; i++) memory.fill(dq + ((<usize>h * dqHead + <usize>i * lddq) << 2), 0, (<usize>headDim) << 2);
    }
  }
  if (doKV) {
    for (let j = keyLo; j < keyHi; j++) {
      memory.fill(dk + ((<usize>j * lddk) << 2), 0, (<usize>headDim) << 2);
      memory.fill(dv + ((<usize>j * lddv) << 2), 0, (<usize>valueDim) << 2);
    }
  }

  for (let h = 0; h < heads; h++) {
    const qHeadAt = q + ((<usize>h * qHead) << 2), oHeadAt = dOut + ((<usize>h * oHead) << 2);
    const dqHeadAt = dq + ((<usize>h * dqHead) << 2);
    for (let c0 = rowLo; c0 < rowHi; c0 += BWD_CHUNK) {
      const c1 = min(rowHi, c0 + BWD_CHUNK);
      // the chunk's rows packed once for all the key blocks
      for (let i0 = c0; i0 < c1; i0 += BWD_BR) {
        const br = min(BWD_BR, c1 - i0);
        const at = <usize>(i0 - c0);
        const qAt = qHeadAt + ((<usize>i0 * ldq) << 2), oAt = oHeadAt + ((<usize>i0 * ldo) << 2);
        // q scaled as the forward scales it (so the scores round the same way), unless scale*q
        // overflows somewhere in the tile: then the scores are scaled instead
        let qOverflow = false;
        for (let i = 0; i < br; i++) qOverflow = copyScaled(qAt + ((<usize>i * ldq) << 2), qScaled + ((<usize>i * headDim) << 2), headDim, scale) || qOverflow;
        if (qOverflow) for (let i = 0; i < br; i++) copyScaled(qAt + ((<usize>i * ldq) << 2), qScaled + ((<usize>i * headDim) << 2), headDim, 1);
        store<i32>(overflowed + ((at / BWD_BR) << 2), qOverflow ? 1 : 0);
        for (let g = 0; g < br; g += GEMM_MR) {
          const mr = min(GEMM_MR, br - g);
          f32_pack_rows(qScaled + ((<usize>g * headDim) << 2), headDim, mr, headDim, qRows + (((at + g) * headDim) << 2), GEMM_MR);
          f32_pack_rows(oAt + ((<usize>g * ldo) << 2), ldo, mr, valueDim, oRows + (((at + g) * valueDim) << 2), GEMM_MR);
        }
        if (doKV) {
          f32_pack_panels(qAt, ldq, false, br, headDim, qP + ((at * dPad) << 2));
          f32_pack_panels(oAt, ldo, false, br, valueDim, oP + ((at * dvPad) << 2));
        }
      }
      for (let j0 = keyLo; j0 < keyHi; j0 += BWD_BC) {
        const bc = min(BWD_BC, seqKV - j0);
        const bcPad = roundUp8(bc);
        // rows that can see some key of the block: i + offset - left <= j0 + bc - 1 and i + offset + right >= j0
        const ilo = right < 0 ? c0 : max(c0, j0 - offset - right);
        const ihi = left < 0 ? c1 : min(c1, j0 + bc - 1 - offset + left + 1);
        if (ilo >= ihi) continue;
        const kBlock = k + ((<usize>j0 * ldk) << 2), vBlock = v + ((<usize>j0 * ldv) << 2);
        f32_pack_panels(kBlock, ldk, true, headDim, bc, kT);
        if (doQ) f32_pack_panels(kBlock, ldk, false, bc, headDim, kP);
        f32_pack_panels(vBlock, ldv, true, valueDim, bc, vT);
        const dkBlock = dk + ((<usize>j0 * lddk) << 2), dvBlock = dv + ((<usize>j0 * lddv) << 2);
        // the chunk's tiles that hold a row in [ilo, ihi) (their other rows see nothing of the block: P = dS = 0)
        for (let i0 = c0 + (ilo - c0) / BWD_BR * BWD_BR; i0 < ihi; i0 += BWD_BR) {
          const br = min(BWD_BR, c1 - i0);
          const at = <usize>(i0 - c0);
          const scoreScale: f32 = load<i32>(overflowed + ((at / BWD_BR) << 2)) ? scale : 1;
          const qTile = qRows + ((at * headDim) << 2), oTile = oRows + ((at * valueDim) << 2);
          // S = Q·Kᵀ and dP = dOut·Vᵀ
          for (let g = 0; g < br; g += GEMM_MR) {
            const mr = min(GEMM_MR, br - g);
            const qg = qTile + ((<usize>g * headDim) << 2), og = oTile + ((<usize>g * valueDim) << 2);
            for (let p = 0; p < bcPad; p += 8) {
              const c = (<usize>g * GEMM_ROW_STRIDE + p) << 2;
              gemm_packed(mr, 8, headDim, qg, kT + ((<usize>p * headDim) << 2), sTile + c, GEMM_ROW_STRIDE, false, tile);
              gemm_packed(mr, 8, valueDim, og, vT + ((<usize>p * valueDim) << 2), dTile + c, GEMM_ROW_STRIDE, false, tile);
            }
          }
          // P and dS in place, row by row; rows past br (up to the register tile) are zero for gemm_rows
          for (let i = 0; i < br; i++) {
            const r = i0 + i;
            const row = <usize>h * rows + r;
            const rowAt = (<usize>i * GEMM_ROW_STRIDE) << 2;
            const lo = left < 0 ? 0 : r + offset - left - j0;
            const hi = right < 0 ? bc : min(bc, r + offset + right + 1 - j0);
            gradRow(sTile + rowAt, dTile + rowAt, bcPad, lo, hi, scoreScale, cap,
              mask + ((<usize>h * maskHead + <usize>r * maskRow + j0) << maskShift), maskKind,
              load<f32>(stats + (row << 3)), load<f32>(stats + (row << 3) + 4), load<f32>(delta + (row << 2)));
          }
          const padded = (br + GEMM_MR - 1) / GEMM_MR * GEMM_MR;
          for (let i = br; i < padded; i++) {
            memory.fill(sTile + ((<usize>i * GEMM_ROW_STRIDE) << 2), 0, (<usize>bcPad) << 2);
            memory.fill(dTile + ((<usize>i * GEMM_ROW_STRIDE) << 2), 0, (<usize>bcPad) << 2);
          }
          // dq += dS·K, straight into dq
          const dqAt = dqHeadAt + ((<usize>i0 * lddq) << 2);
          for (let g = 0; doQ && g < br; g += GEMM_MR) {
            const mr = min(GEMM_MR, br - g);
            for (let p = 0; p < headDim; p += 8) {
              gemm_rows(mr, min(8, headDim - p), bc, dTile + ((<usize>g * GEMM_ROW_STRIDE) << 2), kP + ((<usize>p * bc) << 2),
                dqAt + ((<usize>g * lddq + p) << 2), lddq, true, tile);
            }
          }
          // dv += Pᵀ·dOut and dk += dSᵀ·Q: the tiles' columns read as rows, the rows' dOut and Q as panels
          const qPanels = qP + ((at * dPad) << 2), oPanels = oP + ((at * dvPad) << 2);
          for (let jg = 0; doKV && jg < bc; jg += GEMM_MR) {
            const mr = min(GEMM_MR, bc - jg);
            for (let p = 0; p < valueDim; p += 8) {
              gemm_cols(mr, min(8, valueDim - p), br, sTile + ((<usize>jg) << 2), oPanels + ((<usize>p * br) << 2), dvBlock + ((<usize>jg * lddv + p) << 2), lddv, true, tile);
            }
            for (let p = 0; p < headDim; p += 8) {
              gemm_cols(mr, min(8, headDim - p), br, dTile + ((<usize>jg) << 2), qPanels + ((<usize>p * br) << 2), dkBlock + ((<usize>jg * lddk + p) << 2), lddk, true, tile);
            }
          }
        }
      }
    }
  }
  // dq and dk times scale, once
  if (doQ) {
    for (let h = 0; h < heads; h++) {
      for (let i = rowLo; i < rowHi; i++) scaleRow(dq + ((<usize>h * dqHead + <usize>i * lddq) << 2), headDim, scale);
    }
  }
  if (doKV) for (let j = keyLo; j < keyHi; j++) scaleRow(dk + ((<usize>j * lddk) << 2), headDim, scale);
}
