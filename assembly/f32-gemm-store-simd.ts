// Moves a micro-kernel's tile between C and its staging area t (rows of 8 floats, 32 bytes apart):
// storeRow8 writes one 8-wide row of the tile to C; loadTile reads C's tile into t.

// @ts-ignore: decorator
@inline function storeTail(p: usize, v: v128, n: i32): void {
  // n in 0..3 lanes; lane indices must be constants, hence the ladder.
  if (n > 0) store<f32>(p, f32x4.extract_lane(v, 0));
  if (n > 1) store<f32>(p, f32x4.extract_lane(v, 1), 4);
  if (n > 2) store<f32>(p, f32x4.extract_lane(v, 2), 8);
}

/** c[0..nc) = [lo, hi][0..nc) with 1 <= nc <= 8. */
// @ts-ignore: decorator
@inline export function storeRow8(c: usize, lo: v128, hi: v128, nc: i32): void {
  if (nc == 8) {
    v128.store(c, lo);
    v128.store(c + 16, hi);
  } else if (nc >= 4) {
    v128.store(c, lo);
    storeTail(c + 16, hi, nc - 4);
  } else {
    storeTail(c, lo, nc);
  }
}

/** t row i (32 bytes apart) = C row i (ldc floats apart), columns 0..nc (the rest 0), for rows i < mr. */
export function loadTile(c: usize, ldc: i32, mr: i32, nc: i32, t: usize): void {
  const cStride = (<usize>ldc) << 2;
  for (let i = 0; i < mr; i++) {
    const row = c + <usize>i * cStride, to = t + ((<usize>i) << 5);
    if (nc == 8) {
      v128.store(to, v128.load(row));
      v128.store(to, v128.load(row, 16), 16);
    } else {
      for (let j = 0; j < 8; j++) store<f32>(to + ((<usize>j) << 2), j < nc ? load<f32>(row + ((<usize>j) << 2)) : 0);
    }
  }
}
