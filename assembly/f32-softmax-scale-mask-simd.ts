// Fused scale + softcap + mask + softmax over rows.
// Subnormal x values are read as 0 (x86 is many times slower on them: measured 23x on this softmax).
//
//   t[j] = cap > 0 ? cap*tanh(scale*x[j]/cap) : scale*x[j]
//   t[j] = maskKind == 1 (bool):  mask[j] != 0 ? t[j] : -inf
//          maskKind == 2 (float): t[j] + mask[j]
//   t[j] = -inf outside the visible columns [lo, hi)
//   y[j] = exp(t[j] - max t) / sum_j exp(t[j] - max t),   and y = 0 when every t[j] is -inf.
//
// Two passes per row: scoreRow (transform + max) and expRow (exp + sum), then one scaling pass.
// A row whose float32 scores overflow (scale*x or t + mask beyond the float32 range: max t = +inf, or
// a NaN from inf - inf) is redone in float64, so the result is right whenever y is representable; the
// common path pays one comparison per row for it.

import { daz1, daz4, expNegv, expNegShiftedv, expShiftLow, exp1, hmax, hsum, softcapv, softcap1 } from './f32-vmath-simd';

export const MASK_NONE: i32 = 0;
export const MASK_BOOL: i32 = 1;
export const MASK_FLOAT: i32 = 2;

// @ts-ignore: decorator
@inline function transform4(x: v128, scale: f32, cap: f32, invCap: f32, mask: usize, maskKind: i32): v128 {
  let t = f32x4.mul(daz4(x), f32x4.splat(scale)); // a subnormal x would take x86's slow multiply path
  if (cap > 0) t = softcapv(t, cap, invCap);
  if (maskKind == MASK_FLOAT) {
    t = f32x4.add(t, v128.load(mask));
  } else if (maskKind == MASK_BOOL) {
    const m32 = i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v128.load32_zero(mask)));
    t = v128.bitselect(f32x4.splat(-Infinity), t, i32x4.eq(m32, i32x4.splat(0)));
  }
  return t;
}

// @ts-ignore: decorator
@inline function transform1(x: f32, scale: f32, cap: f32, invCap: f32, mask: usize, maskKind: i32): f32 {
  let t = daz1(x) * scale;
  if (cap > 0) t = softcap1(t, cap, invCap);
  if (maskKind == MASK_FLOAT) t += load<f32>(mask);
  else if (maskKind == MASK_BOOL && load<u8>(mask) == 0) t = -Infinity;
  return t;
}

/** dst[0..n) = transformed src[0..n) (see the header; columns outside [lo, hi) become -inf).
 * mask points at this row's column 0 (u8 or f32 elements). dst may equal src. Returns the row max.
 * Subnormal src values are read as 0, except on the plain path (scale 1, no softcap, no mask) when
 * `scores` is true: attention's score tiles, dot products of inputs already flushed, are used as they are. */
export function scoreRow(src: usize, dst: usize, n: i32, scale: f32, cap: f32, mask: usize, maskKind: i32, lo: i32, hi: i32, scores: bool): f32 {
  lo = max(0, min(lo, n));
  hi = max(lo, min(hi, n));
  for (let j = 0; j < lo; j++) store<f32>(dst + (<usize>j << 2), -Infinity);
  for (let j = hi; j < n; j++) store<f32>(dst + (<usize>j << 2), -Infinity);
  let vmax = f32x4.splat(-Infinity);
  let j = lo;
  if (scores && scale == 1 && cap == 0 && maskKind == MASK_NONE) {
    // nothing to transform: the max pass alone (attention pre-scales q)
    if (src != dst) memory.copy(dst + (<usize>lo << 2), src + (<usize>lo << 2), <usize>(hi - lo) << 2);
    for (; j + 4 <= hi; j += 4) vmax = f32x4.pmax(vmax, v128.load(dst + (<usize>j << 2)));
    let smax = hmax(vmax);
    for (; j < hi; j++) smax = max(smax, load<f32>(dst + (<usize>j << 2)));
    return smax == -Infinity ? nanOr(dst, lo, hi, smax) : smax;
  }
  const invCap: f32 = cap > 0 ? 1.0 / cap : 0;
  const maskShift: usize = maskKind == MASK_BOOL ? 0 : 2;
  for (; j + 4 <= hi; j += 4) {
    const off = <usize>j << 2;
    const t = transform4(v128.load(src + off), scale, cap, invCap, mask + (<usize>j << maskShift), maskKind);
    v128.store(dst + off, t);
    vmax = f32x4.pmax(vmax, t);
  }
  let smax = hmax(vmax);
  for (; j < hi; j++) {
    const off = <usize>j << 2;
    const t = transform1(load<f32>(src + off), scale, cap, invCap, mask + (<usize>j << maskShift), maskKind);
    store<f32>(dst + off, t);
    smax = max(smax, t);
  }
  return smax == -Infinity ? nanOr(dst, lo, hi, smax) : smax;
}

/** The row max passes use pmax (one instruction on x86), which lets NaN through unseen. A NaN score
 * still poisons its row through exp and the sum, unless every other score is -inf and the row would
 * be skipped as fully masked: that rare case rescans the row for NaN. */
function nanOr(row: usize, lo: i32, hi: i32, rowMax: f32): f32 {
  for (let j = lo; j < hi; j++) {
    const t = load<f32>(row + (<usize>j << 2));
    if (t != t) return t;
  }
  return rowMax;
}

/** s[j] = exp(s[j] - rowMax) * 2^-shift for j < n (shift >= 0; values that would be subnormal are
 * 0); returns the sum of the new values. */
export function expRow(s: usize, n: i32, rowMax: f32, shift: i32): f32 {
  const vm = f32x4.splat(rowMax);
  const xlo = f32x4.splat(expShiftLow(shift));
  let vsum = f32x4.splat(0.0);
  let j = 0;
  for (; j + 4 <= n; j += 4) {
    const off = <usize>j << 2;
    const e = expNegShiftedv(f32x4.sub(v128.load(s + off), vm), shift, xlo);
    v128.store(s + off, e);
    vsum = f32x4.add(vsum, e);
  }
  let sum = hsum(vsum);
  for (; j < n; j++) {
    const off = <usize>j << 2;
    const e = f32x4.extract_lane(expNegShiftedv(f32x4.splat(load<f32>(s + off) - rowMax), shift, xlo), 0);
    store<f32>(s + off, e);
    sum += e;
  }
  return sum;
}

/** dst[j] = exp(s[j] - rowMax) * invSum for j < n (dst may equal s; neither need be aligned). */
export function probRow(s: usize, n: i32, rowMax: f32, invSum: f32, dst: usize): void {
  const vm = f32x4.splat(rowMax);
  const vinv = f32x4.splat(invSum);
  let j = 0;
  for (; j + 4 <= n; j += 4) {
    const off = <usize>j << 2;
    v128.store(dst + off, f32x4.mul(expNegv(f32x4.sub(v128.load(s + off), vm)), vinv));
  }
  for (; j < n; j++) {
    const off = <usize>j << 2;
    store<f32>(dst + off, exp1(load<f32>(s + off) - rowMax) * invSum);
  }
}

/** s[j] *= factor for j < n. */
export function scaleRow(s: usize, n: i32, factor: f32): void {
  const vf = f32x4.splat(factor);
  let j = 0;
  for (; j + 4 <= n; j += 4) {
    const off = <usize>j << 2;
    v128.store(s + off, f32x4.mul(v128.load(s + off), vf));
  }
  for (; j < n; j++) store<f32>(s + (<usize>j << 2), load<f32>(s + (<usize>j << 2)) * factor);
}

/**
 * Softmax of `rows` rows of `cols` values: x row i at x + i*ldx, y row i at y + i*ldy (y may be x).
 * mask row i at mask + i*maskRowStride elements (stride 0 broadcasts one row). With causal, row i
 * sees columns j <= i + causalOffset only.
 */
export function f32_softmax_rows(
  x: usize, ldx: i32, y: usize, ldy: i32, rows: i32, cols: i32,
  scale: f32, cap: f32, mask: usize, maskKind: i32, maskRowStride: i32, causal: bool, causalOffset: i32,
): void {
  const maskShift: usize = maskKind == MASK_BOOL ? 0 : 2;
  for (let i = 0; i < rows; i++) {
    const src = x + ((<usize>i * ldx) << 2);
    const dst = y + ((<usize>i * ldy) << 2);
    const hi = causal ? i + causalOffset + 1 : cols;
    const maskRow = mask + ((<usize>i * maskRowStride) << maskShift);
    const rowMax = scoreRow(src, dst, cols, scale, cap, maskRow, maskKind, 0, hi, false);
    if (rowMax == -Infinity) {
      memory.fill(dst, 0, (<usize>cols) << 2);
      continue;
    }
    // t = +inf (scale*x or t + mask overflowed) or NaN (+inf + -inf mask): the float32 row cannot say
    // which scores win, float64 can; a NaN in the input gives NaN either way
    if (rowMax == Infinity) {
      softmaxRow64(src, dst, cols, scale, cap, maskRow, maskKind, hi);
      continue;
    }
    const sum = expRow(dst, cols, rowMax, 0);
    if (sum != sum) {
      softmaxRow64(src, dst, cols, scale, cap, maskRow, maskKind, hi);
      continue;
    }
    scaleRow(dst, cols, 1.0 / sum);
  }
}

/** One row of f32_softmax_rows in float64 (scalar, exact exp): the path for rows whose float32 scores
 * overflow. Same transform as scoreRow: subnormal x read as 0, columns >= hi hidden. dst may equal src. */
function softmaxRow64(src: usize, dst: usize, n: i32, scale: f32, cap: f32, mask: usize, maskKind: i32, hi: i32): void {
  hi = max(0, min(hi, n));
  let rowMax = -Infinity;
  for (let j = 0; j < hi; j++) rowMax = max(rowMax, score64(src, j, scale, cap, mask, maskKind));
  let sum = 0.0;
  for (let j = 0; j < hi; j++) sum += Math.exp(score64(src, j, scale, cap, mask, maskKind) - rowMax);
  for (let j = 0; j < n; j++) {
    // dst[j] is written only after src[j] (and every column before it) has been read the last time
    const p = j < hi ? Math.exp(score64(src, j, scale, cap, mask, maskKind) - rowMax) / sum : 0;
    store<f32>(dst + (<usize>j << 2), rowMax == -Infinity ? 0 : <f32>p);
  }
}

// @ts-ignore: decorator
@inline function score64(src: usize, j: i32, scale: f32, cap: f32, mask: usize, maskKind: i32): f64 {
  let t = <f64>daz1(load<f32>(src + (<usize>j << 2))) * <f64>scale;
  if (cap > 0) t = <f64>cap * Math.tanh(t / <f64>cap);
  if (maskKind == MASK_FLOAT) t += <f64>load<f32>(mask + (<usize>j << 2));
  else if (maskKind == MASK_BOOL && load<u8>(mask + <usize>j) == 0) t = -Infinity;
  return t;
}
