// The FLOP ceiling the bench reports kernels against: register-only loops of the build's multiply-add
// (relaxed_madd in the relaxed build, f32x4.mul then f32x4.add in the simd build), no memory traffic.
// Each iteration is CEILING_CHAINS multiply-adds of four lanes: 8 * CEILING_CHAINS floating-point
// operations. Two forms, because V8's code for each differs by version and the bench takes the faster:
//   form 0: chains a_i = a_i * x + y (each chain waits on its own multiply-add);
//   form 1: a_i = x * y + a_i (the products are independent; only the additions chain).
import { madd } from './f32-vmath-simd';

const CEILING_CHAINS: i32 = 10;

/** Floating-point operations per iteration of f32_ceiling_probe. */
export function f32_ceiling_flops_per_iteration(): i32 {
  return CEILING_CHAINS * 8;
}

/** Runs `iterations` iterations of the probe's form; returns a lane of the result so nothing is dead code. */
export function f32_ceiling_probe(iterations: i32, form: i32, seed: f32): f32 {
  let a0 = f32x4.splat(seed), a1 = f32x4.splat(seed * 2), a2 = f32x4.splat(seed * 3), a3 = f32x4.splat(seed * 4), a4 = f32x4.splat(seed * 5);
  let a5 = f32x4.splat(seed * 6), a6 = f32x4.splat(seed * 7), a7 = f32x4.splat(seed * 8), a8 = f32x4.splat(seed * 9), a9 = f32x4.splat(seed * 10);
  const x = f32x4.splat(1 - seed), y = f32x4.splat(seed);
  if (form == 0) {
    for (let i = 0; i < iterations; i++) {
      a0 = madd(a0, x, y); a1 = madd(a1, x, y); a2 = madd(a2, x, y); a3 = madd(a3, x, y); a4 = madd(a4, x, y);
      a5 = madd(a5, x, y); a6 = madd(a6, x, y); a7 = madd(a7, x, y); a8 = madd(a8, x, y); a9 = madd(a9, x, y);
    }
  } else {
    for (let i = 0; i < iterations; i++) {
      a0 = madd(x, y, a0); a1 = madd(x, y, a1); a2 = madd(x, y, a2); a3 = madd(x, y, a3); a4 = madd(x, y, a4);
      a5 = madd(x, y, a5); a6 = madd(x, y, a6); a7 = madd(x, y, a7); a8 = madd(x, y, a8); a9 = madd(x, y, a9);
    }
  }
  const s = f32x4.add(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)), f32x4.add(f32x4.add(a4, a5), f32x4.add(a6, a7)));
  return f32x4.extract_lane(f32x4.add(s, f32x4.add(a8, a9)), 0);
}
