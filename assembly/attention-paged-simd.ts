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
// u32 address pagesK[j / pageSize] + kOffset + (j % pageSize)·headDim·sizeof(T), its value row at
// pagesV[j / pageSize] + vOffset + (j % pageSize)·valueDim·sizeof(T) (the tables give a page's rows of
// kv head 0; the offsets, in bytes, pick this head's); int8 rows' scales follow their block, and int8
// value rows go in interleaved pairs (see page-table.ts). rowStats (0 = none) receives [max_r, sum_r]
// per row r, so a caller that split the keys over several calls (flash-decoding) merges them exactly
// (see f32-attention-flash-simd.ts for the scaling of p and the sums).
//
// One template over the pages' element type T, exported as f32_attention_paged (float32 pages),
// f16_attention_paged (float16: u16 bit patterns) and qs8_attention_paged (int8 with a float32 scale
// per row). Elements become floats in registers (attention-paged-rows-simd.ts); in the decode path
// int8 keys meet q quantized per row to 14 bits in exact int32 dots (relaxed 8-bit dots when
// relaxedDot says the runtime computes them exactly: see src/platform.ts), and int8 values meet the
// probabilities times the value scales, rounded per row to 15 bits, in exact int32 dots.

// Same algorithm as f32_attention: blocks of ATT_BR rows stream blocks of ATT_BC keys with an
// online softmax. The row path (blocks of at most PAGED_ROW_PATH_MAX rows: decoding) reads K and V
// where they lie, page segment by page segment, four rows per load; the tile path first gathers the
// block's key and value rows from their pages into scratch (as floats), then packs and multiplies
// them as f32_attention does.

import { scoreRow, MASK_NONE } from './f32-softmax-scale-mask-simd';
import {
  PAIRS_WORK_BYTES, TWO_64, TWO_MINUS_60, TWO_MINUS_64, addWeightedPaged4, addWeightedQ8Pairs4, dotScoresFloat4, dotScoresQ8x4, pairRowsToFloats, quantizeQueryRows, rowsToFloats,
} from './attention-paged-rows-simd';
import { pageRow, pageRowPair, pageScale, scalesOffset } from './page-table';
import { HALF_RAW_SCALE } from './f16-convert-simd';
import { GEMM_TILE_BYTES } from './f32-gemm-tile';
import {
  ATT_BR, ATT_BC, copyScaled, f32_attention_scratch_bytes, finishRow, foldRow, prepareTileBlock, roundUp8, scoreTile, valueTile,
} from './f32-attention-flash-simd';

/** Blocks of at most this many rows (a decode step's heads of one group) read K and V in place, each
 * load serving four rows (attention-paged-rows-simd.ts), so memory sees each page once. */
const PAGED_ROW_PATH_MAX: i32 = 8;

/** Scratch bytes the paged kernels need: f32_attention's, plus a gathered key and value block and the int8 kernel's int16 q rows, their scales and factors, and its pairs' work. */
export function f32_attention_paged_scratch_bytes(headDim: i32, valueDim: i32): i32 {
  return f32_attention_scratch_bytes(headDim, valueDim) + 4 * ATT_BC * (headDim + valueDim) + 4 * ATT_BR * headDim + 8 * ATT_BR + 16 + PAIRS_WORK_BYTES;
}

/** Causal attention over float32 pages; see the file header for the exact contract. */
export function f32_attention_paged(
  q: usize, ldqHead: i32, ldqPos: i32, out: usize, ldoHead: i32, ldoPos: i32,
  positions: i32, group: i32, pagesK: usize, pagesV: usize, pageSize: i32, kOffset: i32, vOffset: i32,
  keyStart: i32, keyEnd: i32, headDim: i32, valueDim: i32,
  scale: f32, cap: f32, offset: i32, left: i32, rowStats: usize, scratch: usize, relaxedDot: bool,
): void {
  attentionPaged<f32>(q, ldqHead, ldqPos, out, ldoHead, ldoPos, positions, group, pagesK, pagesV, pageSize, kOffset, vOffset, keyStart, keyEnd, headDim, valueDim, scale, cap, offset, left, rowStats, scratch, relaxedDot);
}

/** Causal attention over float16 pages; see the file header. */
export function f16_attention_paged(
  q: usize, ldqHead: i32, ldqPos: i32, out: usize, ldoHead: i32, ldoPos: i32,
  positions: i32, group: i32, pagesK: usize, pagesV: usize, pageSize: i32, kOffset: i32, vOffset: i32,
  keyStart: i32, keyEnd: i32, headDim: i32, valueDim: i32,
  scale: f32, cap: f32, offset: i32, left: i32, rowStats: usize, scratch: usize, relaxedDot: bool,
): void {
  attentionPaged<u16>(q, ldqHead, ldqPos, out, ldoHead, ldoPos, positions, group, pagesK, pagesV, pageSize, kOffset, vOffset, keyStart, keyEnd, headDim, valueDim, scale, cap, offset, left, rowStats, scratch, relaxedDot);
}

/** Causal attention over int8 pages; see the file header. */
export function qs8_attention_paged(
  q: usize, ldqHead: i32, ldqPos: i32, out: usize, ldoHead: i32, ldoPos: i32,
  positions: i32, group: i32, pagesK: usize, pagesV: usize, pageSize: i32, kOffset: i32, vOffset: i32,
  keyStart: i32, keyEnd: i32, headDim: i32, valueDim: i32,
  scale: f32, cap: f32, offset: i32, left: i32, rowStats: usize, scratch: usize, relaxedDot: bool,
): void {
  attentionPaged<i8>(q, ldqHead, ldqPos, out, ldoHead, ldoPos, positions, group, pagesK, pagesV, pageSize, kOffset, vOffset, keyStart, keyEnd, headDim, valueDim, scale, cap, offset, left, rowStats, scratch, relaxedDot);
}

/** The three kernels' body, for pages of T (f32, u16 halves, i8). */
// @ts-ignore: decorator
@inline function attentionPaged<T>(
  q: usize, ldqHead: i32, ldqPos: i32, out: usize, ldoHead: i32, ldoPos: i32,
  positions: i32, group: i32, pagesK: usize, pagesV: usize, pageSize: i32, kOffset: i32, vOffset: i32,
  keyStart: i32, keyEnd: i32, headDim: i32, valueDim: i32,
  scale: f32, cap: f32, offset: i32, left: i32, rowStats: usize, scratch: usize, relaxedDot: bool,
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
  const kGather = tile + GEMM_TILE_BYTES;
  const vGather = kGather + ((<usize>ATT_BC * headDim) << 2);
  const q16 = vGather + ((<usize>ATT_BC * valueDim) << 2);
  const qHi = q16 + ((<usize>ATT_BR * headDim) << 1);
  const qLo = qHi + <usize>ATT_BR * headDim;
  const qScales = (qLo + <usize>ATT_BR * headDim + 15) & ~(<usize>15);
  const qPosts = qScales + ((<usize>ATT_BR) << 2);
  const pairsWork = qPosts + ((<usize>ATT_BR) << 2);
  const keyBytes = headDim * <i32>sizeof<T>(), valueBytes = valueDim * <i32>sizeof<T>();
  // int8 blocks: the scales after the rows (value rows in pairs)
  const kScalesAt = scalesOffset(pageSize, keyBytes), vScalesAt = scalesOffset((pageSize + 1) & ~1, valueBytes);
  const rows = positions * group;
  const pShift = 33 - clz(max(keyEnd - keyStart, 1));
  const pUnshift: f32 = reinterpret<f32>((127 + pShift) << 23);

  for (let r0 = 0; r0 < rows; r0 += ATT_BR) {
    const br = min(ATT_BR, rows - r0);
    const rowPath = br <= PAGED_ROW_PATH_MAX;
    // the row path takes rows four at a time: up to 3 more rows, zero, whose results are not used
    const brRows = rowPath ? (br + 3) & ~3 : br;
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
    if (brRows > br) memory.fill(qTileRows + ((<usize>br * headDim) << 2), 0, (<usize>(brRows - br) * headDim) << 2);
    if (sizeof<T>() == 1 && rowPath) quantizeQueryRows(qTileRows, brRows, headDim, q16, qHi, qLo, qScales, qPosts, relaxedDot);
    // float16 keys read raw (the halves times 2^-112) against q times 2^112, where that stays finite
    const rawHalves = sizeof<T>() == 2 && rowPath && scaleWithin(qTileRows, brRows, headDim, headDim, HALF_RAW_SCALE);
    if (!rowPath) prepareTileBlock(qTileRows, br, headDim, qPack, sTile);
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
          const kSeg = pageRow(pagesK, pageSize, kOffset, keyBytes, j);
          for (let r = 0; r < brRows; r += 4) {
            const sRows = sTile + ((<usize>r * ATT_BC + (j - j0)) << 2);
            if (sizeof<T>() == 1) {
              const kScales = pageScale(pagesK, pageSize, kOffset, kScalesAt, j);
              dotScoresQ8x4(q16 + ((<usize>r * headDim) << 1), qHi + <usize>r * headDim, qLo + <usize>r * headDim, qScales + (<usize>r << 2), qPosts + (<usize>r << 2), kSeg, kScales, seg, headDim, sRows, ATT_BC, relaxedDot);
            } else if (rawHalves) {
              dotScoresFloat4<i16>(qTileRows + ((<usize>r * headDim) << 2), kSeg, seg, headDim, sRows, ATT_BC);
            } else {
              dotScoresFloat4<T>(qTileRows + ((<usize>r * headDim) << 2), kSeg, seg, headDim, sRows, ATT_BC);
            }
          }
          j += seg;
        }
      } else {
        // gather the block's keys and values into contiguous float rows, then the GEMM tile path
        for (let j = j0; j < j0 + bc;) {
          const seg = min(j0 + bc - j, pageSize - j % pageSize);
          const kTo = kGather + ((<usize>(j - j0) * headDim) << 2), vTo = vGather + ((<usize>(j - j0) * valueDim) << 2);
          const kFrom = pageRow(pagesK, pageSize, kOffset, keyBytes, j);
          if (sizeof<T>() == 4) {
            memory.copy(kTo, kFrom, (<usize>seg * headDim) << 2);
            memory.copy(vTo, pageRow(pagesV, pageSize, vOffset, valueBytes, j), (<usize>seg * valueDim) << 2);
          } else if (sizeof<T>() == 2) {
            rowsToFloats<T>(kFrom, seg, headDim, 0, kTo);
            rowsToFloats<T>(pageRow(pagesV, pageSize, vOffset, valueBytes, j), seg, valueDim, 0, vTo);
          } else {
            rowsToFloats<T>(kFrom, seg, headDim, pageScale(pagesK, pageSize, kOffset, kScalesAt, j), kTo);
            pairRowsToFloats(pageRowPair(pagesV, pageSize, vOffset, valueDim, j), (j % pageSize) & 1, seg, valueDim, pageScale(pagesV, pageSize, vOffset, vScalesAt, j), vTo);
          }
          j += seg;
        }
        scoreTile(false, qTileRows, qPack, br, kGather, headDim, bc, headDim, kT, sTile, tile);
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
        let vPost: f32 = 1;
        if (sizeof<T>() == 1) {
          // int8 values: their scales go into the probabilities, p_r[j] · vs_j, page segment by page
          // segment; a block whose scales are all below 2^-60 takes them times 2^64 (exact: p·vs·2^64 < 4
          // since p <= 1/4), so its weights' 15-bit quantization (32767 / max) cannot overflow, and P·V
          // takes 2^-64 back
          let vsMax: f32 = 0;
          for (let j = j0; j < j0 + bc;) {
            const seg = min(j0 + bc - j, pageSize - j % pageSize);
            const scales = pageScale(pagesV, pageSize, vOffset, vScalesAt, j);
            for (let t = 0; t < seg; t++) vsMax = max(vsMax, load<f32>(scales + (<usize>t << 2)));
            j += seg;
          }
          const vPre: f32 = vsMax < TWO_MINUS_60 ? TWO_64 : 1;
          vPost = vsMax < TWO_MINUS_60 ? TWO_MINUS_64 : 1;
          const pre = f32x4.splat(vPre);
          for (let j = j0; j < j0 + bc;) {
            const seg = min(j0 + bc - j, pageSize - j % pageSize);
            const scales = pageScale(pagesV, pageSize, vOffset, vScalesAt, j);
            for (let r = 0; r < br; r++) {
              const row = sTile + ((<usize>r * ATT_BC + (j - j0)) << 2);
              let t = 0;
              for (; t + 4 <= seg; t += 4) v128.store(row + (<usize>t << 2), f32x4.mul(v128.load(row + (<usize>t << 2)), f32x4.mul(v128.load(scales + (<usize>t << 2)), pre)));
              for (; t < seg; t++) store<f32>(row + (<usize>t << 2), load<f32>(row + (<usize>t << 2)) * (load<f32>(scales + (<usize>t << 2)) * vPre));
            }
            j += seg;
          }
        }
        // float16 values read raw (the halves times 2^-112) against p times 2^112 (p <= 1, so always)
        const rawValues = sizeof<T>() == 2 && scaleWithin(sTile, brRows, bc, ATT_BC, HALF_RAW_SCALE);
        for (let r = 0; r < brRows; r += 4) {
          const pRows = sTile + ((<usize>r * ATT_BC) << 2), oRows = oTile + ((<usize>r * dvPad) << 2);
          if (sizeof<T>() == 1) addWeightedQ8Pairs4(pRows, ATT_BC, j0, bc, pagesV, pageSize, vOffset, valueDim, oRows, dvPad, pairsWork, vPost);
          else if (rawValues) addWeightedPaged4<i16>(pRows, ATT_BC, j0, bc, pagesV, pageSize, vOffset, valueDim, oRows, dvPad);
          else addWeightedPaged4<T>(pRows, ATT_BC, j0, bc, pagesV, pageSize, vOffset, valueDim, oRows, dvPad);
        }
        continue;
      }
      valueTile(br, bc, vGather, valueDim, valueDim, vPanels, sTile, oTile, tile);
    }
    for (let r = 0; r < br; r++) {
      const i = (r0 + r) / group, g = (r0 + r) % group;
      finishRow(oTile + ((<usize>r * dvPad) << 2), load<f32>(lRow + (<usize>r << 2)), load<f32>(mRow + (<usize>r << 2)),
        out + ((<usize>g * ldoHead + <usize>i * ldoPos) << 2), valueDim, rowStats == 0 ? 0 : rowStats + ((<usize>(r0 + r)) << 3), pUnshift);
    }
  }
}

/**
 * x[r][c] *= factor for r < rows, c < cols (rows ld floats apart), when every |x|·factor stays below
 * 2^127 (then returns true); otherwise changes nothing and returns false. factor is a power of two, so
 * the products are exact.
 */
function scaleWithin(x: usize, rows: i32, cols: i32, ld: i32, factor: f32): bool {
  let largest: f32 = 0;
  for (let r = 0; r < rows; r++) {
    const row = x + ((<usize>r * ld) << 2);
    let m = f32x4.splat(0.0);
    let c = 0;
    for (; c + 4 <= cols; c += 4) m = f32x4.pmax(m, f32x4.abs(v128.load(row + (<usize>c << 2))));
    largest = max(largest, max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3))));
    for (; c < cols; c++) largest = max(largest, abs(load<f32>(row + (<usize>c << 2))));
  }
  if (!(largest * factor < 1.7e38)) return false;
  const f = f32x4.splat(factor);
  for (let r = 0; r < rows; r++) {
    const row = x + ((<usize>r * ld) << 2);
    let c = 0;
    for (; c + 4 <= cols; c += 4) v128.store(row + (<usize>c << 2), f32x4.mul(v128.load(row + (<usize>c << 2)), f));
    for (; c < cols; c++) store<f32>(row + (<usize>c << 2), load<f32>(row + (<usize>c << 2)) * factor);
  }
  return true;
}
