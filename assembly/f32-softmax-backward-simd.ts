// Softmax's backward over rows:  dx[j] = scale * y[j] * (dy[j] - sum_k y[k] dy[k])
// for y = softmax(scale * x + mask) along each row (masked columns have y = 0 and get 0). Row i of y,
// dy and dx at y + i*cols, dy + i*cols, dx + i*cols; dx may be dy (every row's sum is taken first).

/** The backward of `rows` rows of `cols`; see the header. */
export function f32_softmax_backward_rows(y: usize, dy: usize, dx: usize, rows: i32, cols: i32, scale: f32): void {
  const vScale = f32x4.splat(scale);
  for (let i = 0; i < rows; i++) {
    const at = (<usize>i * cols) << 2;
    const yr = y + at, gr = dy + at, xr = dx + at;
    let acc = f32x4.splat(0);
    let j = 0;
    for (; j + 4 <= cols; j += 4) acc = f32x4.add(acc, f32x4.mul(v128.load(yr + (<usize>j << 2)), v128.load(gr + (<usize>j << 2))));
    let dot = f32x4.extract_lane(acc, 0) + f32x4.extract_lane(acc, 1) + f32x4.extract_lane(acc, 2) + f32x4.extract_lane(acc, 3);
    for (; j < cols; j++) dot += load<f32>(yr + (<usize>j << 2)) * load<f32>(gr + (<usize>j << 2));
    const vDot = f32x4.splat(dot);
    j = 0;
    for (; j + 4 <= cols; j += 4) {
      const off = <usize>j << 2;
      v128.store(xr + off, f32x4.mul(f32x4.mul(v128.load(yr + off), f32x4.sub(v128.load(gr + off), vDot)), vScale));
    }
    for (; j < cols; j++) {
      const off = <usize>j << 2;
      store<f32>(xr + off, load<f32>(yr + off) * (load<f32>(gr + off) - dot) * scale);
    }
  }
}
