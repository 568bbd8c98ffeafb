// Vector helpers shared by every kernel: fused multiply-add (relaxed FMA in the
// relaxed-SIMD build, mul + add otherwise), exp, tanh and horizontal reductions.
//
// exp(x), after Cody-Waite range reduction:
//   n = nearest(x * log2(e)),  r = x - n*ln2_hi - n*ln2_lo,  |r| <= ln2/2
//   exp(x) = 2^n * p(r),  p a degree-6 polynomial fitted by us (iteratively
//   reweighted least squares on the relative error, near-minimax): its own
//   relative error is 1.9e-9, so the float32 result is within 1-2 ulp of the
//   correctly rounded exp over the whole normal range (test/exp.test.ts measures it).
//   x < -87.33 gives exactly 0 (exp(-inf) = 0 for masked scores); x > 88.37 gives +inf.

/** c + a * b, fused (one rounding) when relaxed SIMD is enabled. */
// @ts-ignore: decorator
@inline export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

// @ts-ignore: decorator
@inline const LOG2E: f32 = 1.44269502;
// @ts-ignore: decorator
@inline const LN2_HI: f32 = 0.693145751953125;
// @ts-ignore: decorator
@inline const LN2_LO: f32 = 1.42860677e-6;
// @ts-ignore: decorator
@inline const EXP_LO: f32 = -87.33;
// @ts-ignore: decorator
@inline const EXP_HI: f32 = 88.37;
// 1.5 * 2^23: a float in [2^23, 2^24) has unit spacing, so adding it rounds to an integer
// @ts-ignore: decorator
@inline const ROUND_MAGIC: f32 = 12582912.0;
// p(r) = 1 + r + c2 r^2 + ... + c6 r^6
// @ts-ignore: decorator
@inline const P2: f32 = 0.49999991059303284;
// @ts-ignore: decorator
@inline const P3: f32 = 0.16666419804096222;
// @ts-ignore: decorator
@inline const P4: f32 = 0.04166822507977486;
// @ts-ignore: decorator
@inline const P5: f32 = 0.008374815806746483;
// @ts-ignore: decorator
@inline const P6: f32 = 0.0013836845755577087;

/** 2^(n - shift) * p(r) for x clamped to [EXP_LO, EXP_HI] (shifted: to [EXP_LO + shift*ln2, ...]):
 * the shared body of expv, expNegv and expNegShiftedv. */
// @ts-ignore: decorator
@inline function expCore(xc: v128, shift: i32 = 0): v128 {
  // n = nearest(x * log2(e)) by the float trick: adding 1.5*2^23 leaves n in the low mantissa bits of t
  // (|x * log2(e)| < 2^22 here), rounded to nearest; the bias 127 - shift added with it makes those bits
  // the exponent of 2^(n - shift), which a shift by 23 moves into place (the bits above shift out). One
  // multiply-add and a subtraction instead of nearest, a float-to-int conversion (about five x64
  // instructions in V8) and an integer add.
  const bias: i32 = 127 - shift;
  const magic = f32x4.splat(ROUND_MAGIC + <f32>bias);
  const t = madd(xc, f32x4.splat(LOG2E), magic);
  const n = f32x4.sub(t, magic);
  let r = madd(n, f32x4.splat(-LN2_HI), xc);
  r = madd(n, f32x4.splat(-LN2_LO), r);
  let p = madd(f32x4.splat(P6), r, f32x4.splat(P5));
  p = madd(p, r, f32x4.splat(P4));
  p = madd(p, r, f32x4.splat(P3));
  p = madd(p, r, f32x4.splat(P2));
  p = madd(p, r, f32x4.splat(1.0));
  p = madd(p, r, f32x4.splat(1.0));
  return f32x4.mul(p, i32x4.shl(t, 23));
}

/** exp of four lanes; see the header for range and accuracy. NaN stays NaN (pmin/pmax return x when x is NaN). */
// @ts-ignore: decorator
@inline export function expv(x: v128): v128 {
  const y = expCore(f32x4.pmax(f32x4.pmin(x, f32x4.splat(EXP_HI)), f32x4.splat(EXP_LO)));
  return v128.bitselect(f32x4.splat(Infinity), v128.bitselect(f32x4.splat(0.0), y, f32x4.lt(x, f32x4.splat(EXP_LO))), f32x4.gt(x, f32x4.splat(EXP_HI)));
}

/** exp of four lanes known to be <= 0 (x - rowMax in a softmax): expv without the overflow side. */
// @ts-ignore: decorator
@inline export function expNegv(x: v128): v128 {
  const y = expCore(f32x4.pmax(x, f32x4.splat(EXP_LO)));
  return v128.bitselect(f32x4.splat(0.0), y, f32x4.lt(x, f32x4.splat(EXP_LO)));
}

/** exp(x) * 2^-shift exactly (the power of two goes into the exponent) for lanes x <= 0, shift >= 0;
 * 0 below EXP_LO + shift*ln2, where the result would be subnormal. xlo = EXP_LO + shift*ln2, from expShiftLow. */
// @ts-ignore: decorator
@inline export function expNegShiftedv(x: v128, shift: i32, xlo: v128): v128 {
  const y = expCore(f32x4.pmax(x, xlo), shift);
  return v128.bitselect(f32x4.splat(0.0), y, f32x4.lt(x, xlo));
}

/** The threshold expNegShiftedv needs for this shift. */
// @ts-ignore: decorator
@inline export function expShiftLow(shift: i32): f32 {
  return EXP_LO + <f32>shift * 0.6931471805599453;
}

// softcap(x) = c * tanh(x / c), with t = x / c (x * (1/c)):
//   |t| <  TANH_SMALL:  x * P(t^2),  P(u) = 1 + u*(T1 + u*(T2 + ... + u*T5)) ~ tanh(t)/t, fitted by us
//                       (weighted least squares on the relative error, Chebyshev nodes in t on
//                       [0, TANH_SMALL]): relative error 1e-9 before float32 rounding. Multiplying x
//                       rather than c*t keeps it exact-ish for any c, even when t underflows.
//   |t| >= TANH_SMALL:  c * (1 - 2 / (exp(2t) + 1)): tanh(t) >= 0.5 there, so the subtraction loses
//                       at most one bit; exp(2t) = inf gives c, exp(2t) = 0 gives -c.
// Relative error a few float32 ulp for every c > 0 in the normal float32 range.
// @ts-ignore: decorator
@inline const TANH_SMALL: f32 = 0.5493;
// @ts-ignore: decorator
@inline const T1: f32 = -0.33333316445350647;
// @ts-ignore: decorator
@inline const T2: f32 = 0.13332583010196686;
// @ts-ignore: decorator
@inline const T3: f32 = -0.053852252662181854;
// @ts-ignore: decorator
@inline const T4: f32 = 0.02107212319970131;
// @ts-ignore: decorator
@inline const T5: f32 = -0.006275625433772802;

/** c * tanh(x / c) on four lanes (the softcap), with invCap = 1/c; see above. NaN stays NaN.
 * Only the branches some lane needs are evaluated (typical scores are far below c: all lanes small). */
// @ts-ignore: decorator
@inline export function softcapv(x: v128, cap: f32, invCap: f32): v128 {
  const t = f32x4.mul(x, f32x4.splat(invCap));
  const isSmall = f32x4.lt(f32x4.abs(t), f32x4.splat(TANH_SMALL));
  if (!v128.any_true(isSmall)) return softcapLarge(t, cap);
  const small = softcapSmall(x, t);
  if (i32x4.all_true(isSmall)) return small;
  return v128.bitselect(small, softcapLarge(t, cap), isSmall);
}

/** x * P(t^2) = x + x*u*(T1 + u*(T2 + ...)): the softcap for |t| < TANH_SMALL. */
// @ts-ignore: decorator
@inline function softcapSmall(x: v128, t: v128): v128 {
  const u = f32x4.mul(t, t);
  let p = madd(f32x4.splat(T5), u, f32x4.splat(T4));
  p = madd(p, u, f32x4.splat(T3));
  p = madd(p, u, f32x4.splat(T2));
  p = madd(p, u, f32x4.splat(T1));
  return madd(f32x4.mul(x, u), p, x);
}

/** c * (1 - 2 / (exp(2t) + 1)): the softcap for |t| >= TANH_SMALL. */
// @ts-ignore: decorator
@inline function softcapLarge(t: v128, cap: f32): v128 {
  const e = expv(f32x4.add(t, t));
  return f32x4.mul(f32x4.sub(f32x4.splat(1.0), f32x4.div(f32x4.splat(2.0), f32x4.add(e, f32x4.splat(1.0)))), f32x4.splat(cap));
}

/** Scalar softcap with the same formula as the vector one. */
// @ts-ignore: decorator
@inline export function softcap1(x: f32, cap: f32, invCap: f32): f32 {
  return f32x4.extract_lane(softcapv(f32x4.splat(x), cap, invCap), 0);
}

/** Scalar exp with the same polynomial as the vector one. */
// @ts-ignore: decorator
@inline export function exp1(x: f32): f32 {
  return f32x4.extract_lane(expv(f32x4.splat(x)), 0);
}

/** Largest of the four lanes. */
// @ts-ignore: decorator
@inline export function hmax(v: v128): f32 {
  const m = f32x4.max(v, v128.shuffle<f32>(v, v, 2, 3, 0, 1));
  return max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1));
}

/** Sum of the four lanes, in the fixed order (l0 + l2) + (l1 + l3). */
// @ts-ignore: decorator
@inline export function hsum(v: v128): f32 {
  const s = f32x4.add(v, v128.shuffle<f32>(v, v, 2, 3, 0, 1));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1);
}

/** x with subnormal lanes replaced by 0 (denormals-are-zero; WebAssembly cannot set the CPU's mode, and
 * x86 takes a slow microcode path for every multiply that sees a subnormal operand). */
// @ts-ignore: decorator
@inline export function daz4(x: v128): v128 {
  const tiny = i32x4.lt_s(v128.and(x, i32x4.splat(0x7fffffff)), i32x4.splat(0x00800000));
  return v128.andnot(x, tiny);
}

/** Scalar daz4. */
// @ts-ignore: decorator
@inline export function daz1(x: f32): f32 {
  return (reinterpret<u32>(x) & 0x7fffffff) < 0x00800000 ? 0 : x;
}
