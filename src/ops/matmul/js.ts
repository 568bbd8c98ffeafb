// Matmul in plain TypeScript: c = a · b (or a · bᵀ) for every broadcast batch matrix, each dot
// product accumulated in float64 and rounded once (with packed weights, after the bias and the
// activation, b read from its panels).
import { type ArrayOf, resultArray } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { activate } from './activation.js';
import { PANEL } from './packed.js';
import type { MatmulPlan } from './plan.js';

export function matmulJs(plan: MatmulPlan, arrayOf: ArrayOf): Tensor {
  const { m, n, k, transposeB } = plan;
  const a = arrayOf(plan.a);
  const b = arrayOf(plan.b);
  const out = plan.out ? arrayOf(plan.out) : new Float32Array(plan.aOffsets.length * m * n);
  const row = new Float64Array(n);
  if (plan.packed) {
    const bias = plan.bias ? arrayOf(plan.bias) : undefined;
    for (let i = 0; i < m; i++) {
      row.fill(0);
      for (let p = 0; p < k; p++) {
        const x = a[i * k + p];
        for (let j = 0; j < n; j++) row[j] += x * b[(Math.floor(j / PANEL) * k + p) * PANEL + (j % PANEL)];
      }
      for (let j = 0; j < n; j++) out[i * n + j] = activate(row[j] + (bias ? bias[j] : 0), plan.activation);
    }
    return { data: resultArray(plan.out, out), dims: plan.outDims };
  }
  for (let index = 0; index < plan.aOffsets.length; index++) {
    const aBase = plan.aOffsets[index];
    const bBase = plan.bOffsets[index];
    const cBase = index * m * n;
    for (let i = 0; i < m; i++) {
      const aRow = aBase + i * k;
      if (transposeB) {
        for (let j = 0; j < n; j++) {
          const bRow = bBase + j * k;
          let dot = 0;
          for (let p = 0; p < k; p++) dot += a[aRow + p] * b[bRow + p];
          out[cBase + i * n + j] = dot;
        }
      } else {
        row.fill(0);
        for (let p = 0; p < k; p++) {
          const x = a[aRow + p];
          const bRow = bBase + p * n;
          for (let j = 0; j < n; j++) row[j] += x * b[bRow + j];
        }
        for (let j = 0; j < n; j++) out[cBase + i * n + j] = row[j];
      }
    }
  }
  return { data: resultArray(plan.out, out), dims: plan.outDims };
}
