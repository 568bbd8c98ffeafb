// y[0 .. nc) = x · B-panel for one row x of kc floats and one packed panel (f32_pack_panels: row k of
// the panel, 8 floats, at b + 32k bytes), nc <= 8:
//   y[j] = (s0[j] + s1[j]) + (s2[j] + s3[j]),  s_c[j] = sum over k ≡ c (mod 4) of x[k] · B(k, j)
// (the k % 4 tail goes to s0, s1, s2 in order). Four chains of accumulators: with one (the 1x8 tile) each
// k waits for the previous multiply-add, so a decode step's x·W ran at 32 bytes of W per multiply-add
// latency, below what memory gives one core; four keep four k's in flight. The order of the sums depends
// on kc alone, so the bits do not depend on how the columns are cut over threads.
import { madd } from './f32-vmath-simd';
import { storeRow8 } from './f32-gemm-store-simd';

/** y = x · panel for one row (see the file header); x holds kc floats (read as they are: packed, no subnormal). */
export function f32_gemv_1x8c4(nc: i32, kc: i32, x: usize, b: usize, y: usize): void {
  let s0l = f32x4.splat(0.0), s0h = f32x4.splat(0.0);
  let s1l = f32x4.splat(0.0), s1h = f32x4.splat(0.0);
  let s2l = f32x4.splat(0.0), s2h = f32x4.splat(0.0);
  let s3l = f32x4.splat(0.0), s3h = f32x4.splat(0.0);
  let xp = x, bp = b;
  const end4 = b + ((<usize>(kc & ~3)) << 5);
  while (bp < end4) {
    const x0 = v128.load32_splat(xp, 0);
    const x1 = v128.load32_splat(xp, 4);
    const x2 = v128.load32_splat(xp, 8);
    const x3 = v128.load32_splat(xp, 12);
    s0l = madd(x0, v128.load(bp, 0), s0l);
    s0h = madd(x0, v128.load(bp, 16), s0h);
    s1l = madd(x1, v128.load(bp, 32), s1l);
    s1h = madd(x1, v128.load(bp, 48), s1h);
    s2l = madd(x2, v128.load(bp, 64), s2l);
    s2h = madd(x2, v128.load(bp, 80), s2h);
    s3l = madd(x3, v128.load(bp, 96), s3l);
    s3h = madd(x3, v128.load(bp, 112), s3h);
    xp += 16;
    bp += 128;
  }
  const tail = kc & 3;
  if (tail > 0) {
    const x0 = v128.load32_splat(xp, 0);
    s0l = madd(x0, v128.load(bp, 0), s0l);
    s0h = madd(x0, v128.load(bp, 16), s0h);
  }
  if (tail > 1) {
    const x1 = v128.load32_splat(xp, 4);
    s1l = madd(x1, v128.load(bp, 32), s1l);
    s1h = madd(x1, v128.load(bp, 48), s1h);
  }
  if (tail > 2) {
    const x2 = v128.load32_splat(xp, 8);
    s2l = madd(x2, v128.load(bp, 64), s2l);
    s2h = madd(x2, v128.load(bp, 80), s2h);
  }
  const lo = f32x4.add(f32x4.add(s0l, s1l), f32x4.add(s2l, s3l));
  const hi = f32x4.add(f32x4.add(s0h, s1h), f32x4.add(s2h, s3h));
  storeRow8(y, lo, hi, nc);
}
