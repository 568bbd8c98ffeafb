// Stores one 8-wide row of a register tile: c[0..nc) = v (or c[0..nc) += v when accumulating).

// @ts-ignore: decorator
@inline function store4(p: usize, v: v128, accumulate: bool): void {
  v128.store(p, accumulate ? f32x4.add(v128.load(p), v) : v);
}

// @ts-ignore: decorator
@inline function storeTail(p: usize, v: v128, n: i32, accumulate: bool): void {
  // n in 0..3 lanes; lane indices must be constants, hence the ladder.
  if (n > 0) store<f32>(p, f32x4.extract_lane(v, 0) + (accumulate ? load<f32>(p) : 0));
  if (n > 1) store<f32>(p, f32x4.extract_lane(v, 1) + (accumulate ? load<f32>(p, 4) : 0), 4);
  if (n > 2) store<f32>(p, f32x4.extract_lane(v, 2) + (accumulate ? load<f32>(p, 8) : 0), 8);
}

/** c[0..nc) (+)= [lo, hi][0..nc) with 1 <= nc <= 8. */
// @ts-ignore: decorator
@inline export function storeRow8(c: usize, lo: v128, hi: v128, nc: i32, accumulate: bool): void {
  if (nc == 8) {
    store4(c, lo, accumulate);
    store4(c + 16, hi, accumulate);
  } else if (nc >= 4) {
    store4(c, lo, accumulate);
    storeTail(c + 16, hi, nc - 4, accumulate);
  } else {
    storeTail(c, lo, nc, accumulate);
  }
}
