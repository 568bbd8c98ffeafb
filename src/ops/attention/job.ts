// Attention as a job (see ../../job.ts): the descriptor, declared once, and the item runner that
// the calling thread and the workers share. An item is one (batch, query head, chunk of
// ATTENTION_BLOCKS_PER_ITEM blocks of the kernel's query rows[, chunk of SPLIT_KV_CHUNK keys]) slice,
// handed to the f32_attention kernel with its own pointers. Split-KV (decoding over many keys) cuts
// along the keys too; its partial results are merged afterwards in a fixed order (mergeSplitKV), so
// the bits never depend on which thread ran what.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const ATTENTION_JOB = jobLayout(1, [
  'q', 'qB', 'qH', 'qRow', 'k', 'kB', 'kH', 'kRow', 'v', 'vB', 'vH', 'vRow', 'out', 'oB', 'oH', 'oRow',
  'qHeads', 'group', 'seqQ', 'seqKV', 'headDim', 'valueDim', 'scale', 'cap',
  'mask', 'maskKind', 'maskBytes', 'mB', 'mH', 'mRow', 'offset', 'left', 'right',
  'rowChunk', 'rowChunks', 'kvChunk', 'kvChunks', 'partialOut', 'partialStats', 'stats', 'weights',
] as const);

const J = ATTENTION_JOB.at;

/** Blocks of the kernel's query rows per item (ATT_BR rows each: 40 in the simd build, 48 in the relaxed
 * one): whole blocks, since the kernel packs each key and value block once per block of rows; two
 * measured 3-5% faster than the 64-row items before (whose second block had 16 or 24 rows). */
export const ATTENTION_BLOCKS_PER_ITEM = 2;
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
 * Merges split-KV partial results into the output with the f32_merge_chunks kernel, chunk by chunk in
 * order (see assembly/f32-merge-chunks-simd.ts), one (batch, head) at a time: partial outputs
 * [bh][kvChunk][row][valueDim], their stats [bh][kvChunk][row][2]; the merged [max, sum] of each row
 * into the stats, when asked for, as the kernel writes them for an unsplit row.
 */
export function mergeSplitKV(job: Float64Array, kernels: Kernels): void {
  const kvChunks = job[J.kvChunks];
  const seqQ = job[J.seqQ];
  const valueDim = job[J.valueDim];
  const qHeads = job[J.qHeads];
  const heads = job[J.items] / (kvChunks * job[J.rowChunks]);
  for (let bh = 0; bh < heads; bh++) {
    const h = bh % qHeads;
    const b = (bh - h) / qHeads;
    kernels.f32_merge_chunks(
      job[J.partialOut] + 4 * bh * kvChunks * seqQ * valueDim, valueDim, seqQ * valueDim,
      job[J.partialStats] + 8 * bh * kvChunks * seqQ, 1, seqQ, kvChunks, seqQ, valueDim,
      job[J.out] + 4 * (b * job[J.oB] + h * job[J.oH]), job[J.oRow],
      job[J.stats] === 0 ? 0 : job[J.stats] + 8 * bh * seqQ,
    );
  }
}
