// ONNX's qk_matmul_output, materialised when a node asks for it: [B, Hq, Sq, Skv] in float32 from
// float64 dot products, at the stage the mode names. The fused kernels never build it; this is
// the by-request path of the ONNX entry point, written plainly, shared by every backend.
//   mode 0: scale · q·k            mode 1: softcap(mode 0)
//   mode 2: mode 1 + mask, -inf where causal or the window hides the key
//   mode 3: softmax over the keys of mode 2 (0 for a row that sees no key)
import type { AttentionPlan } from '../ops/attention/plan.js';

export type ScoresMode = 0 | 1 | 2 | 3;

/** validKeys[b] (optional): keys j >= validKeys[b] are hidden from batch b from mode 2 on (ONNX nonpad_kv_seqlen). */
export function attentionScores(
  plan: AttentionPlan, q: Float32Array, k: Float32Array, maskData: Float32Array | Uint8Array | undefined, mode: ScoresMode, validKeys?: ArrayLike<number>,
): Float32Array {
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, scale, softcap, offset, left, right, mask, strides } = plan;
  const group = kvHeads === 0 ? 1 : qHeads / kvHeads;
  const out = new Float32Array(batch * qHeads * seqQ * seqKV);
  const row = new Float64Array(seqKV);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < qHeads; h++) {
      const kvHead = Math.floor(h / group);
      for (let i = 0; i < seqQ; i++) {
        const qRow = b * strides.q.batch + h * strides.q.head + i * strides.q.row;
        const maskRow = mask ? b * mask.at.batch + h * mask.at.head + i * mask.at.row : 0;
        let max = -Infinity;
        for (let j = 0; j < seqKV; j++) {
          const kRow = b * strides.k.batch + kvHead * strides.k.head + j * strides.k.row;
          let dot = 0;
          for (let d = 0; d < headDim; d++) dot += q[qRow + d] * k[kRow + d];
          let t = dot * scale;
          if (mode >= 1 && softcap > 0) t = softcap * Math.tanh(t / softcap);
          if (mode >= 2) {
            if (mask && maskData) t = mask.kind === 'bool' ? (maskData[maskRow + j] === 0 ? -Infinity : t) : t + maskData[maskRow + j];
            const rowOffset = validKeys ? validKeys[b] - seqQ : offset;
            const hidden = (right >= 0 && j > i + rowOffset + right) || (left >= 0 && j < i + rowOffset - left) || (validKeys !== undefined && j >= validKeys[b]);
            if (hidden) t = -Infinity;
          }
          row[j] = t;
          if (!(t <= max)) max = t;
        }
        const base = ((b * qHeads + h) * seqQ + i) * seqKV;
        if (mode < 3) {
          for (let j = 0; j < seqKV; j++) out[base + j] = row[j];
          continue;
        }
        if (max === -Infinity) continue;
        let sum = 0;
        for (let j = 0; j < seqKV; j++) sum += (row[j] = Math.exp(row[j] - max));
        for (let j = 0; j < seqKV; j++) out[base + j] = row[j] / sum;
      }
    }
  }
  return out;
}
