// Accuracy of the kernels' vectorised exp (assembly/f32-vmath-simd.ts), in ulp of the float32
// result against Math.exp rounded to float32, over the whole range softmax and softcap use.
import { describe, expect, it } from 'vitest';
import { WasmBackend } from '../src/backends/wasm.js';
import { BACKENDS } from './helpers.js';

const builds = BACKENDS.filter((b) => b !== 'js') as Array<'wasm-simd' | 'wasm-relaxed-simd'>;
const bits = new Float32Array(1);
const asInt = new Int32Array(bits.buffer);
const ordered = (x: number): number => {
  bits[0] = x;
  return asInt[0];
};

describe.each(builds)('exp of %s', (build) => {
  const wasm = new WasmBackend(build, 64 << 20);
  it('is within 2 ulp of the correctly rounded exp on [-87.3, 88.3]', () => {
    let worst = 0;
    let at = 0;
    for (let i = 0; i <= 200_000; i++) {
      const x = Math.fround(-87.3 + (175.6 * i) / 200_000);
      const ulp = Math.abs(ordered(wasm.exp(x)) - ordered(Math.fround(Math.exp(x))));
      if (ulp > worst) [worst, at] = [ulp, x];
    }
    console.log(`${build} exp: max error ${worst} ulp (at x = ${at})`);
    expect(worst).toBeLessThanOrEqual(2);
  });
  it('gives 0 below the range, +inf above, NaN for NaN, 1 at 0', () => {
    expect(wasm.exp(-Infinity)).toBe(0);
    expect(wasm.exp(-100)).toBe(0);
    expect(wasm.exp(Infinity)).toBe(Infinity);
    expect(wasm.exp(100)).toBe(Infinity);
    expect(wasm.exp(NaN)).toBeNaN();
    expect(wasm.exp(0)).toBe(1);
  });
});
