// Exact merging of attention computed over separate chunks of keys. For one query row, chunk c gives
// its output o_c (already normalised by its own softmax sum) and its log-sum-exp L_c. Then
//   L = log(sum_c exp(L_c)),   out = sum_c exp(L_c - L) · o_c
// is the attention over all the keys at once. Chunks that saw no key (L_c = -inf) add nothing.
import { AttentionError } from '../../errors.js';
import { type Tensor, describe, typedArrayName } from '../../tensor.js';

export interface AttentionChunk {
  /** The chunk's attention output [..., rows, Dv]. */
  output: Tensor;
  /** Its log-sum-exp per row [..., rows] (attention with returnLogSumExp). */
  logSumExp: Tensor;
}

/** Merges attention over key chunks into attention over all their keys; see the file header. */
export function mergeAttention(chunks: readonly AttentionChunk[]): { output: Tensor; logSumExp: Tensor } {
  if (!Array.isArray(chunks) || chunks.length === 0) throw new AttentionError('INVALID_TENSOR', 'mergeAttention needs a non-empty array of chunks', 'chunks');
  chunks.forEach((c, i) => {
    if (!c?.output?.data || !c?.logSumExp?.data) throw new AttentionError('INVALID_TENSOR', `chunks[${i}] needs { output, logSumExp } (attention with returnLogSumExp)`, `chunks[${i}]`);
    for (const part of ['output', 'logSumExp'] as const) {
      const name = typedArrayName(c[part].data);
      if (name !== 'Float32Array' && name !== 'Float64Array') {
        throw new AttentionError('INVALID_DTYPE', `chunks[${i}].${part}.data must be a Float32Array, got ${describe(c[part].data)}`, `chunks[${i}].${part}.data`);
      }
    }
  });
  const rows = chunks[0].logSumExp.data.length;
  const outSize = chunks[0].output.data.length;
  const valueDim = rows === 0 ? 0 : outSize / rows;
  if (!Number.isInteger(valueDim)) throw new AttentionError('SHAPE_MISMATCH', `chunks[0] has ${outSize} outputs for ${rows} rows: not a whole number per row`, 'chunks[0]');
  chunks.forEach((c, i) => {
    if (c.logSumExp.data.length !== rows || c.output.data.length !== outSize) {
      throw new AttentionError('SHAPE_MISMATCH', `chunks[${i}] has ${c.logSumExp.data.length} rows and ${c.output.data.length} outputs; chunks[0] has ${rows} and ${outSize}`, `chunks[${i}]`);
    }
  });
  const out = new Float32Array(outSize);
  const lse = new Float32Array(rows);
  const acc = new Float64Array(valueDim);
  for (let r = 0; r < rows; r++) {
    let max = -Infinity;
    for (const c of chunks) max = Math.max(max, c.logSumExp.data[r]);
    if (max === -Infinity) {
      lse[r] = -Infinity;
      continue;
    }
    let total = 0;
    acc.fill(0);
    for (const c of chunks) {
      const w = Math.exp(c.logSumExp.data[r] - max);
      if (w === 0) continue;
      total += w;
      for (let d = 0; d < valueDim; d++) acc[d] += w * c.output.data[r * valueDim + d];
    }
    lse[r] = max + Math.log(total);
    for (let d = 0; d < valueDim; d++) out[r * valueDim + d] = acc[d] / total;
  }
  return { output: { data: out, dims: [...chunks[0].output.dims] }, logSumExp: { data: lse, dims: [...chunks[0].logSumExp.dims] } };
}
