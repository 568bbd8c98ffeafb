// RoPE in plain TypeScript: token by token, each head's pairs rotated with the plan's cos/sin
// tables (float32 values, products in float64), the tail beyond dims copied. rotateRows is the
// loop itself, shared with attention's rope option (../attention/js.ts) and the KV cache's append.
import { type ArrayOf, resultArray } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import type { RotaryPlan } from './plan.js';

/**
 * Rotates `rows` head vectors of headDim floats, as the f32_rope_rows kernel does: row r is read at
 * x[xAt + r·ldx ..] and written at y[yAt + r·ldy ..] (y may be x, at the same place), with the
 * angles of table row r at cos/sin[tableAt + r·dims/2 ..]. Pairs (i, i + dims/2), or (2i, 2i + 1)
 * when interleaved: (x1, x2) -> (x1·cos - x2·sin, x2·cos + x1·sin); d >= dims copied.
 */
export function rotateRows(
  x: Float32Array, xAt: number, ldx: number, y: Float32Array, yAt: number, ldy: number, rows: number,
  headDim: number, dims: number, cos: Float32Array, sin: Float32Array, tableAt: number, interleaved: boolean,
): void {
  const half = dims / 2;
  // pair i is (first + i·step, first + i·step + gap)
  const step = interleaved ? 2 : 1;
  const gap = interleaved ? 1 : half;
  const copyTail = y !== x || yAt !== xAt;
  for (let r = 0; r < rows; r++) {
    const from = xAt + r * ldx;
    const to = yAt + r * ldy;
    const table = tableAt + r * half;
    for (let i = 0; i < half; i++) {
      const x1 = x[from + i * step];
      const x2 = x[from + i * step + gap];
      const c = cos[table + i];
      const s = sin[table + i];
      y[to + i * step] = x1 * c - x2 * s;
      y[to + i * step + gap] = x2 * c + x1 * s;
    }
    if (copyTail) for (let d = dims; d < headDim; d++) y[to + d] = x[from + d];
  }
}

export function rotaryJs(plan: RotaryPlan, arrayOf: ArrayOf): Tensor {
  const { batch, heads, seq, headDim, dims, interleaved, strideB, strideH, strideS, tableBatchStride } = plan;
  const x = arrayOf(plan.x);
  const out = plan.out ? arrayOf(plan.out) : new Float32Array(x.length);
  const cos = arrayOf(plan.cos);
  const sin = arrayOf(plan.sin);
  const half = dims / 2;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const row = b * strideB + h * strideH;
      rotateRows(x, row, strideS, out, row, strideS, seq, headDim, dims, cos, sin, b * tableBatchStride * half, interleaved);
    }
  }
  return { data: resultArray(plan.out, out), dims: plan.outDims };
}
