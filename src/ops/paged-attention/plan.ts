// Paged attention's plan: one call over ragged items, each a sequence of the KV pool whose keys and
// values lie in pages (see src/features/kv-pool.ts, which builds these plans). For item s with q
// [Hq, n, Dk] and a history of `length` positions (this step's n included, already written into
// its pages), query head h = kvHead·group + g and query position i < n:
//   out[h][i] = sum_j softmax_j( softcap(scale · q[h][i]·k[kvHead][j]) ) v[kvHead][j]
//   over j <= length - n + i (causal, aligned bottom-right) and j >= length - n + i - left when
//   left >= 0 (a sliding window of left + 1 keys).
// Key j of an item is row j % pageSize of page pages[j / pageSize]; a page holds pageSize positions
// of every kv head (see PageStore for the layout).
import type { Operand, OpPlan } from '../../backend.js';
import type { ResidentTensor } from '../../memory/resident.js';

export interface PagedItem {
  /** [qHeads, n, headDim], already rotated when the step has rope. */
  readonly q: Operand<Float32Array>;
  readonly qHeads: number;
  readonly n: number;
  /** Positions in the history, this step's included. */
  readonly length: number;
  /** The history's pages in order (page ids; ceil(length / pageSize) of them). */
  readonly pages: Int32Array;
}

/**
 * Where pages live: page p is page p % slabPages of slab floor(p / slabPages), and every slab holds
 * slabPages pages, head-major and keys apart from values:
 *   keys   [kvHeads, slabPages, pageSize, Dk], then values [kvHeads, slabPages, pageSize, Dv],
 * so the pages a sequence took one after another hold each head's keys (and values) in one run of
 * memory, which a kernel streams far faster than pieces of a page each.
 */
export interface PageStore {
  readonly slabs: readonly ResidentTensor[];
  readonly slabPages: number;
  readonly pageSize: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly valueDim: number;
}

/** Floats in one slab. */
export const slabFloats = (store: Omit<PageStore, 'slabs'>): number => store.kvHeads * store.slabPages * store.pageSize * (store.headDim + store.valueDim);

/** Float offsets, inside its slab, of row `row` of kv head h's keys and values in the page at index `index` of the slab. */
export function rowsAt(store: Omit<PageStore, 'slabs'>, index: number, kvHead: number, row: number): { key: number; value: number } {
  const { kvHeads, slabPages, pageSize, headDim, valueDim } = store;
  const position = (kvHead * slabPages + index) * pageSize + row;
  return { key: position * headDim, value: kvHeads * slabPages * pageSize * headDim + position * valueDim };
}

export interface PagedAttentionPlan extends OpPlan {
  readonly store: PageStore;
  readonly items: readonly PagedItem[];
  readonly scale: number;
  readonly softcap: number;
  /** Keys before the query position a row sees (window); -1: all of them. */
  readonly left: number;
}

/** Multiply-adds of the step (Q·Kᵀ and P·V over the visible keys), for the pool's crossover. */
export function pagedFlops(store: PageStore, items: readonly PagedItem[]): number {
  let flops = 0;
  for (const item of items) {
    const visible = item.n * item.length - (item.n * (item.n - 1)) / 2;
    flops += 2 * item.qHeads * visible * (store.headDim + store.valueDim);
  }
  return flops;
}
