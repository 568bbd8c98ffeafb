// float16 -> float32 in registers, for the paged kernel's float16 pages (attention-paged-rows-simd.ts).
// A half h becomes a float exactly: sign-extended to 32 bits and shifted left by 13, its exponent and
// mantissa bits land where a float32's go, with the sign in bit 31 and copies of it in bits 28..30,
// which the mask clears; read as a float32, that is the half's value times 2^-112 (the difference of
// the exponent biases, 127 - 15), so one multiply by 2^112 finishes it. Subnormal halves come out
// right too (through a float32 subnormal on the way). Four instructions per four halves; three for the
// raw forms, whose floats are the halves times 2^-112, for a caller that folds 2^112 into the other
// factor of its products (exact: a power of two).

// @ts-ignore: decorator
@inline const TWO_112: f32 = 5.192296858534828e33;
// @ts-ignore: decorator
@inline const HALF_BITS_MASK: i32 = 0x8fffe000;

/** Halves 0..3 of the eight in `h` as four floats. */
// @ts-ignore: decorator
@inline export function halvesLow(h: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shl(i32x4.extend_low_i16x8_s(h), 13), i32x4.splat(HALF_BITS_MASK)), f32x4.splat(TWO_112));
}

/** Halves 4..7 of the eight in `h` as four floats. */
// @ts-ignore: decorator
@inline export function halvesHigh(h: v128): v128 {
  return f32x4.mul(v128.and(i32x4.shl(i32x4.extend_high_i16x8_s(h), 13), i32x4.splat(HALF_BITS_MASK)), f32x4.splat(TWO_112));
}

/** The half at `at` as a float. */
// @ts-ignore: decorator
@inline export function halfAt(at: usize): f32 {
  return reinterpret<f32>(((<i32>load<i16>(at)) << 13) & HALF_BITS_MASK) * TWO_112;
}

/** halvesLow without the multiply: the halves times 2^-112. */
// @ts-ignore: decorator
@inline export function halvesLowRaw(h: v128): v128 {
  return v128.and(i32x4.shl(i32x4.extend_low_i16x8_s(h), 13), i32x4.splat(HALF_BITS_MASK));
}

/** halvesHigh without the multiply: the halves times 2^-112. */
// @ts-ignore: decorator
@inline export function halvesHighRaw(h: v128): v128 {
  return v128.and(i32x4.shl(i32x4.extend_high_i16x8_s(h), 13), i32x4.splat(HALF_BITS_MASK));
}

/** halfAt without the multiply: the half times 2^-112. */
// @ts-ignore: decorator
@inline export function halfRawAt(at: usize): f32 {
  return reinterpret<f32>(((<i32>load<i16>(at)) << 13) & HALF_BITS_MASK);
}

/** 2^112: what the raw forms leave out. */
export const HALF_RAW_SCALE: f32 = TWO_112;
