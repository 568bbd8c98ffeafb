// Causal attention over a paged KV history, for one (sequence, kv head) slice and the `group` query
// heads that share that kv head (grouped-query attention): every key and value row is read once for
// all of them.
//
//   rows r = i·group + g for query position i < positions and head g < group (position-major), so
//   a decode step's group heads form one block of rows against the same keys;
//   out[r] = sum_j p[r][j] v[j],  p[r] = softmax_j( softcap(scale · (q[r]·k[j])) ),
//   over the visible keys j: keyStart <= j < keyEnd, j <= i + offset, and j >= i + offset - left
//   when left >= 0 (a sliding window). A row with no visible key gives 0 (and sum 0 in rowStats).
//
// Layout: q row (i, g) at q + g·ldqHead + i·ldqPos (elements, headDim floats), out row (i, g) at
// out + g·ldoHead + i·ldoPos (valueDim floats). Key j lives in page j / pageSize: its key row is at the
// u32 address pagesK[j / pageSize] + kOffset + (j % pageSize)·headDim·4, its value row at
// pagesV[j / pageSize] + vOffset + (j % pageSize)·valueDim·4 (the tables give a page's rows of kv head
// 0; the offsets pick this head's). rowStats (0 = none) receives [max_r, sum_r] per row r, so a caller
// that split the keys over several calls (flash-decoding) merges them exactly (see
// f32-attention-flash-simd.ts for the scaling of p and the sums).
//
// Same algorithm as f32_attention: blocks of ATT_BR rows stream blocks of ATT_BC keys with an
// online softmax. The row path (blocks of at most PAGED_ROW_PATH_MAX rows: decoding) reads K and V
// where they lie, page segment by page segment, four rows per load; the tile path first gathers the
// block's key and value rows from their pages into scratch, then packs and multiplies them as
// f32_attention does.

import { scoreRow, MASK_NONE } from './f32-softmax-scale-mask-simd';
import { dotScores, dotScores4, addWeighted } from './f32-attention-rows-simd';
import { madd } from './f32-vmath-simd';
import {
  ATT_BR, ATT_BC, copyScaled, f32_attention_scratch_bytes, finishRow, foldRow, roundUp8, scoreTile, valueTile,
} from './f32-attention-flash-simd';

/** Blocks of at most this many rows (a decode step's heads of one group) read K and V in place, each
 * load serving four rows (dotScores4, addWeightedPaged4), so memory sees each page once. */
const PAGED_ROW_PATH_MAX: i32 = 8;

/** Scratch bytes f32_attention_paged needs: f32_attention's, plus a gathered key and value block. */
export function f32_attention_paged_scratch_bytes(headDim: i32, valueDim: i32): i32 {
  return f32_attention_scratch_bytes(headDim, valueDim) + 4 * ATT_BC * (headDim + valueDim);
}

/** Address of row j (of `width` floats) of this head's part of its page. */
// @ts-ignore: decorator
@inline function pagedRow(pages: usize, pageSize: i32, partOffset: i32, width: i32, j: i32): usize {
  const page = <usize>load<u32>(pages + ((<usize>(j / pageSize)) << 2));
  return page + <usize>partOffset + ((<usize>(j % pageSize) * <usize>width) << 2);
}

/**
 * Loads the first 4 bytes of every 64-byte line of rows j0 .. end of this head's part of their pages,
 * in memory order (a prefetch: WASM has no prefetch instruction; each load lies inside the rows, which
 * are whole floats); folds them into the word at `sink` with an AND by zero, so the loads stay and
 * `sink` does not change.
 */
function touchRows(pages: usize, pageSize: i32, partOffset: i32, width: i32, j0: i32, end: i32, sink: usize): void {
  let seen: u32 = 0;
  for (let j = j0; j < end;) {
    const segEnd = min(end, j - j % pageSize + pageSize);
    const from = pagedRow(pages, pageSize, partOffset, width, j);
    const to = from + ((<usize>(segEnd - j) * <usize>width) << 2);
    for (let line = from; line < to; line += 64) seen |= load<u32>(line);
    j = segEnd;
  }
  store<u32>(sink, load<u32>(sink) | (seen & 0));
}

/**
 * O·V for four rows at once over keys j0 .. j0+n of their pages (p rows lds floats apart, p column 0
 * is key j0; accumulator rows ldo apart): o_r += sum_j p_r[j] v_j for r < 4. Eight columns of the
 * four rows stay in registers across all the keys, page after page, and each load of a value row
 * serves the four rows. Values are used as they are: pages hold no subnormal (the pool flushes them
 * when it stores a page).
 */
function addWeightedPaged4(p: usize, lds: i32, j0: i32, n: i32, pages: usize, pageSize: i32, vOffset: i32, valueDim: i32, o: usize, ldo: i32): void {
  const vStride = (<usize>valueDim) << 2;
  const pStride = (<usize>lds) << 2;
  const oStride = (<usize>ldo) << 2;
  const p1 = p + pStride, p2 = p1 + pStride, p3 = p2 + pStride;
  const o1 = o + oStride, o2 = o1 + oStride, o3 = o2 + oStride;
  const end = j0 + n;
  // one pass over the block's value rows in memory order first, so the column passes below (which read
  // each row 32 bytes at a time, rows apart) find them in cache: 1.10x on a pool's decode step
  touchRows(pages, pageSize, vOffset, valueDim, j0, end, o);
  let c = 0;
  for (; c + 8 <= valueDim; c += 8) {
    const off = <usize>c << 2;
    let a0 = v128.load(o + off), b0 = v128.load(o + off, 16);
    let a1 = v128.load(o1 + off), b1 = v128.load(o1 + off, 16);
    let a2 = v128.load(o2 + off), b2 = v128.load(o2 + off, 16);
    let a3 = v128.load(o3 + off), b3 = v128.load(o3 + off, 16);
    for (let j = j0; j < end;) {
      const segEnd = min(end, j - j % pageSize + pageSize);
      let vp = pagedRow(pages, pageSize, vOffset, valueDim, j) + off;
      for (; j < segEnd; j++) {
        const x = v128.load(vp), y = v128.load(vp, 16);
        const pj = (<usize>(j - j0)) << 2;
        const w0 = v128.load32_splat(p + pj), w1 = v128.load32_splat(p1 + pj), w2 = v128.load32_splat(p2 + pj), w3 = v128.load32_splat(p3 + pj);
        a0 = madd(w0, x, a0); b0 = madd(w0, y, b0);
        a1 = madd(w1, x, a1); b1 = madd(w1, y, b1);
        a2 = madd(w2, x, a2); b2 = madd(w2, y, b2);
        a3 = madd(w3, x, a3); b3 = madd(w3, y, b3);
        vp += vStride;
      }
    }
    v128.store(o + off, a0); v128.store(o + off, b0, 16);
    v128.store(o1 + off, a1); v128.store(o1 + off, b1, 16);
    v128.store(o2 + off, a2); v128.store(o2 + off, b2, 16);
    v128.store(o3 + off, a3); v128.store(o3 + off, b3, 16);
  }
  if (c == valueDim) return;
  // the last columns, row by row and page by page
  for (let j = j0; j < end;) {
    const seg = min(end - j, pageSize - j % pageSize);
    const vSeg = pagedRow(pages, pageSize, vOffset, valueDim, j) + (<usize>c << 2);
    for (let r = 0; r < 4; r++) {
      addWeighted(p + <usize>r * pStride + ((<usize>(j - j0)) << 2), seg, vSeg, valueDim, valueDim - c, o + <usize>r * oStride + (<usize>c << 2));
    }
    j += seg;
  }
}

/** Causal attention over paged keys and values; see the file header for the exact contract. */
export function f32_attention_paged(
  q: usize, ldqHead: i32, ldqPos: i32, out: usize, ldoHead: i32, ldoPos: i32,
  positions: i32, group: i32, pagesK: usize, pagesV: usize, pageSize: i32, kOffset: i32, vOffset: i32,
  keyStart: i32, keyEnd: i32, headDim: i32, valueDim: i32,
  scale: f32, cap: f32, offset: i32, left: i32, rowStats: usize, scratch: usize,
): void {
  const dvPad = roundUp8(valueDim);
  const kT = scratch;
  const vPanels = kT + ((<usize>headDim * ATT_BC) << 2);
  const sTile = vPanels + ((<usize>ATT_BC * dvPad) << 2);
  const oTile = sTile + ((<usize>ATT_BR * ATT_BC) << 2);
  const mRow = oTile + ((<usize>ATT_BR * dvPad) << 2);
  const lRow = mRow + ((<usize>ATT_BR) << 2);
  const qTileRows = lRow + ((<usize>ATT_BR) << 2);
  const kGather = qTileRows + ((<usize>ATT_BR * headDim) << 2);
  const vGather = kGather + ((<usize>ATT_BC * headDim) << 2);
  const rows = positions * group;
  const pShift = 33 - clz(max(keyEnd - keyStart, 1));
  const pUnshift: f32 = reinterpret<f32>((127 + pShift) << 23);

  for (let r0 = 0; r0 < rows; r0 += ATT_BR) {
    const br = min(ATT_BR, rows - r0);
    const rowPath = br <= PAGED_ROW_PATH_MAX;
    memory.fill(oTile, 0, (<usize>br * dvPad) << 2);
    // the block's q rows, scaled and flushed as in f32_attention (scores scaled instead on overflow)
    let qOverflow = false;
    for (let r = 0; r < br; r++) {
      const i = (r0 + r) / group, g = (r0 + r) % group;
      const src = q + ((<usize>g * ldqHead + <usize>i * ldqPos) << 2);
      qOverflow = copyScaled(src, qTileRows + ((<usize>r * headDim) << 2), headDim, scale) || qOverflow;
    }
    if (qOverflow) {
      for (let r = 0; r < br; r++) {
        const i = (r0 + r) / group, g = (r0 + r) % group;
        copyScaled(q + ((<usize>g * ldqHead + <usize>i * ldqPos) << 2), qTileRows + ((<usize>r * headDim) << 2), headDim, 1);
      }
    }
    const scoreScale: f32 = qOverflow ? scale : 1;
    for (let r = 0; r < br; r++) {
      store<f32>(mRow + (<usize>r << 2), -Infinity);
      store<f32>(lRow + (<usize>r << 2), 0);
    }
    // keys any row of the block sees
    const iFirst = r0 / group, iLast = (r0 + br - 1) / group;
    const jlo = left < 0 ? keyStart : max(keyStart, iFirst + offset - left);
    const jhi = min(keyEnd, iLast + offset + 1);

    for (let j0 = jlo; j0 < jhi; j0 += ATT_BC) {
      const bc = min(ATT_BC, jhi - j0);
      const bcPad = roundUp8(bc);
      if (rowPath) {
        // scores page segment by page segment, K read in place
        for (let j = j0; j < j0 + bc;) {
          const seg = min(j0 + bc - j, pageSize - j % pageSize);
          const kSeg = pagedRow(pagesK, pageSize, kOffset, headDim, j);
          let r = 0;
          for (; r + 4 <= br; r += 4) {
            dotScores4(qTileRows + ((<usize>r * headDim) << 2), kSeg, headDim, seg, headDim, sTile + ((<usize>r * ATT_BC + (j - j0)) << 2), ATT_BC);
          }
          for (; r < br; r++) {
            dotScores(qTileRows + ((<usize>r * headDim) << 2), kSeg, headDim, seg, headDim, sTile + ((<usize>r * ATT_BC + (j - j0)) << 2));
          }
          j += seg;
        }
      } else {
        // gather the block's keys and values into contiguous rows, then the GEMM tile path
        for (let j = j0; j < j0 + bc;) {
          const seg = min(j0 + bc - j, pageSize - j % pageSize);
          memory.copy(kGather + ((<usize>(j - j0) * headDim) << 2), pagedRow(pagesK, pageSize, kOffset, headDim, j), (<usize>seg * headDim) << 2);
          memory.copy(vGather + ((<usize>(j - j0) * valueDim) << 2), pagedRow(pagesV, pageSize, vOffset, valueDim, j), (<usize>seg * valueDim) << 2);
          j += seg;
        }
        scoreTile(false, qTileRows, br, kGather, headDim, bc, headDim, kT, sTile);
      }
      // online softmax, row by row: row (i, g) sees keys up to i + offset (and from i + offset - left)
      for (let r = 0; r < br; r++) {
        const i = (r0 + r) / group;
        const lo = left < 0 ? 0 : i + offset - left - j0;
        const hi = min(bc, i + offset + 1 - j0);
        const sRow = sTile + ((<usize>r * ATT_BC) << 2);
        const rowMax = scoreRow(sRow, sRow, bcPad, scoreScale, cap, 0, MASK_NONE, lo, hi, true);
        foldRow(sRow, bcPad, rowMax, mRow + (<usize>r << 2), lRow + (<usize>r << 2), oTile + ((<usize>r * dvPad) << 2), dvPad, pShift);
      }
      // O += P·V
      if (rowPath) {
        let r = 0;
        for (; r + 4 <= br; r += 4) {
          addWeightedPaged4(sTile + ((<usize>r * ATT_BC) << 2), ATT_BC, j0, bc, pagesV, pageSize, vOffset, valueDim, oTile + ((<usize>r * dvPad) << 2), dvPad);
        }
        for (let j = j0; r < br && j < j0 + bc;) {
          const seg = min(j0 + bc - j, pageSize - j % pageSize);
          const vSeg = pagedRow(pagesV, pageSize, vOffset, valueDim, j);
          for (let rr = r; rr < br; rr++) {
            addWeighted(sTile + ((<usize>rr * ATT_BC + (j - j0)) << 2), seg, vSeg, valueDim, valueDim, oTile + ((<usize>rr * dvPad) << 2));
          }
          j += seg;
        }
        continue;
      }
      valueTile(br, bc, vGather, valueDim, valueDim, vPanels, sTile, oTile);
    }
    for (let r = 0; r < br; r++) {
      const i = (r0 + r) / group, g = (r0 + r) % group;
      finishRow(oTile + ((<usize>r * dvPad) << 2), load<f32>(lRow + (<usize>r << 2)), load<f32>(mRow + (<usize>r << 2)),
        out + ((<usize>g * ldoHead + <usize>i * ldoPos) << 2), valueDim, rowStats == 0 ? 0 : rowStats + ((<usize>(r0 + r)) << 3), pUnshift);
    }
  }
}
