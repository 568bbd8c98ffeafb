// Paged attention on the wasm kernels: stages each item's q, writes the page addresses of every
// item (the page table) and one record per work item into WASM memory (job.ts), and after the
// items ran merges the key chunks of cut items and reads each item's output out.
import type { Encoded, WasmCall, WasmOp } from '../../backend.js';
import type { Kernels } from '../../backends/kernels.js';
import { HEADER } from '../../job.js';
import { relaxedDotExact } from '../../platform.js';
import type { Tensor } from '../../tensor.js';
import {
  PAGED_DTYPE, PAGED_JOB, PAGED_ROW_CHUNK, PAGED_SPLIT_MAX_POSITIONS, PAGED_SPLIT_MIN_KEYS, RECORD, RECORD_INTS, splitChunk,
} from './job.js';
import { rowsAt } from './pages.js';
import type { PagedAttentionPlan } from './plan.js';

const J = PAGED_JOB.at;

/** A cut work slice: `chunks` partial results of `rows` rows each, merged into the item's output. */
interface Cut {
  partialOut: number;
  partialStats: number;
  chunks: number;
  group: number;
  positions: number;
  /** Address of row (i = 0, g = 0) of the output and the element strides of g and i. */
  out: number;
  ldoHead: number;
}

interface PagedEncoded extends Encoded {
  outputs: number[];
  cuts: Cut[];
}

export const pagedAttentionWasm: WasmOp<PagedAttentionPlan, Tensor[]> = {
  layout: PAGED_JOB,

  encode(plan: PagedAttentionPlan, call: WasmCall): PagedEncoded {
    const { store, items } = plan;
    const { pageSize, slabPages, kvHeads, headDim, valueDim } = store;
    const slabAt = store.slabs.map((slab, s) => call.stage({ resident: slab, offset: 0, length: slab.length }, `pool slab ${s}`));
    // the page tables: every item's pages, one after another, as the addresses of their kv head 0 keys and values
    const tablePages = items.reduce((sum, item) => sum + item.pages.length, 0);
    const tableK = call.alloc(4 * Math.max(1, tablePages));
    const tableV = call.alloc(4 * Math.max(1, tablePages));
    let records = 0;
    const shapes = items.map((item) => {
      const group = item.qHeads / kvHeads;
      const perChunk = Math.max(1, Math.floor(PAGED_ROW_CHUNK / group));
      const rowChunks = Math.ceil(item.n / perChunk);
      const split = item.n <= PAGED_SPLIT_MAX_POSITIONS && item.length >= PAGED_SPLIT_MIN_KEYS;
      const keyChunk = splitChunk(item.length, kvHeads, pageSize);
      const keyChunks = split ? Math.ceil(item.length / keyChunk) : 1;
      records += kvHeads * rowChunks * keyChunks;
      return { group, perChunk, rowChunks, keyChunk, keyChunks };
    });
    const recordsAt = call.alloc(4 * RECORD_INTS * Math.max(1, records));
    const outputs: number[] = [];
    const cuts: Cut[] = [];
    let pageCursor = 0;
    let record = 0;
    items.forEach((item, s) => {
      const { group, perChunk, rowChunks, keyChunk, keyChunks } = shapes[s];
      const q = call.stage(item.q, `items[${s}].q`);
      const out = call.alloc(4 * item.qHeads * item.n * valueDim);
      outputs.push(out);
      const pagesK = tableK + pageCursor;
      const pagesV = tableV + pageCursor;
      const keys = new Uint32Array(call.i32.buffer, pagesK, item.pages.length);
      const values = new Uint32Array(call.i32.buffer, pagesV, item.pages.length);
      item.pages.forEach((page, p) => {
        const slab = Math.floor(page / slabPages);
        const at = rowsAt(store, page - slab * slabPages, 0, 0);
        keys[p] = slabAt[slab] + at.key;
        values[p] = slabAt[slab] + at.value;
      });
      pageCursor += 4 * item.pages.length;
      for (let kvHead = 0; kvHead < kvHeads; kvHead++) {
        // this head's rows, from head 0's in the same page
        const head = rowsAt(store, 0, kvHead, 0);
        const head0 = rowsAt(store, 0, 0, 0);
        const headQ = q + 4 * kvHead * group * item.n * headDim;
        const headOut = out + 4 * kvHead * group * item.n * valueDim;
        for (let rc = 0; rc < rowChunks; rc++) {
          const i0 = rc * perChunk;
          const positions = Math.min(perChunk, item.n - i0);
          const rows = positions * group;
          let cut: Cut | undefined;
          if (keyChunks > 1) {
            cut = {
              partialOut: call.alloc(4 * keyChunks * rows * valueDim), partialStats: call.alloc(8 * keyChunks * rows), chunks: keyChunks,
              group, positions, out: headOut + 4 * i0 * valueDim, ldoHead: item.n * valueDim,
            };
            cuts.push(cut);
          }
          for (let kc = 0; kc < keyChunks; kc++) {
            const i32 = call.i32;
            const at = (recordsAt >>> 2) + record * RECORD_INTS;
            record++;
            i32[at + RECORD.q] = headQ + 4 * i0 * headDim;
            i32[at + RECORD.ldqHead] = item.n * headDim;
            if (cut) {
              // partial rows in the kernel's order: row i·group + g, valueDim apart
              i32[at + RECORD.out] = cut.partialOut + 4 * kc * rows * valueDim;
              i32[at + RECORD.ldoHead] = valueDim;
              i32[at + RECORD.ldoPos] = group * valueDim;
              i32[at + RECORD.stats] = cut.partialStats + 8 * kc * rows;
            } else {
              i32[at + RECORD.out] = headOut + 4 * i0 * valueDim;
              i32[at + RECORD.ldoHead] = item.n * valueDim;
              i32[at + RECORD.ldoPos] = valueDim;
              i32[at + RECORD.stats] = 0;
            }
            i32[at + RECORD.positions] = positions;
            i32[at + RECORD.group] = group;
            i32[at + RECORD.pagesK] = pagesK;
            i32[at + RECORD.pagesV] = pagesV;
            i32[at + RECORD.kOffset] = head.key - head0.key;
            i32[at + RECORD.vOffset] = head.value - head0.value;
            i32[at + RECORD.keyStart] = kc * keyChunk;
            i32[at + RECORD.keyEnd] = keyChunks > 1 ? Math.min(item.length, (kc + 1) * keyChunk) : item.length;
            i32[at + RECORD.offset] = item.length - item.n + i0;
          }
        }
      }
    });
    const job = PAGED_JOB.create();
    job[HEADER.items] = valueDim === 0 ? 0 : records;
    job[J.records] = recordsAt;
    job[J.headDim] = headDim;
    job[J.valueDim] = valueDim;
    job[J.pageSize] = pageSize;
    job[J.scale] = plan.scale;
    job[J.cap] = plan.softcap;
    job[J.left] = plan.left;
    job[J.dtype] = PAGED_DTYPE[store.dtype];
    job[J.relaxedDot] = relaxedDotExact ? 1 : 0;
    const scratchBytes = call.kernels.f32_attention_paged_scratch_bytes(headDim, valueDim);
    return { job, scratchBytes, outPtr: 0, size: 0, outputs, cuts };
  },

  finish(plan: PagedAttentionPlan, call: WasmCall, encoded: Encoded): Tensor[] {
    const { outputs, cuts } = encoded as PagedEncoded;
    const valueDim = plan.store.valueDim;
    for (const cut of cuts) mergeCut(cut, call.kernels, valueDim);
    return plan.items.map((item, s) => ({ data: call.collect(outputs[s], item.qHeads * item.n * valueDim, undefined), dims: [item.qHeads, item.n, valueDim] }));
  },
};

/**
 * Merges a cut slice's chunks into its output rows with the f32_merge_chunks kernel, one run of
 * positions per query head: partial row (g, i) at (g + i·group)·valueDim of a chunk's block, its
 * stats at row i·group + g, output row (g, i) at out + g·ldoHead + i·valueDim.
 */
function mergeCut(cut: Cut, kernels: Kernels, valueDim: number): void {
  const rows = cut.positions * cut.group;
  for (let g = 0; g < cut.group; g++) {
    kernels.f32_merge_chunks(
      cut.partialOut + 4 * g * valueDim, cut.group * valueDim, rows * valueDim, cut.partialStats + 8 * g, cut.group, rows,
      cut.chunks, cut.positions, valueDim, cut.out + 4 * g * cut.ldoHead, valueDim, 0,
    );
  }
}
