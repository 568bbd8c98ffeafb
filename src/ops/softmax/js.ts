// Softmax in plain TypeScript: row by row, max, exp and sum in float64, written in place of the
// scaled and masked row.
import { type ArrayOf, resultArray } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import type { SoftmaxPlan } from './plan.js';

export function softmaxJs(plan: SoftmaxPlan, arrayOf: ArrayOf): Tensor {
  const { matrices, rows, cols, scale, causal, mask, maskRowStride } = plan;
  const x = arrayOf(plan.x);
  const out = plan.out ? arrayOf(plan.out) : new Float32Array(x.length);
  const maskData = mask ? arrayOf(mask.operand) : undefined;
  const boolMask = mask?.kind === 'bool';
  const row = new Float64Array(cols);
  for (let index = 0; index < matrices; index++) {
    const maskBase = mask ? plan.maskOffsets[index] : 0;
    for (let i = 0; i < rows; i++) {
      const base = (index * rows + i) * cols;
      const maskRow = maskBase + i * maskRowStride;
      const visible = causal ? Math.min(cols, i + 1) : cols;
      let max = -Infinity;
      for (let j = 0; j < cols; j++) {
        let t = j < visible ? x[base + j] * scale : -Infinity;
        if (maskData && j < visible) {
          const mv = maskData[maskRow + j];
          if (boolMask) t = mv === 0 ? -Infinity : t;
          else t += mv;
        }
        row[j] = t;
        if (!(t <= max)) max = t;
      }
      if (max === -Infinity) {
        out.fill(0, base, base + cols);
        continue;
      }
      let sum = 0;
      for (let j = 0; j < cols; j++) sum += (row[j] = Math.exp(row[j] - max));
      const inv = 1 / sum;
      for (let j = 0; j < cols; j++) out[base + j] = row[j] * inv;
    }
  }
  return { data: resultArray(plan.out, out), dims: plan.outDims };
}
