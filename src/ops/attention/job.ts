// Attention as a job (see ../../job.ts): the descriptor, declared once, and the item runner that
// the calling thread and the workers share. An item is one (batch, query head, chunk of
// ATTENTION_ROW_CHUNK rows[, chunk of SPLIT_KV_CHUNK keys]) slice, handed to the f32_attention
// kernel with its own pointers. Split-KV (decoding over many keys) cuts along the keys too; its
// partial results are merged afterwards in a fixed order (mergeSplitKV), so the bits never depend
// on which thread ran what.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const ATTENTION_JOB = jobLayout(1, [
  'q', 'qB', 'qH', 'qRow', 'k', 'kB', 'kH', 'kRow', 'v', 'vB', 'vH', 'vRow', 'out', 'oB', 'oH', 'oRow',
  'qHeads', 'group', 'seqQ', 'seqKV', 'headDim', 'valueDim', 'scale', 'cap',
  'mask', 'maskKind', 'maskBytes', 'mB', 'mH', 'mRow', 'offset', 'left', 'right',
  'rowChunk', 'rowChunks', 'kvChunk', 'kvChunks', 'partialOut', 'partialStats', 'stats', 'weights',
] as const);

const J = ATTENTION_JOB.at;

/** Rows of queries per item (a multiple of the kernel's 32-row blocks). */
export const ATTENTION_ROW_CHUNK = 64;
/** Split-KV: decode-like calls (few query rows) over at least this many keys are cut along the keys. */
export const SPLIT_KV_MIN_KEYS = 1024;
export const SPLIT_KV_CHUNK = 512;
export const SPLIT_KV_MAX_ROWS = 4;

/** Runs one attention item; see the file header. */
export const runAttentionItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number, scratch: number): void => {
  const rowChunks = job[J.rowChunks];
  const kvChunks = job[J.kvChunks];
  const kvc = item % kvChunks;
  const rest = (item - kvc) / kvChunks;
  const rc = rest % rowChunks;
  const bh = (rest - rc) / rowChunks;
  const qHeads = job[J.qHeads];
  const h = bh % qHeads;
  const b = (bh - h) / qHeads;
  const kvHead = Math.floor(h / job[J.group]);
  const seqQ = job[J.seqQ];
  const row0 = rc * job[J.rowChunk];
  const rows = Math.min(job[J.rowChunk], seqQ - row0);
  const j0 = kvc * job[J.kvChunk];
  const keys = kvChunks === 1 ? job[J.seqKV] : Math.min(job[J.kvChunk], job[J.seqKV] - j0);
  const maskBytes = job[J.maskBytes];
  const mask = job[J.mask] === 0 ? 0 : job[J.mask] + maskBytes * (b * job[J.mB] + h * job[J.mH] + row0 * job[J.mRow] + j0);
  let out = job[J.out] + 4 * (b * job[J.oB] + h * job[J.oH] + row0 * job[J.oRow]);
  let ldo = job[J.oRow];
  let stats = job[J.stats] === 0 ? 0 : job[J.stats] + 8 * (bh * seqQ + row0);
  if (kvChunks > 1) {
    // partial outputs [bh][kvChunk][row][valueDim] and stats [bh][kvChunk][row][2]
    const slotIndex = (bh * kvChunks + kvc) * seqQ + row0;
    out = job[J.partialOut] + 4 * slotIndex * job[J.valueDim];
    ldo = job[J.valueDim];
    stats = job[J.partialStats] + 8 * slotIndex;
  }
  // weights [bh][row][key], never with split-KV
  const weights = job[J.weights] === 0 ? 0 : job[J.weights] + 4 * (bh * seqQ + row0) * job[J.seqKV];
  kernels.f32_attention(
    job[J.q] + 4 * (b * job[J.qB] + h * job[J.qH] + row0 * job[J.qRow]), job[J.qRow],
    job[J.k] + 4 * (b * job[J.kB] + kvHead * job[J.kH] + j0 * job[J.kRow]), job[J.kRow],
    job[J.v] + 4 * (b * job[J.vB] + kvHead * job[J.vH] + j0 * job[J.vRow]), job[J.vRow],
    out, ldo, rows, keys, job[J.headDim], job[J.valueDim], job[J.scale], job[J.cap],
    mask, job[J.maskKind], job[J.mRow], job[J.offset] + row0 - j0, job[J.left], job[J.right], stats, scratch,
    weights, job[J.seqKV],
  );
};

/**
 * Merges split-KV partial results into the output, chunk by chunk in order: with each chunk's
 * normalised output o_c and its row max m_c and sum l_c, out = sum_c w_c o_c / sum_c w_c where
 * w_c = l_c · exp(m_c - max_c m_c). A row no chunk could see stays 0.
 */
export function mergeSplitKV(job: Float64Array, f32: Float32Array): void {
  const kvChunks = job[J.kvChunks];
  const seqQ = job[J.seqQ];
  const valueDim = job[J.valueDim];
  const qHeads = job[J.qHeads];
  const heads = job[J.items] / (kvChunks * job[J.rowChunks]);
  const partial = job[J.partialOut] >>> 2;
  const stats = job[J.partialStats] >>> 2;
  const weights = new Float64Array(kvChunks);
  const acc = new Float64Array(valueDim);
  for (let bh = 0; bh < heads; bh++) {
    const h = bh % qHeads;
    const b = (bh - h) / qHeads;
    for (let row = 0; row < seqQ; row++) {
      let max = -Infinity;
      for (let c = 0; c < kvChunks; c++) {
        const s = stats + 2 * ((bh * kvChunks + c) * seqQ + row);
        if (f32[s + 1] > 0 || Number.isNaN(f32[s + 1])) max = Math.max(max, f32[s]);
      }
      let total = 0;
      acc.fill(0);
      for (let c = 0; c < kvChunks; c++) {
        const slotIndex = (bh * kvChunks + c) * seqQ + row;
        const l = f32[stats + 2 * slotIndex + 1];
        weights[c] = l > 0 || Number.isNaN(l) ? l * Math.exp(f32[stats + 2 * slotIndex] - max) : 0;
        total += weights[c];
        if (weights[c] === 0) continue;
        const o = partial + slotIndex * valueDim;
        for (let d = 0; d < valueDim; d++) acc[d] += weights[c] * f32[o + d];
      }
      const out = (job[J.out] >>> 2) + b * job[J.oB] + h * job[J.oH] + row * job[J.oRow];
      for (let d = 0; d < valueDim; d++) f32[out + d] = total > 0 || Number.isNaN(total) ? acc[d] / total : 0;
      if (job[J.stats] !== 0) {
        // the merged row's [max, sum], as the kernel writes them for an unsplit row
        const at = (job[J.stats] >>> 2) + 2 * (bh * seqQ + row);
        f32[at] = max;
        f32[at + 1] = total;
      }
    }
  }
}
