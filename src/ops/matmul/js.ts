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
    const panels = Math.ceil(n / PANEL);
    const padded = new Float64Array(panels * PANEL);
    for (let i = 0; i < m; i++) {
      const aRow = i * k;
      // panel by panel, its K x 8 floats read in order into eight float64 sums (PANEL is 8)
      for (let q = 0; q < panels; q++) {
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
        for (let p = 0, at = q * k * PANEL; p < k; p++, at += PANEL) {
          const x = a[aRow + p];
          s0 += x * b[at];
          s1 += x * b[at + 1];
          s2 += x * b[at + 2];
          s3 += x * b[at + 3];
          s4 += x * b[at + 4];
          s5 += x * b[at + 5];
          s6 += x * b[at + 6];
          s7 += x * b[at + 7];
        }
        const to = q * PANEL;
        padded[to] = s0;
        padded[to + 1] = s1;
        padded[to + 2] = s2;
        padded[to + 3] = s3;
        padded[to + 4] = s4;
        padded[to + 5] = s5;
        padded[to + 6] = s6;
        padded[to + 7] = s7;
      }
      for (let j = 0; j < n; j++) out[i * n + j] = activate(padded[j] + (bias ? bias[j] : 0), plan.activation);
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
