// x[i] = 0 where 0 < |x[i]| < 2^-126 (denormals-are-zero), in place, for n floats at x.
// WebAssembly cannot switch the CPU's flush-to-zero modes, and x86 takes a slow microcode path for
// every multiply that sees a subnormal operand (measured: attention on subnormal inputs ran 40x
// slower). The kernels no longer need it: attention flushes q as it copies its q block and reads K and
// V through daz4, f32_gemm flushes B as it packs it and A as it reads it, softmax flushes x as it
// transforms it. It stays exported for callers that want a flushed copy. The change is below 2^-126
// in absolute terms.
import { daz1, daz4 } from './f32-vmath-simd';

/** Flushes subnormal floats to zero in place; see the file header. */
export function f32_flush_subnormals(x: usize, n: i32): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const p = x + (<usize>i << 2);
    v128.store(p, daz4(v128.load(p)));
  }
  for (; i < n; i++) {
    const p = x + (<usize>i << 2);
    store<f32>(p, daz1(load<f32>(p)));
  }
}
