// The reference of the KV pool's page element types: the values a float16 or int8 page holds for
// given float32 rows, computed in float64 from the definitions (a separate implementation from the
// pool's storeRow in pages.ts, which tests hold to it). Attention over a pool of that dtype is the
// reference attention over these values.
import { AttentionError } from '../../errors.js';
import type { KVDtype } from './pages.js';

export type { KVDtype };

/** x rounded to an integer, ties to even. */
function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** The IEEE half nearest to x (ties to even), as a number; x is finite and |x| <= 65504. */
function toHalf(x: number): number {
  const magnitude = Math.abs(x);
  // the spacing of halves around |x|: 2^-24 below 2^-14 (subnormals), else 2^(exponent - 10)
  let exponent = magnitude < 2 ** -14 ? -14 : Math.floor(Math.log2(magnitude));
  if (2 ** exponent > magnitude) exponent--; // log2 rounded up at a power of two
  if (2 ** (exponent + 1) <= magnitude) exponent++;
  const quantum = 2 ** (Math.max(exponent, -14) - 10);
  const y = roundHalfEven(magnitude / quantum) * quantum;
  return x < 0 || Object.is(x, -0) ? -y : y;
}

/**
 * The values a KV pool page of `dtype` holds for rows of `width` float32 values (data [rows, width]):
 *   float32: x (a subnormal becomes 0);
 *   float16: the nearest half, ties to even;
 *   int8:    per row, s = f32(absmax / 127) and q = round_half_even(f32(x · f32(127 / absmax))), the
 *            value q·s; a row with absmax < 127·2^-126 holds zeros.
 */
export function quantizeKV(data: ArrayLike<number>, width: number, dtype: KVDtype): Float64Array {
  if (!Number.isInteger(width) || width < 1 || data.length % width !== 0) {
    throw new AttentionError('INVALID_ARGUMENT', `width must be a positive integer dividing data.length ${data.length}, got ${width}`, 'width');
  }
  const out = new Float64Array(data.length);
  for (let r = 0; r < data.length / width; r++) {
    let absmax = 0;
    for (let d = 0; d < width; d++) absmax = Math.max(absmax, Math.abs(Math.fround(data[r * width + d])));
    for (let d = 0; d < width; d++) {
      const x = Math.fround(data[r * width + d]);
      if (dtype === 'float32') out[r * width + d] = Math.abs(x) < 2 ** -126 ? 0 : x;
      else if (dtype === 'float16') out[r * width + d] = toHalf(x);
      else if (absmax < 127 * 2 ** -126) out[r * width + d] = 0;
      else {
        const q = Math.max(-127, Math.min(127, roundHalfEven(Math.fround(x * Math.fround(127 / absmax)))));
        out[r * width + d] = q * Math.fround(absmax / 127);
      }
    }
  }
  return out;
}
