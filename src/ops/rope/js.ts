// RoPE in plain TypeScript: token by token, each head's pairs rotated with the plan's cos/sin
// tables (float32 values, products in float64), the tail beyond dims copied.
import { type ArrayOf, resultArray } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import type { RotaryPlan } from './plan.js';

export function rotaryJs(plan: RotaryPlan, arrayOf: ArrayOf): Tensor {
  const { batch, heads, seq, headDim, dims, interleaved, strideB, strideH, strideS, tableBatchStride } = plan;
  const x = arrayOf(plan.x);
  const out = plan.out ? arrayOf(plan.out) : new Float32Array(x.length);
  const cos = arrayOf(plan.cos);
  const sin = arrayOf(plan.sin);
  const half = dims / 2;
  // pair i is (first + i·step, first + i·step + gap)
  const step = interleaved ? 2 : 1;
  const gap = interleaved ? 1 : half;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let s = 0; s < seq; s++) {
        const row = b * strideB + h * strideH + s * strideS;
        const table = (b * tableBatchStride + s) * half;
        for (let i = 0; i < half; i++) {
          const at = row + i * step;
          const x1 = x[at];
          const x2 = x[at + gap];
          const c = cos[table + i];
          const sn = sin[table + i];
          out[at] = x1 * c - x2 * sn;
          out[at + gap] = x2 * c + x1 * sn;
        }
        if (out !== x) for (let d = dims; d < headDim; d++) out[row + d] = x[row + d];
      }
    }
  }
  return { data: resultArray(plan.out, out), dims: plan.outDims };
}
