// Matmul in plain TypeScript: c = a · b (aᵀ and bᵀ as asked) for every broadcast batch matrix, each dot
// product accumulated in float64 and rounded once (with packed weights, after the bias and the
// activation, b read from its panels).
import { type ArrayOf, resultArray } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { activate } from './activation.js';
import { PANEL } from './packed.js';
import type { MatmulPlan } from './plan.js';

export function matmulJs(plan: MatmulPlan, arrayOf: ArrayOf): Tensor {
  const { m, n, k, transposeA, transposeB } = plan;
  const a = arrayOf(plan.a);
  const b = arrayOf(plan.b);
  const out = plan.out ? arrayOf(plan.out) : new Float32Array(plan.aOffsets.length * m * n);
  const bias = plan.bias ? arrayOf(plan.bias) : undefined;
  const panels = Math.ceil(n / PANEL);
  const row = new Float64Array(plan.packed ? panels * PANEL : n);
  // row i of a's matrix, gathered once (a column of [K, M] when transposed)
  const aRow = new Float64Array(k);
  for (let index = 0; index < plan.aOffsets.length; index++) {
    const aBase = plan.aOffsets[index];
    const bBase = plan.bOffsets[index];
    const cBase = index * m * n;
    for (let i = 0; i < m; i++) {
      for (let p = 0; p < k; p++) aRow[p] = a[transposeA ? aBase + p * m + i : aBase + i * k + p];
      if (plan.packed) {
        // panel by panel, its K x 8 floats read in order into eight float64 sums (PANEL is 8)
        for (let q = 0; q < panels; q++) {
          let s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
          for (let p = 0, at = q * k * PANEL; p < k; p++, at += PANEL) {
            const x = aRow[p];
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
          row[to] = s0;
          row[to + 1] = s1;
          row[to + 2] = s2;
          row[to + 3] = s3;
          row[to + 4] = s4;
          row[to + 5] = s5;
          row[to + 6] = s6;
          row[to + 7] = s7;
        }
        for (let j = 0; j < n; j++) out[cBase + i * n + j] = activate(row[j] + (bias ? bias[j] : 0), plan.activation);
      } else if (transposeB) {
        for (let j = 0; j < n; j++) {
          const bRow = bBase + j * k;
          let dot = 0;
          for (let p = 0; p < k; p++) dot += aRow[p] * b[bRow + p];
          out[cBase + i * n + j] = dot;
        }
      } else {
        row.fill(0);
        for (let p = 0; p < k; p++) {
          const x = aRow[p];
          const bRow = bBase + p * n;
          for (let j = 0; j < n; j++) row[j] += x * b[bRow + j];
        }
        for (let j = 0; j < n; j++) out[cBase + i * n + j] = row[j];
      }
    }
  }
  return { data: resultArray(plan.out, out), dims: plan.outDims };
}
