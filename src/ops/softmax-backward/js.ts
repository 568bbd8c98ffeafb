// Softmax backward in plain TypeScript: per row, the sum of dy ∘ y in float64, then dx.
import { type ArrayOf, resultArray } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import type { SoftmaxBackwardPlan } from './plan.js';

export function softmaxBackwardJs(plan: SoftmaxBackwardPlan, arrayOf: ArrayOf): Tensor {
  const { rows, cols, scale } = plan;
  const y = arrayOf(plan.y);
  const dy = arrayOf(plan.dy);
  const dx = plan.out ? arrayOf(plan.out) : new Float32Array(y.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let dot = 0;
    for (let j = 0; j < cols; j++) dot += y[base + j] * dy[base + j];
    for (let j = 0; j < cols; j++) dx[base + j] = scale * y[base + j] * (dy[base + j] - dot);
  }
  return { data: resultArray(plan.out, dx), dims: plan.outDims };
}
