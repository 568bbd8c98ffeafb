// A job is one op call cut into independent items, described by numbers only (a Float64Array), so
// that the calling thread and every worker can run any item of it with the same code: runItem below.
// Items write disjoint outputs, and how a call is cut depends only on its shape, never on the thread
// count, so the result is bit-for-bit the same on 1 thread or 64, sync or async. The one reduction
// across items, split-KV decoding, is merged afterwards in a fixed order (mergeSplitKV).
import type { Kernels } from './wasm-module.js';

export const OP_ATTENTION = 1;
export const OP_GEMM = 2;
export const OP_SOFTMAX = 3;

/** Field indices of a job descriptor. */
export const J = {
  op: 0, items: 1, scratch: 2, scratchBytes: 3,
  // attention
  q: 4, qB: 5, qH: 6, qRow: 7, k: 8, kB: 9, kH: 10, kRow: 11, v: 12, vB: 13, vH: 14, vRow: 15,
  out: 16, oB: 17, oH: 18, oRow: 19, qHeads: 20, group: 21, seqQ: 22, seqKV: 23, headDim: 24, valueDim: 25,
  scale: 26, cap: 27, mask: 28, maskKind: 29, maskBytes: 30, mB: 31, mH: 32, mRow: 33,
  offset: 34, left: 35, right: 36, rowChunk: 37, rowChunks: 38, kvChunk: 39, kvChunks: 40,
  partialOut: 41, partialStats: 42, stats: 43,
  // gemm: m, n, k, a, b, c, transB, per-matrix offsets table (f64 pairs at ptr), mChunk, nChunk
  gm: 4, gn: 5, gk: 6, ga: 7, gb: 8, gc: 9, gTransB: 10, gOffsets: 11, gMChunk: 12, gNChunk: 13, gMChunks: 14, gNChunks: 15,
  // softmax: x, out, rows, cols, scale, mask, maskKind, maskBytes, maskRowStride, causal, mask offsets ptr, rowChunk, rowChunks
  sx: 4, sOut: 5, sRows: 6, sCols: 7, sScale: 8, sMask: 9, sMaskKind: 10, sMaskBytes: 11, sMaskRow: 12, sCausal: 13,
  sMaskOffsets: 14, sRowChunk: 15, sRowChunks: 16,
} as const;

export const JOB_FIELDS = 48;

/** Rows of queries per attention item (a multiple of the kernel's 32-row blocks). */
export const ATTENTION_ROW_CHUNK = 64;
/** Split-KV: decode-like calls (few query rows) over at least this many keys are cut along the keys. */
export const SPLIT_KV_MIN_KEYS = 1024;
export const SPLIT_KV_CHUNK = 512;
export const SPLIT_KV_MAX_ROWS = 4;
export const GEMM_M_CHUNK = 128;
export const GEMM_N_CHUNK = 256;
export const SOFTMAX_ROW_CHUNK = 64;

/** Runs item `item` of `job` with the scratch of thread slot `slot`. */
export function runItem(kernels: Kernels, job: Float64Array, item: number, slot: number, i32: Int32Array): void {
  const scratch = job[J.scratch] + slot * job[J.scratchBytes];
  switch (job[J.op]) {
    case OP_ATTENTION: {
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
      const row0 = rc * job[J.rowChunk];
      const rows = Math.min(job[J.rowChunk], job[J.seqQ] - row0);
      const j0 = kvc * job[J.kvChunk];
      const keys = kvChunks === 1 ? job[J.seqKV] : Math.min(job[J.kvChunk], job[J.seqKV] - j0);
      const maskBytes = job[J.maskBytes];
      const mask = job[J.mask] === 0 ? 0 : job[J.mask] + maskBytes * (b * job[J.mB] + h * job[J.mH] + row0 * job[J.mRow] + j0);
      let out = job[J.out] + 4 * (b * job[J.oB] + h * job[J.oH] + row0 * job[J.oRow]);
      let ldo = job[J.oRow];
      let stats = job[J.stats] === 0 ? 0 : job[J.stats] + 8 * (bh * job[J.seqQ] + row0);
      if (kvChunks > 1) {
        // partial outputs [bh][kvChunk][row][valueDim] and stats [bh][kvChunk][row][2]
        const seqQ = job[J.seqQ];
        const slotIndex = (bh * kvChunks + kvc) * seqQ + row0;
        out = job[J.partialOut] + 4 * slotIndex * job[J.valueDim];
        ldo = job[J.valueDim];
        stats = job[J.partialStats] + 8 * slotIndex;
      }
      kernels.f32_attention(
        job[J.q] + 4 * (b * job[J.qB] + h * job[J.qH] + row0 * job[J.qRow]), job[J.qRow],
        job[J.k] + 4 * (b * job[J.kB] + kvHead * job[J.kH] + j0 * job[J.kRow]), job[J.kRow],
        job[J.v] + 4 * (b * job[J.vB] + kvHead * job[J.vH] + j0 * job[J.vRow]), job[J.vRow],
        out, ldo, rows, keys, job[J.headDim], job[J.valueDim], job[J.scale], job[J.cap],
        mask, job[J.maskKind], job[J.mRow], job[J.offset] + row0 - j0, job[J.left], job[J.right], stats, scratch,
      );
      break;
    }
    case OP_GEMM: {
      const nChunks = job[J.gNChunks];
      const mChunks = job[J.gMChunks];
      const nc = item % nChunks;
      const rest = (item - nc) / nChunks;
      const mc = rest % mChunks;
      const matrix = (rest - mc) / mChunks;
      const m = job[J.gm], n = job[J.gn], k = job[J.gk];
      const transB = job[J.gTransB];
      const m0 = mc * job[J.gMChunk];
      const n0 = nc * job[J.gNChunk];
      const offsets = job[J.gOffsets] >>> 2;
      const aOffset = i32[offsets + 2 * matrix];
      const bOffset = i32[offsets + 2 * matrix + 1];
      kernels.f32_gemm(
        Math.min(job[J.gMChunk], m - m0), Math.min(job[J.gNChunk], n - n0), k,
        job[J.ga] + 4 * (aOffset + m0 * k), k,
        job[J.gb] + 4 * (bOffset + (transB ? n0 * k : n0)), transB ? k : n, transB,
        job[J.gc] + 4 * (matrix * m * n + m0 * n + n0), n, scratch,
      );
      break;
    }
    case OP_SOFTMAX: {
      const rowChunks = job[J.sRowChunks];
      const rc = item % rowChunks;
      const matrix = (item - rc) / rowChunks;
      const rows = job[J.sRows], cols = job[J.sCols];
      const row0 = rc * job[J.sRowChunk];
      const offset = 4 * (matrix * rows * cols + row0 * cols);
      const maskBytes = job[J.sMaskBytes];
      const mask = job[J.sMask] === 0 ? 0 : job[J.sMask] + maskBytes * (i32[(job[J.sMaskOffsets] >>> 2) + matrix] + row0 * job[J.sMaskRow]);
      kernels.f32_softmax_rows(
        job[J.sx] + offset, cols, job[J.sOut] + offset, cols, Math.min(job[J.sRowChunk], rows - row0), cols,
        job[J.sScale], 0, mask, job[J.sMaskKind], job[J.sMaskRow], job[J.sCausal], row0,
      );
      break;
    }
    default:
      throw new Error(`wasm-attention internal error: unknown job op ${job[J.op]}`);
  }
}

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
  const heads = (job[J.items] / (kvChunks * job[J.rowChunks]));
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
