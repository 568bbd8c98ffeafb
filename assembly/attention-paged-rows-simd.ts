// The row path of the paged attention kernel (attention-paged-simd.ts): decode blocks of at most a few
// query rows read K and V where they lie in their pages, four query rows per load, converting each
// element to float in registers: no copy of the history, dequantized or not, is ever made. One
// template for the page element types T: f32, u16 (float16 bit patterns) and i8 (int8 with a float32
// scale per row):
//   dotScoresFloat4<T>: s_r[j] = q_r · k_j                        T = f32 or u16
//   dotScoresQ8x4:      s_r[j] = (qs_r·q_r) · (ks_j·k8_j)          int8 keys, q quantized to 14 bits
//   addWeightedPaged4<T>: o_r += sum_j p_r[j] v_j                 (int8: p already times the value scales)
// for four rows r and keys j of one page run. Pages hold no subnormal float32 and no infinity or NaN
// (the pool stores none), so no load pays for a flush.
import { madd } from './f32-vmath-simd';
import { halfAt, halvesHigh, halvesLow } from './f16-convert-simd';
import { storeColumn, sums4 } from './f32-attention-rows-simd';
import { pageRow } from './page-table';

/** Element i of a row at `row` as a float (int8: before its scale). */
// @ts-ignore: decorator
@inline export function elementAt<T>(row: usize, i: i32): f32 {
  if (sizeof<T>() == 4) return load<f32>(row + ((<usize>i) << 2));
  if (sizeof<T>() == 2) return halfAt(row + ((<usize>i) << 1));
  return <f32>load<i8>(row + <usize>i);
}

/** Elements 0..3 (x) and 4..7 (y) of the eight at `at` as floats (int8: before its scale). */
// @ts-ignore: decorator
@inline function load8Low<T>(at: usize): v128 {
  if (sizeof<T>() == 4) return v128.load(at);
  if (sizeof<T>() == 2) return halvesLow(v128.load(at));
  return f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(v128.load8x8_s(at)));
}

// @ts-ignore: decorator
@inline function load8High<T>(at: usize): v128 {
  if (sizeof<T>() == 4) return v128.load(at, 16);
  if (sizeof<T>() == 2) return halvesHigh(v128.load(at));
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
 * relaxed build also stores q + 8192 split in 7-bit halves, q + 8192 = 128·hi + lo, as bytes at
 * qHi and qLo (rows headDim apart): the unsigned operands of its 8-bit dots. A row whose scale would
 * not be a normal float (absmax 0, or so small that 1 / qs overflows) becomes zeros with scale 0.
 */
export function quantizeQueryRows(q: usize, rows: i32, headDim: i32, q16: usize, qHi: usize, qLo: usize, scales: usize): void {
  const top = queryQuantMax(headDim);
  for (let r = 0; r < rows; r++) {
    const row = q + ((<usize>r * headDim) << 2);
    const out = q16 + ((<usize>r * headDim) << 1);
    let m = f32x4.splat(0.0);
    let d = 0;
    for (; d + 4 <= headDim; d += 4) m = f32x4.pmax(m, f32x4.abs(v128.load(row + (<usize>d << 2))));
    let absmax = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
    for (; d < headDim; d++) absmax = max(absmax, abs(load<f32>(row + (<usize>d << 2))));
    let inverse = top / absmax;
    if (!(absmax > 0) || !isFinite(inverse)) {
      inverse = 0;
      store<f32>(scales + (<usize>r << 2), 0);
    } else {
      store<f32>(scales + (<usize>r << 2), absmax / top);
    }
    const vi = f32x4.splat(inverse);
    d = 0;
    for (; d + 8 <= headDim; d += 8) {
      const lo = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(row + (<usize>d << 2)), vi)));
      const hi = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(row + (<usize>d << 2), 16), vi)));
      v128.store(out + (<usize>d << 1), i16x8.narrow_i32x4_s(lo, hi));
    }
    for (; d < headDim; d++) store<i16>(out + (<usize>d << 1), <i16>(<i32>nearest(load<f32>(row + (<usize>d << 2)) * inverse)));
    if (ASC_FEATURE_RELAXED_SIMD) {
      const at = <usize>r * headDim;
      for (d = 0; d < headDim; d++) {
        const biased = <i32>load<i16>(out + (<usize>d << 1)) + 8192;
        store<u8>(qHi + at + <usize>d, <u8>(biased >> 7));
        store<u8>(qLo + at + <usize>d, <u8>(biased & 127));
      }
    }
  }
}

/** Whether i32x4.relaxed_dot_i8x16_i7x16_add_s gives exact sums here: 0 not probed yet, 1 yes, 2 no. */
let relaxedDotState: i32 = 0;

/**
 * Whether this runtime's relaxed 8-bit dot gives exact sums (probed once per instance, on 32 bytes of
 * `scratch`): Node 20's V8 (11.3) lowers it without VNNI to a sequence that doubles them, Node 22+
 * gets it right. The int8 kernel falls back to int16 dots where it does not.
 */
export function relaxedDotExact(scratch: usize): bool {
  if (!ASC_FEATURE_RELAXED_SIMD) return false;
  if (relaxedDotState == 0) {
    for (let i = 0; i < 16; i++) {
      store<i8>(scratch + <usize>i, <i8>(i * 16 - 120));
      store<u8>(scratch + 16 + <usize>i, <u8>(127 - i * 7));
    }
    const got = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(scratch), v128.load(scratch, 16), i32x4.splat(5));
    v128.store(scratch, got, 32);
    let exact = true;
    for (let lane = 0; lane < 4; lane++) {
      let sum = 5;
      for (let i = lane * 4; i < lane * 4 + 4; i++) sum += <i32>load<i8>(scratch + <usize>i) * <i32>load<u8>(scratch + 16 + <usize>i);
      if (load<i32>(scratch + 32 + (<usize>lane << 2)) != sum) exact = false;
    }
    relaxedDotState = exact ? 1 : 2;
  }
  return relaxedDotState == 1;
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
 * - relaxed build, where relaxedDotExact: sixteen per i32x4.relaxed_dot_i8x16_i7x16_add_s (one VNNI
 *   instruction on CPUs that have it), whose second operand must be 0..127: q·k = 128·(hi·k) + lo·k -
 *   8192·sum(k), with sum(k) from one more dot against ones.
 * Both give the same bits (the sums are exact).
 */
export function dotScoresQ8x4(q16: usize, qHi: usize, qLo: usize, qScales: usize, k: usize, kScales: usize, n: i32, headDim: i32, s: usize, lds: i32, relaxedDot: bool): void {
  const sStride = (<usize>lds) << 2;
  const qs = v128.load(qScales);
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
      storeColumn(s, sStride, j, f32x4.mul(f32x4.convert_i32x4_s(dots), f32x4.mul(qs, v128.load32_splat(kScales + (<usize>j << 2)))));
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
    storeColumn(s, sStride, j, f32x4.mul(f32x4.convert_i32x4_s(dots), f32x4.mul(qs, v128.load32_splat(kScales + (<usize>j << 2)))));
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
