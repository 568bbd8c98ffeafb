// float16 -> float32 in registers, for the paged kernel's float16 pages (attention-paged-rows-simd.ts).
// A half h becomes a float exactly: its sign, exponent and mantissa bits moved into place
// ((h << 16) >> 3 arithmetic, then the three copies of the sign above the exponent cleared) read as a
// float32, times 2^112 (the difference of the exponent biases, 127 - 15). Subnormal halves come out
// right too (through a float32 subnormal on the way).

// @ts-ignore: decorator
@inline const TWO_112: f32 = 5.192296858534828e33;
// @ts-ignore: decorator
@inline const HALF_BITS_MASK: i32 = 0x8fffffff;

/** Halves 0..3 of the eight in `h` as four floats. */
// @ts-ignore: decorator
@inline export function halvesLow(h: v128): v128 {
  const x = v128.shuffle<u8>(i32x4.splat(0), h, 0, 1, 16, 17, 0, 1, 18, 19, 0, 1, 20, 21, 0, 1, 22, 23);
  return f32x4.mul(v128.and(i32x4.shr_s(x, 3), i32x4.splat(HALF_BITS_MASK)), f32x4.splat(TWO_112));
}

/** Halves 4..7 of the eight in `h` as four floats. */
// @ts-ignore: decorator
@inline export function halvesHigh(h: v128): v128 {
  const x = v128.shuffle<u8>(i32x4.splat(0), h, 0, 1, 24, 25, 0, 1, 26, 27, 0, 1, 28, 29, 0, 1, 30, 31);
  return f32x4.mul(v128.and(i32x4.shr_s(x, 3), i32x4.splat(HALF_BITS_MASK)), f32x4.splat(TWO_112));
}

/** The half at `at` as a float. */
// @ts-ignore: decorator
@inline export function halfAt(at: usize): f32 {
  const x = (<i32>load<u16>(at)) << 16;
  return reinterpret<f32>((x >> 3) & HALF_BITS_MASK) * TWO_112;
}
