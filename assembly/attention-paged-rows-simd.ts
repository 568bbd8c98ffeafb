// The row path of the paged attention kernel (attention-paged-simd.ts): decode blocks of at most a few
// query rows read K and V where they lie in their pages, four query rows per load, converting each
// element to float in registers: no copy of the history, dequantized or not, is ever made. One
// template for the page element types T: f32, u16 (float16 bit patterns), i16 (float16 bit patterns
// read raw, as the halves times 2^-112, for callers that put 2^112 into the other factor) and i8 (int8
// with a float32 scale per row):
//   dotScoresFloat4<T>: s_r[j] = q_r · k_j                        T = f32, u16 or i16
//   dotScoresQ8x4:      s_r[j] = (qs_r·q_r) · (ks_j·k8_j)          int8 keys, q quantized to 14 bits
//   addWeightedPaged4<T>: o_r += sum_j p_r[j] v_j                 T = f32, u16 or i16
//   addWeightedQ8Pairs4:  o_r += sum_j w_r[j] v_j                 int8 values in pairs, w = p·vs to 15 bits
// for four rows r and keys j of one page run. Pages hold no subnormal float32 and no infinity or NaN
// (the pool stores none), so no load pays for a flush.
import { madd } from './f32-vmath-simd';
import { halfAt, halfRawAt, halvesHigh, halvesHighRaw, halvesLow, halvesLowRaw } from './f16-convert-simd';
import { storeColumn, sums4 } from './f32-attention-rows-simd';
import { pageRow, pageRowPair } from './page-table';

/** 2^64, 2^-64 and 2^-60: the exact factors by which the int8 kernel takes tiny query rows and tiny
 * value scales into the range of its integer quantization, and back. */
// @ts-ignore: decorator
@inline export const TWO_64: f32 = reinterpret<f32>(0x5f800000);
// @ts-ignore: decorator
@inline export const TWO_MINUS_64: f32 = reinterpret<f32>(0x1f800000);
// @ts-ignore: decorator
@inline export const TWO_MINUS_60: f32 = reinterpret<f32>(0x21800000);

/** Element i of a row at `row` as a float (int8: before its scale). */
// @ts-ignore: decorator
@inline export function elementAt<T>(row: usize, i: i32): f32 {
  if (sizeof<T>() == 4) return load<f32>(row + ((<usize>i) << 2));
  if (sizeof<T>() == 2) return isSigned<T>() ? halfRawAt(row + ((<usize>i) << 1)) : halfAt(row + ((<usize>i) << 1));
  return <f32>load<i8>(row + <usize>i);
}

/** Elements 0..3 (x) and 4..7 (y) of the eight at `at` as floats (int8: before its scale). */
// @ts-ignore: decorator
@inline function load8Low<T>(at: usize): v128 {
  if (sizeof<T>() == 4) return v128.load(at);
  if (sizeof<T>() == 2) return isSigned<T>() ? halvesLowRaw(v128.load(at)) : halvesLow(v128.load(at));
  return f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(v128.load8x8_s(at)));
}

// @ts-ignore: decorator
@inline function load8High<T>(at: usize): v128 {
  if (sizeof<T>() == 4) return v128.load(at, 16);
  if (sizeof<T>() == 2) return isSigned<T>() ? halvesHighRaw(v128.load(at)) : halvesHigh(v128.load(at));
  return f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(v128.load8x8_s(at)));
}

/**
 * s_r[j] = q_r·k_j for four query rows (float32, headDim apart; score rows lds floats apart) and n
 * keys of headDim elements each, one after another from k (one page run). One key at a time, front to
 * back, so the loads walk memory in order; each load of a key serves the four rows, its low and high
 * four of every eight elements feeding separate accumulators (eight chains in flight).
 */
export function dotScoresFloat4<T>(q: usize, k: usize, n: i32, headDim: i32, s: usize, lds: i32): void {
  const qStride = (<usize>headDim) << 2;
  const kStride = <usize>headDim * sizeof<T>();
  const sStride = (<usize>lds) << 2;
  const vecEnd = headDim & ~7;
  const q1 = q + qStride, q2 = q1 + qStride, q3 = q2 + qStride;
  for (let j = 0; j < n; j++) {
    const kj = k + <usize>j * kStride;
    let a0 = f32x4.splat(0.0), a1 = f32x4.splat(0.0), a2 = f32x4.splat(0.0), a3 = f32x4.splat(0.0);
    let b0 = f32x4.splat(0.0), b1 = f32x4.splat(0.0), b2 = f32x4.splat(0.0), b3 = f32x4.splat(0.0);
    for (let d = 0; d < vecEnd; d += 8) {
      const at = kj + <usize>d * sizeof<T>();
      const x = load8Low<T>(at), y = load8High<T>(at);
      const off = <usize>d << 2;
      a0 = madd(v128.load(q + off), x, a0); b0 = madd(v128.load(q + off, 16), y, b0);
      a1 = madd(v128.load(q1 + off), x, a1); b1 = madd(v128.load(q1 + off, 16), y, b1);
      a2 = madd(v128.load(q2 + off), x, a2); b2 = madd(v128.load(q2 + off, 16), y, b2);
      a3 = madd(v128.load(q3 + off), x, a3); b3 = madd(v128.load(q3 + off, 16), y, b3);
    }
    let sums = sums4(f32x4.add(a0, b0), f32x4.add(a1, b1), f32x4.add(a2, b2), f32x4.add(a3, b3));
    for (let d = vecEnd; d < headDim; d++) {
      const off = <usize>d << 2;
      const qd = f32x4(load<f32>(q + off), load<f32>(q1 + off), load<f32>(q2 + off), load<f32>(q3 + off));
      sums = madd(qd, f32x4.splat(elementAt<T>(kj, d)), sums);
    }
    storeColumn(s, sStride, j, sums);
  }
}

/**
 * The largest |q| of a query row quantized for int8 keys: 8191 (14 bits, so q + 8192 splits into two
 * 7-bit halves for the relaxed build's 8-bit dots), less for head dims past 1032, so that every int32
 * sum below (up to headDim·127·16383) stays exact.
 */
export function queryQuantMax(headDim: i32): f32 {
  return <f32>min(8191, 2147483647 / (127 * 2 * max(headDim, 1)));
}

/**
 * Quantizes `rows` float query rows (headDim apart) for the int8 kernel, one scale per row:
 * qs = absmax / queryQuantMax, q = round(x / qs), stored as int16 rows at q16 (headDim apart). The
 * relaxed build, when `split` (it will use its 8-bit dots), also stores q + 8192 = 128·hi + lo split
 * in 7-bit halves, as bytes at qHi and qLo (rows headDim apart; whole sixteens): the unsigned operands
 * of its 8-bit dots. A row of zeros gets
 * scale 0; a row with a NaN or an infinity gets scale NaN, so that its scores (and no other row's)
 * are NaN, as over float pages. A row below 2^-64 (where queryQuantMax / absmax could overflow) is
 * quantized times 2^64, exactly, and its `posts` entry, 2^-64 (else 1), takes that back from its
 * scores (dotScoresQ8x4).
 */
export function quantizeQueryRows(q: usize, rows: i32, headDim: i32, q16: usize, qHi: usize, qLo: usize, scales: usize, posts: usize, split: bool): void {
  const top = queryQuantMax(headDim);
  for (let r = 0; r < rows; r++) {
    const row = q + ((<usize>r * headDim) << 2);
    const out = q16 + ((<usize>r * headDim) << 1);
    // max, not pmax: a NaN anywhere in the row makes absmax NaN
    let m = f32x4.splat(0.0);
    let d = 0;
    for (; d + 4 <= headDim; d += 4) m = f32x4.max(m, f32x4.abs(v128.load(row + (<usize>d << 2))));
    let absmax = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
    for (; d < headDim; d++) absmax = max(absmax, abs(load<f32>(row + (<usize>d << 2))));
    let pre: f32 = 1, post: f32 = 1, inverse: f32 = 0, qs: f32 = 0;
    if (!isFinite(absmax)) {
      qs = NaN;
    } else if (absmax > 0) {
      if (absmax < TWO_MINUS_64) {
        pre = TWO_64;
        post = TWO_MINUS_64;
      }
      inverse = top / (absmax * pre);
      qs = (absmax * pre) / top;
    }
    store<f32>(scales + (<usize>r << 2), qs);
    store<f32>(posts + (<usize>r << 2), post);
    const vi = f32x4.splat(inverse), vp = f32x4.splat(pre);
    d = 0;
    for (; d + 8 <= headDim; d += 8) {
      const lo = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(f32x4.mul(v128.load(row + (<usize>d << 2)), vp), vi)));
      const hi = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(f32x4.mul(v128.load(row + (<usize>d << 2), 16), vp), vi)));
      v128.store(out + (<usize>d << 1), i16x8.narrow_i32x4_s(lo, hi));
    }
    for (; d < headDim; d++) {
      const x = nearest(load<f32>(row + (<usize>d << 2)) * pre * inverse);
      store<i16>(out + (<usize>d << 1), <i16>(isFinite(x) ? <i32>x : 0));
    }
    if (ASC_FEATURE_RELAXED_SIMD && split) {
      // q + 8192 (1..16383) as 128·hi + lo, sixteen at a time (the 8-bit dots take whole sixteens)
      const at = <usize>r * headDim;
      const bias = i16x8.splat(8192), low7 = i16x8.splat(127);
      for (d = 0; d + 16 <= headDim; d += 16) {
        const a = i16x8.add(v128.load(out + (<usize>d << 1)), bias), b = i16x8.add(v128.load(out + (<usize>d << 1), 16), bias);
        v128.store(qHi + at + <usize>d, i8x16.narrow_i16x8_u(i16x8.shr_u(a, 7), i16x8.shr_u(b, 7)));
        v128.store(qLo + at + <usize>d, i8x16.narrow_i16x8_u(v128.and(a, low7), v128.and(b, low7)));
      }
    }
  }
}

/** [sum a0, sum a1, sum a2, sum a3] of four int32 vectors. */
// @ts-ignore: decorator
@inline function isums4(a0: v128, a1: v128, a2: v128, a3: v128): v128 {
  const t01 = i32x4.add(v128.shuffle<i32>(a0, a1, 0, 4, 1, 5), v128.shuffle<i32>(a0, a1, 2, 6, 3, 7));
  const t23 = i32x4.add(v128.shuffle<i32>(a2, a3, 0, 4, 1, 5), v128.shuffle<i32>(a2, a3, 2, 6, 3, 7));
  return i32x4.add(v128.shuffle<i32>(t01, t23, 0, 1, 4, 5), v128.shuffle<i32>(t01, t23, 2, 3, 6, 7));
}

/**
 * s_r[j] = (qs_r · ks_j) · (q_r · k8_j) for four query rows quantized by quantizeQueryRows (their
 * scales at qScales; rows headDim apart) and n int8 keys of one page run (headDim bytes apart, their
 * scales at kScales). The dots are exact int32 sums, each key loaded once for the four rows:
 * - simd build: eight products per i32x4.dot_i16x8_s, keys widened to int16;
 * - relaxed build, when the caller says the runtime computes them exactly (`relaxedDot`): sixteen per i32x4.relaxed_dot_i8x16_i7x16_add_s (one VNNI
 *   instruction on CPUs that have it), whose second operand must be 0..127: q·k = 128·(hi·k) + lo·k -
 *   8192·sum(k), with sum(k) from one more dot against ones.
 * Both give the same bits (the sums are exact). Each row's dots take its `qPosts` factor (2^-64 for
 * a row quantizeQueryRows scaled up, else 1) before qs_r·ks_j, which is capped at float32's largest
 * finite value: a dot of 0 (a huge q orthogonal to a huge key) then scores 0, not 0·Infinity = NaN,
 * while a NaN scale (a NaN or infinite q) stays NaN.
 */
export function dotScoresQ8x4(q16: usize, qHi: usize, qLo: usize, qScales: usize, qPosts: usize, k: usize, kScales: usize, n: i32, headDim: i32, s: usize, lds: i32, relaxedDot: bool): void {
  const sStride = (<usize>lds) << 2;
  const qs = v128.load(qScales), post = v128.load(qPosts);
  const largest = f32x4.splat(f32.MAX_VALUE);
  if (ASC_FEATURE_RELAXED_SIMD && relaxedDot) {
    const qStride = <usize>headDim;
    const vecEnd = headDim & ~15;
    const h1 = qHi + qStride, h2 = h1 + qStride, h3 = h2 + qStride;
    const l1 = qLo + qStride, l2 = l1 + qStride, l3 = l2 + qStride;
    const ones = i8x16.splat(1);
    for (let j = 0; j < n; j++) {
      const kj = k + <usize>j * <usize>headDim;
      let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
      let b0 = i32x4.splat(0), b1 = i32x4.splat(0), b2 = i32x4.splat(0), b3 = i32x4.splat(0);
      let sum = i32x4.splat(0);
      for (let d = 0; d < vecEnd; d += 16) {
        const x = v128.load(kj + <usize>d);
        const off = <usize>d;
        sum = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, ones, sum);
        a0 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(qHi + off), a0); b0 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(qLo + off), b0);
        a1 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(h1 + off), a1); b1 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(l1 + off), b1);
        a2 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(h2 + off), a2); b2 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(l2 + off), b2);
        a3 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(h3 + off), a3); b3 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x, v128.load(l3 + off), b3);
      }
      const sums = isums4(sum, sum, sum, sum);
      let dots = i32x4.sub(i32x4.add(i32x4.shl(isums4(a0, a1, a2, a3), 7), isums4(b0, b1, b2, b3)), i32x4.shl(sums, 13));
      dots = i32x4.add(dots, tailDots4(q16, headDim, kj, vecEnd));
      storeColumn(s, sStride, j, f32x4.mul(f32x4.mul(f32x4.convert_i32x4_s(dots), post), f32x4.min(f32x4.mul(qs, v128.load32_splat(kScales + (<usize>j << 2))), largest)));
    }
    return;
  }
  const qStride = (<usize>headDim) << 1;
  const vecEnd = headDim & ~7;
  const q1 = q16 + qStride, q2 = q1 + qStride, q3 = q2 + qStride;
  for (let j = 0; j < n; j++) {
    const kj = k + <usize>j * <usize>headDim;
    let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
    for (let d = 0; d < vecEnd; d += 8) {
      const x = v128.load8x8_s(kj + <usize>d);
      const off = <usize>d << 1;
      a0 = i32x4.add(a0, i32x4.dot_i16x8_s(v128.load(q16 + off), x));
      a1 = i32x4.add(a1, i32x4.dot_i16x8_s(v128.load(q1 + off), x));
      a2 = i32x4.add(a2, i32x4.dot_i16x8_s(v128.load(q2 + off), x));
      a3 = i32x4.add(a3, i32x4.dot_i16x8_s(v128.load(q3 + off), x));
    }
    const dots = i32x4.add(isums4(a0, a1, a2, a3), tailDots4(q16, headDim, kj, vecEnd));
    storeColumn(s, sStride, j, f32x4.mul(f32x4.mul(f32x4.convert_i32x4_s(dots), post), f32x4.min(f32x4.mul(qs, v128.load32_splat(kScales + (<usize>j << 2))), largest)));
  }
}

/** [q_r·k] for r < 4 over the dims vecEnd <= d < headDim (int16 q rows headDim apart, int8 k), exact. */
// @ts-ignore: decorator
@inline function tailDots4(q16: usize, headDim: i32, kj: usize, vecEnd: i32): v128 {
  const qStride = (<usize>headDim) << 1;
  let dots = i32x4.splat(0);
  for (let d = vecEnd; d < headDim; d++) {
    const off = <usize>d << 1;
    const qd = i32x4(<i32>load<i16>(q16 + off), <i32>load<i16>(q16 + qStride + off), <i32>load<i16>(q16 + 2 * qStride + off), <i32>load<i16>(q16 + 3 * qStride + off));
    dots = i32x4.add(dots, i32x4.mul(qd, i32x4.splat(<i32>load<i8>(kj + <usize>d))));
  }
  return dots;
}

/**
 * Loads the first 4 bytes of every 64-byte line of rows j0 .. end of this head's part of their pages,
 * in memory order (a prefetch: WASM has no prefetch instruction; each load lies inside the rows);
 * folds them into the word at `sink` with an AND by zero, so the loads stay and `sink` does not change.
 */
export function touchRows(pages: usize, pageSize: i32, partOffset: i32, rowBytes: i32, j0: i32, end: i32, sink: usize): void {
  let seen: u32 = 0;
  for (let j = j0; j < end;) {
    const segEnd = min(end, j - j % pageSize + pageSize);
    const from = pageRow(pages, pageSize, partOffset, rowBytes, j);
    const to = from + <usize>(segEnd - j) * <usize>rowBytes;
    for (let line = from; line < to; line += 64) seen |= load<u32>(line);
    j = segEnd;
  }
  store<u32>(sink, load<u32>(sink) | (seen & 0));
}

/**
 * o_r += sum_j p_r[j] v_j for four rows at once over values j0 .. j0+n of their pages (p rows lds
 * floats apart, p column 0 is key j0; accumulator rows ldo apart). Eight columns of the four rows stay
 * in registers across all the keys, page after page, and each value row is loaded (and converted)
 * once for the four rows. int8 values enter without their scales: the caller multiplied p by them.
 */
export function addWeightedPaged4<T>(p: usize, lds: i32, j0: i32, n: i32, pages: usize, pageSize: i32, vOffset: i32, valueDim: i32, o: usize, ldo: i32): void {
  const rowBytes = valueDim * <i32>sizeof<T>();
  const pStride = (<usize>lds) << 2;
  const oStride = (<usize>ldo) << 2;
  const p1 = p + pStride, p2 = p1 + pStride, p3 = p2 + pStride;
  const o1 = o + oStride, o2 = o1 + oStride, o3 = o2 + oStride;
  const end = j0 + n;
  // one pass over the block's value rows in memory order first, so the column passes below (which read
  // each row 32 bytes at a time, rows apart) find them in cache: 1.10x on a pool's decode step
  touchRows(pages, pageSize, vOffset, rowBytes, j0, end, o);
  let c = 0;
  for (; c + 8 <= valueDim; c += 8) {
    const off = <usize>c << 2;
    let a0 = v128.load(o + off), b0 = v128.load(o + off, 16);
    let a1 = v128.load(o1 + off), b1 = v128.load(o1 + off, 16);
    let a2 = v128.load(o2 + off), b2 = v128.load(o2 + off, 16);
    let a3 = v128.load(o3 + off), b3 = v128.load(o3 + off, 16);
    for (let j = j0; j < end;) {
      const segEnd = min(end, j - j % pageSize + pageSize);
      let vp = pageRow(pages, pageSize, vOffset, rowBytes, j) + <usize>c * sizeof<T>();
      for (; j < segEnd; j++) {
        const x = load8Low<T>(vp), y = load8High<T>(vp);
        const pj = (<usize>(j - j0)) << 2;
        const w0 = v128.load32_splat(p + pj), w1 = v128.load32_splat(p1 + pj), w2 = v128.load32_splat(p2 + pj), w3 = v128.load32_splat(p3 + pj);
        a0 = madd(w0, x, a0); b0 = madd(w0, y, b0);
        a1 = madd(w1, x, a1); b1 = madd(w1, y, b1);
        a2 = madd(w2, x, a2); b2 = madd(w2, y, b2);
        a3 = madd(w3, x, a3); b3 = madd(w3, y, b3);
        vp += <usize>rowBytes;
      }
    }
    v128.store(o + off, a0); v128.store(o + off, b0, 16);
    v128.store(o1 + off, a1); v128.store(o1 + off, b1, 16);
    v128.store(o2 + off, a2); v128.store(o2 + off, b2, 16);
    v128.store(o3 + off, a3); v128.store(o3 + off, b3, 16);
  }
  // the last columns, one at a time for the four rows
  for (; c < valueDim; c++) {
    const off = <usize>c << 2;
    let sum = f32x4(load<f32>(o + off), load<f32>(o1 + off), load<f32>(o2 + off), load<f32>(o3 + off));
    for (let j = j0; j < end; j++) {
      const pj = (<usize>(j - j0)) << 2;
      const w = f32x4(load<f32>(p + pj), load<f32>(p1 + pj), load<f32>(p2 + pj), load<f32>(p3 + pj));
      sum = madd(w, f32x4.splat(elementAt<T>(pageRow(pages, pageSize, vOffset, rowBytes, j), c)), sum);
    }
    store<f32>(o + off, f32x4.extract_lane(sum, 0));
    store<f32>(o1 + off, f32x4.extract_lane(sum, 1));
    store<f32>(o2 + off, f32x4.extract_lane(sum, 2));
    store<f32>(o3 + off, f32x4.extract_lane(sum, 3));
  }
}

/** Most pairs of value rows one block of ATT_BC keys can touch (pages of 1: one pair per key). */
export const MAX_BLOCK_PAIRS: i32 = 128;

/** Scratch bytes addWeightedQ8Pairs4 takes: a pair's address and its weights for four rows, per pair. */
export const PAIRS_WORK_BYTES: i32 = MAX_BLOCK_PAIRS * 4 * 5;

/**
 * o_r += sum_j w_r[j] v_j for four rows over int8 values j0 .. j0+n of their pages, held in interleaved
 * pairs of rows (pages.ts): w_r = p_r (already times the value scales; p rows lds floats apart,
 * column 0 is key j0) quantized per row to 15 bits, w16 = round(w · 32767 / max_j w_r[j]), so that
 * one i32x4.dot_i16x8_s weighs two positions of four columns, exactly in int32 (at most 128 keys of
 * 32767·127: below 2^31); each row's sums then go into o (rows ldo floats apart) times max / 32767.
 * `work` holds the block's pairs: their addresses and each row's two weights per pair (PAIRS_WORK_BYTES).
 * The sums take `post` too (exactly: a power of two): 2^-64 when the caller gave p times the value
 * scales times 2^64 (a block of tiny scales, whose weights' 32767 / max would overflow), else 1.
 */
export function addWeightedQ8Pairs4(p: usize, lds: i32, j0: i32, n: i32, pages: usize, pageSize: i32, vOffset: i32, valueDim: i32, o: usize, ldo: i32, work: usize, post: f32): void {
  const pStride = (<usize>lds) << 2;
  const oStride = (<usize>ldo) << 2;
  const end = j0 + n;
  // each row's weight scale
  let inverse = f32x4.splat(0.0), factor = f32x4.splat(0.0);
  for (let r = 0; r < 4; r++) {
    let m = f32x4.splat(0.0);
    const row = p + <usize>r * pStride;
    let j = 0;
    for (; j + 4 <= n; j += 4) m = f32x4.pmax(m, v128.load(row + (<usize>j << 2)));
    let wmax = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
    for (; j < n; j++) wmax = max(wmax, load<f32>(row + (<usize>j << 2)));
    const inv: f32 = 32767 / wmax;
    const ok = wmax > 0 && isFinite(inv);
    store<f32>(work + (<usize>r << 2), ok ? inv : 0);
    store<f32>(work + 16 + (<usize>r << 2), ok ? wmax / 32767 : 0);
  }
  inverse = v128.load(work);
  factor = v128.load(work, 16);
  // the block's pairs, page segment by page segment: their addresses, and for each row the two
  // weights (0 for a row of the pair outside j0 .. end or past the page)
  const addrs = work;
  const weights = work + ((<usize>MAX_BLOCK_PAIRS) << 2);
  const wStride = (<usize>MAX_BLOCK_PAIRS) << 2;
  let pairs = 0;
  if ((pageSize & 1) == 0) {
    // pages of an even size start at even keys, so pair k holds keys first + 2k and first + 2k + 1
    const first = j0 & ~1;
    pairs = (end - first + 1) >> 1;
    // each row's weights as int16, key j at element j - first: eight at a time, the block's edges zero
    const skip = j0 - first;
    for (let r = 0; r < 4; r++) {
      const row = p + <usize>r * pStride;
      const w = weights + <usize>r * wStride;
      const inv = f32x4.splat(load<f32>(work + (<usize>r << 2)));
      store<i16>(w, 0);
      store<i16>(w + ((<usize>(pairs * 2 - 1)) << 1), 0);
      let t = 0;
      for (; t + 8 <= n; t += 8) {
        const lo = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(row + (<usize>t << 2)), inv)));
        const hi = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(row + (<usize>t << 2), 16), inv)));
        v128.store(w + ((<usize>(t + skip)) << 1), i16x8.narrow_i32x4_s(lo, hi));
      }
      for (; t < n; t++) store<i16>(w + ((<usize>(t + skip)) << 1), <i16>(<i32>nearest(load<f32>(row + (<usize>t << 2)) * f32x4.extract_lane(inv, 0))));
    }
    // then (over the scales at work, read above) the pairs' addresses
    for (let j = first; j < end;) {
      const segEnd = min(end, j - j % pageSize + pageSize);
      let at = pageRowPair(pages, pageSize, vOffset, valueDim, j);
      for (let k = (j - first) >> 1; k < (segEnd - first + 1) >> 1; k++) {
        store<u32>(addrs + (<usize>k << 2), <u32>at);
        at += <usize>valueDim << 1;
      }
      j = segEnd;
    }
  } else {
    for (let j = j0; j < end;) {
      const row0 = j % pageSize;
      const segEnd = min(end, j - row0 + pageSize);
      const first = j - (row0 & 1);
      for (let a = first; a < segEnd; a += 2) {
        store<u32>(addrs + (<usize>pairs << 2), <u32>pageRowPair(pages, pageSize, vOffset, valueDim, a));
        const inA = a >= j, inB = a + 1 < segEnd;
        const wa = inA ? i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(f32x4(
          load<f32>(p + ((<usize>(a - j0)) << 2)), load<f32>(p + pStride + ((<usize>(a - j0)) << 2)),
          load<f32>(p + 2 * pStride + ((<usize>(a - j0)) << 2)), load<f32>(p + 3 * pStride + ((<usize>(a - j0)) << 2))), inverse))) : i32x4.splat(0);
        const wb = inB ? i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(f32x4(
          load<f32>(p + ((<usize>(a + 1 - j0)) << 2)), load<f32>(p + pStride + ((<usize>(a + 1 - j0)) << 2)),
          load<f32>(p + 2 * pStride + ((<usize>(a + 1 - j0)) << 2)), load<f32>(p + 3 * pStride + ((<usize>(a + 1 - j0)) << 2))), inverse))) : i32x4.splat(0);
        // per row r: the i32 (wa_r & 0xffff) | (wb_r << 16), two int16 weights in dot_i16x8_s's order
        const packed = v128.or(v128.and(wa, i32x4.splat(0xffff)), i32x4.shl(wb, 16));
        store<i32>(weights + (<usize>pairs << 2), i32x4.extract_lane(packed, 0));
        store<i32>(weights + wStride + (<usize>pairs << 2), i32x4.extract_lane(packed, 1));
        store<i32>(weights + 2 * wStride + (<usize>pairs << 2), i32x4.extract_lane(packed, 2));
        store<i32>(weights + 3 * wStride + (<usize>pairs << 2), i32x4.extract_lane(packed, 3));
        pairs++;
      }
      j = segEnd;
    }
  }
  const w1 = weights + wStride, w2 = w1 + wStride, w3 = w2 + wStride;
  const o1 = o + oStride, o2 = o1 + oStride, o3 = o2 + oStride;
  const f0 = f32x4.splat(f32x4.extract_lane(factor, 0)), f1 = f32x4.splat(f32x4.extract_lane(factor, 1));
  const f2 = f32x4.splat(f32x4.extract_lane(factor, 2)), f3 = f32x4.splat(f32x4.extract_lane(factor, 3));
  const vpost = f32x4.splat(post);
  let c = 0;
  for (; c + 8 <= valueDim; c += 8) {
    let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
    let b0 = i32x4.splat(0), b1 = i32x4.splat(0), b2 = i32x4.splat(0), b3 = i32x4.splat(0);
    for (let k = 0; k < pairs; k++) {
      const x = v128.load(<usize>load<u32>(addrs + (<usize>k << 2)) + (<usize>c << 1));
      const lo = i16x8.extend_low_i8x16_s(x), hi = i16x8.extend_high_i8x16_s(x);
      const at = <usize>k << 2;
      const v0 = v128.load32_splat(weights + at), v1 = v128.load32_splat(w1 + at), v2 = v128.load32_splat(w2 + at), v3 = v128.load32_splat(w3 + at);
      a0 = i32x4.add(a0, i32x4.dot_i16x8_s(lo, v0)); b0 = i32x4.add(b0, i32x4.dot_i16x8_s(hi, v0));
      a1 = i32x4.add(a1, i32x4.dot_i16x8_s(lo, v1)); b1 = i32x4.add(b1, i32x4.dot_i16x8_s(hi, v1));
      a2 = i32x4.add(a2, i32x4.dot_i16x8_s(lo, v2)); b2 = i32x4.add(b2, i32x4.dot_i16x8_s(hi, v2));
      a3 = i32x4.add(a3, i32x4.dot_i16x8_s(lo, v3)); b3 = i32x4.add(b3, i32x4.dot_i16x8_s(hi, v3));
    }
    const off = <usize>c << 2;
    v128.store(o + off, madd(sumsOf(a0, vpost), f0, v128.load(o + off))); v128.store(o + off, madd(sumsOf(b0, vpost), f0, v128.load(o + off, 16)), 16);
    v128.store(o1 + off, madd(sumsOf(a1, vpost), f1, v128.load(o1 + off))); v128.store(o1 + off, madd(sumsOf(b1, vpost), f1, v128.load(o1 + off, 16)), 16);
    v128.store(o2 + off, madd(sumsOf(a2, vpost), f2, v128.load(o2 + off))); v128.store(o2 + off, madd(sumsOf(b2, vpost), f2, v128.load(o2 + off, 16)), 16);
    v128.store(o3 + off, madd(sumsOf(a3, vpost), f3, v128.load(o3 + off))); v128.store(o3 + off, madd(sumsOf(b3, vpost), f3, v128.load(o3 + off, 16)), 16);
  }
  // the last columns, one at a time for the four rows
  for (; c < valueDim; c++) {
    let sums = i32x4.splat(0);
    for (let k = 0; k < pairs; k++) {
      const at = <usize>load<u32>(addrs + (<usize>k << 2)) + (<usize>c << 1);
      const w = i32x4(load<i32>(weights + (<usize>k << 2)), load<i32>(w1 + (<usize>k << 2)), load<i32>(w2 + (<usize>k << 2)), load<i32>(w3 + (<usize>k << 2)));
      const wa = i32x4.shr_s(i32x4.shl(w, 16), 16), wb = i32x4.shr_s(w, 16);
      sums = i32x4.add(sums, i32x4.add(i32x4.mul(wa, i32x4.splat(<i32>load<i8>(at))), i32x4.mul(wb, i32x4.splat(<i32>load<i8>(at + 1)))));
    }
    const add = f32x4.mul(sumsOf(sums, vpost), factor);
    const off = <usize>c << 2;
    store<f32>(o + off, load<f32>(o + off) + f32x4.extract_lane(add, 0));
    store<f32>(o1 + off, load<f32>(o1 + off) + f32x4.extract_lane(add, 1));
    store<f32>(o2 + off, load<f32>(o2 + off) + f32x4.extract_lane(add, 2));
    store<f32>(o3 + off, load<f32>(o3 + off) + f32x4.extract_lane(add, 3));
  }
}

/** Exact int32 sums as floats times `post` (a power of two, so exact too). */
// @ts-ignore: decorator
@inline function sumsOf(sums: v128, post: v128): v128 {
  return f32x4.mul(f32x4.convert_i32x4_s(sums), post);
}

/** dst rows = float(int8 value rows) · their scales for `rows` rows of `width` of one page run held in interleaved pairs (the first row `odd` = 1 when it is the second of its pair). */
export function pairRowsToFloats(src: usize, odd: i32, rows: i32, width: i32, scales: usize, dst: usize): void {
  for (let r = 0; r < rows; r++) {
    const t = r + odd;
    const from = src + <usize>(t >> 1) * (<usize>width << 1) + <usize>(t & 1);
    const to = dst + ((<usize>r * width) << 2);
    const scale = load<f32>(scales + (<usize>r << 2));
    for (let d = 0; d < width; d++) store<f32>(to + (<usize>d << 2), <f32>load<i8>(from + (<usize>d << 1)) * scale);
  }
}

/** dst row r = float(src row r) (· scales[r] for int8) for `rows` rows of `width` elements, packed both sides. */
export function rowsToFloats<T>(src: usize, rows: i32, width: i32, scales: usize, dst: usize): void {
  for (let r = 0; r < rows; r++) {
    const from = src + <usize>r * <usize>width * sizeof<T>();
    const to = dst + ((<usize>r * width) << 2);
    const scale = sizeof<T>() == 1 ? f32x4.splat(load<f32>(scales + (<usize>r << 2))) : f32x4.splat(1.0);
    let d = 0;
    for (; d + 8 <= width; d += 8) {
      const at = from + <usize>d * sizeof<T>();
      let x = load8Low<T>(at), y = load8High<T>(at);
      if (sizeof<T>() == 1) {
        x = f32x4.mul(x, scale);
        y = f32x4.mul(y, scale);
      }
      v128.store(to + (<usize>d << 2), x);
      v128.store(to + (<usize>d << 2), y, 16);
    }
    for (; d < width; d++) store<f32>(to + (<usize>d << 2), elementAt<T>(from, d) * f32x4.extract_lane(scale, 0));
  }
}
