// Packs a kc x nc block of a matrix B into column panels 8 wide:
//   dst[p][k][j] = B(k, 8p + j)   for p < ceil(nc/8), k < kc, j < 8; zero where 8p + j >= nc.
// B(k, n) = src[k*ld + n] when transposed is false, src[n*ld + k] when it is true (B given as Bᵀ,
// as K is in Q·Kᵀ). Each panel is kc*8 contiguous floats, the ldb = 8 layout the micro-kernels read.
// Subnormal values are packed as 0 (daz4): the micro-kernel then never multiplies a subnormal.
import { daz1, daz4 } from './f32-vmath-simd';

/** Packs rows of A for the packed-form micro-kernels: dst[k*width + i] = A(i, k) (subnormals as 0) for
 * i < mr, k < kc, and 0 for mr <= i < width. A(i, k) = src[i*ld + k]. */
export function f32_pack_rows(src: usize, ld: i32, mr: i32, kc: i32, dst: usize, width: i32): void {
  const ldBytes = (<usize>ld) << 2, step = (<usize>width) << 2;
  // four rows at a time, four k at a time: 4x4 transposes (each k's four values contiguous)
  let i0 = 0;
  for (; i0 + 4 <= mr; i0 += 4) {
    const r0 = src + <usize>i0 * ldBytes, r1 = r0 + ldBytes, r2 = r1 + ldBytes, r3 = r2 + ldBytes;
    const d = dst + ((<usize>i0) << 2);
    let k = 0;
    for (; k + 4 <= kc; k += 4) {
      const off = (<usize>k) << 2;
      transpose4Strided(d + <usize>k * step, step, v128.load(r0 + off), v128.load(r1 + off), v128.load(r2 + off), v128.load(r3 + off));
    }
    for (; k < kc; k++) {
      const off = (<usize>k) << 2, at = d + <usize>k * step;
      store<f32>(at, daz1(load<f32>(r0 + off)));
      store<f32>(at, daz1(load<f32>(r1 + off)), 4);
      store<f32>(at, daz1(load<f32>(r2 + off)), 8);
      store<f32>(at, daz1(load<f32>(r3 + off)), 12);
    }
  }
  for (let i = i0; i < width; i++) {
    const row = src + <usize>i * ldBytes;
    let d = dst + ((<usize>i) << 2);
    if (i < mr) {
      for (let k = 0; k < kc; k++) {
        store<f32>(d, daz1(load<f32>(row + ((<usize>k) << 2))));
        d += step;
      }
    } else {
      for (let k = 0; k < kc; k++) {
        store<f32>(d, 0);
        d += step;
      }
    }
  }
}

/** f32_pack_rows of A given as Aᵀ: A(i, k) = src[k*ld + i], so each k's mr values are contiguous. */
export function f32_pack_cols(src: usize, ld: i32, mr: i32, kc: i32, dst: usize, width: i32): void {
  const ldBytes = (<usize>ld) << 2;
  for (let k = 0; k < kc; k++) {
    const from = src + <usize>k * ldBytes;
    const to = dst + ((<usize>k * width) << 2);
    let i = 0;
    for (; i + 4 <= mr; i += 4) v128.store(to + ((<usize>i) << 2), daz4(v128.load(from + ((<usize>i) << 2))));
    for (; i < mr; i++) store<f32>(to + ((<usize>i) << 2), daz1(load<f32>(from + ((<usize>i) << 2))));
    for (; i < width; i++) store<f32>(to + ((<usize>i) << 2), 0);
  }
}

/** Packs B (or Bᵀ) into 8-wide, zero-padded panels; see the file header. */
export function f32_pack_panels(src: usize, ld: i32, transposed: bool, kc: i32, nc: i32, dst: usize): void {
  const ldBytes = (<usize>ld) << 2;
  for (let n0 = 0; n0 < nc; n0 += 8) {
    const width = min(8, nc - n0);
    if (!transposed) {
      let s = src + ((<usize>n0) << 2);
      if (width == 8) {
        for (let k = 0; k < kc; k++) {
          v128.store(dst, daz4(v128.load(s)));
          v128.store(dst, daz4(v128.load(s, 16)), 16);
          s += ldBytes;
          dst += 32;
        }
      } else {
        for (let k = 0; k < kc; k++) {
          for (let j = 0; j < 8; j++) store<f32>(dst + (<usize>j << 2), j < width ? daz1(load<f32>(s + (<usize>j << 2))) : 0);
          s += ldBytes;
          dst += 32;
        }
      }
    } else {
      // Column n of B is row n of src: transpose 4x4 blocks of src into the panel.
      const row0 = src + <usize>n0 * ldBytes;
      let k = 0;
      if (width == 8) {
        const r0 = row0, r1 = r0 + ldBytes, r2 = r1 + ldBytes, r3 = r2 + ldBytes;
        const r4 = r3 + ldBytes, r5 = r4 + ldBytes, r6 = r5 + ldBytes, r7 = r6 + ldBytes;
        for (; k + 4 <= kc; k += 4) {
          const off = (<usize>k) << 2;
          transpose4(dst, v128.load(r0 + off), v128.load(r1 + off), v128.load(r2 + off), v128.load(r3 + off));
          transpose4(dst + 16, v128.load(r4 + off), v128.load(r5 + off), v128.load(r6 + off), v128.load(r7 + off));
          dst += 128;
        }
      }
      for (; k < kc; k++) {
        const off = (<usize>k) << 2;
        for (let j = 0; j < 8; j++) {
          store<f32>(dst + (<usize>j << 2), j < width ? daz1(load<f32>(row0 + <usize>j * ldBytes + off)) : 0);
        }
        dst += 32;
      }
    }
  }
}

/** Writes the transpose of the 4x4 block with rows r0..r3 as four rows `stride` bytes apart. */
// @ts-ignore: decorator
@inline function transpose4Strided(dst: usize, stride: usize, r0: v128, r1: v128, r2: v128, r3: v128): void {
  const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5);
  const t1 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
  const t2 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
  const t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
  v128.store(dst, daz4(v128.shuffle<f32>(t0, t2, 0, 1, 4, 5)));
  v128.store(dst + stride, daz4(v128.shuffle<f32>(t0, t2, 2, 3, 6, 7)));
  v128.store(dst + 2 * stride, daz4(v128.shuffle<f32>(t1, t3, 0, 1, 4, 5)));
  v128.store(dst + 3 * stride, daz4(v128.shuffle<f32>(t1, t3, 2, 3, 6, 7)));
}

/** Writes the transpose of the 4x4 block with rows r0..r3 as four rows 32 bytes apart. */
// @ts-ignore: decorator
@inline function transpose4(dst: usize, r0: v128, r1: v128, r2: v128, r3: v128): void {
  const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5);
  const t1 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
  const t2 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
  const t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
  v128.store(dst, daz4(v128.shuffle<f32>(t0, t2, 0, 1, 4, 5)));
  v128.store(dst, daz4(v128.shuffle<f32>(t0, t2, 2, 3, 6, 7)), 32);
  v128.store(dst, daz4(v128.shuffle<f32>(t1, t3, 0, 1, 4, 5)), 64);
  v128.store(dst, daz4(v128.shuffle<f32>(t1, t3, 2, 3, 6, 7)), 96);
}
