// Rotary position embedding over rows of one head: each row is one token's head vector of
// headDim floats; its first `dims` are rotated pairwise, the rest copied. Row r reads
// x + r*ldx, writes y + r*ldy, and takes its angles from row r of the tables cos and sin
// ([rows, dims/2], row stride ldc), computed by the caller, so no trig runs here.
//
//   half-split (GPT-NeoX, Llama; interleaved = 0), pair i < dims/2 is (x[i], x[i + dims/2]):
//     y[i]          = x[i]          * cos[i] - x[i + dims/2] * sin[i]
//     y[i + dims/2] = x[i + dims/2] * cos[i] + x[i]          * sin[i]
//   interleaved (GPT-J; interleaved = 1), pair i is (x[2i], x[2i + 1]):
//     y[2i]     = x[2i]     * cos[i] - x[2i + 1] * sin[i]
//     y[2i + 1] = x[2i + 1] * cos[i] + x[2i]     * sin[i]
//   y[d] = x[d] for dims <= d < headDim.
//
// Half-split: both halves are contiguous, so four pairs per step are plain loads. Interleaved:
// two loads give four pairs, deinterleaved by shuffles into (even, odd) lanes and interleaved back
// after the rotation. y may equal x (in place): every element is read before it is written.

import { madd } from './f32-vmath-simd';

/** Rotates `rows` rows of headDim floats (see the header); y may equal x. */
export function f32_rope_rows(
  x: usize, ldx: i32, y: usize, ldy: i32, rows: i32, headDim: i32, dims: i32,
  cos: usize, sin: usize, ldc: i32, interleaved: i32,
): void {
  const half = dims >> 1;
  const halfBytes = <usize>half << 2;
  for (let r = 0; r < rows; r++) {
    const xr = x + ((<usize>r * <usize>ldx) << 2);
    const yr = y + ((<usize>r * <usize>ldy) << 2);
    const cr = cos + ((<usize>r * <usize>ldc) << 2);
    const sr = sin + ((<usize>r * <usize>ldc) << 2);
    let i = 0;
    if (interleaved == 0) {
      for (; i + 4 <= half; i += 4) {
        const off = <usize>i << 2;
        const x1 = v128.load(xr + off);
        const x2 = v128.load(xr + halfBytes + off);
        const c = v128.load(cr + off);
        const s = v128.load(sr + off);
        v128.store(yr + off, madd(x1, c, f32x4.mul(f32x4.neg(x2), s)));
        v128.store(yr + halfBytes + off, madd(x2, c, f32x4.mul(x1, s)));
      }
      for (; i < half; i++) {
        const off = <usize>i << 2;
        const x1 = load<f32>(xr + off);
        const x2 = load<f32>(xr + halfBytes + off);
        const c = load<f32>(cr + off);
        const s = load<f32>(sr + off);
        store<f32>(yr + off, x1 * c - x2 * s);
        store<f32>(yr + halfBytes + off, x2 * c + x1 * s);
      }
    } else {
      for (; i + 4 <= half; i += 4) {
        const off = <usize>i << 3; // pair i starts at float 2i
        const a = v128.load(xr + off); //      [e0, o0, e1, o1]
        const b = v128.load(xr + off, 16); //  [e2, o2, e3, o3]
        const even = v128.shuffle<f32>(a, b, 0, 2, 4, 6);
        const odd = v128.shuffle<f32>(a, b, 1, 3, 5, 7);
        const c = v128.load(cr + (<usize>i << 2));
        const s = v128.load(sr + (<usize>i << 2));
        const real = madd(even, c, f32x4.mul(f32x4.neg(odd), s));
        const imag = madd(odd, c, f32x4.mul(even, s));
        v128.store(yr + off, v128.shuffle<f32>(real, imag, 0, 4, 1, 5));
        v128.store(yr + off, v128.shuffle<f32>(real, imag, 2, 6, 3, 7), 16);
      }
      for (; i < half; i++) {
        const off = <usize>i << 3;
        const e = load<f32>(xr + off);
        const o = load<f32>(xr + off, 4);
        const c = load<f32>(cr + (<usize>i << 2));
        const s = load<f32>(sr + (<usize>i << 2));
        store<f32>(yr + off, e * c - o * s);
        store<f32>(yr + off, o * c + e * s, 4);
      }
    }
    if (yr != xr && dims < headDim) memory.copy(yr + (<usize>dims << 2), xr + (<usize>dims << 2), <usize>(headDim - dims) << 2);
  }
}
