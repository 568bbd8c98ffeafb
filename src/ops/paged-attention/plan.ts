// Paged attention's plan: one call over ragged items, each a sequence of the KV pool whose keys and
// values lie in pages (see src/features/kv-pool.ts, which builds these plans). For item s with q
// [Hq, n, Dk] and a history of `length` positions (this step's n included, already written into
// its pages), query head h = kvHead·group + g and query position i < n:
//   out[h][i] = sum_j softmax_j( softcap(scale · q[h][i]·k[kvHead][j]) ) v[kvHead][j]
//   over j <= length - n + i (causal, aligned bottom-right) and j >= length - n + i - left when
//   left >= 0 (a sliding window of left + 1 keys).
// Key j of an item is row j % pageSize of page pages[j / pageSize]; a page holds pageSize positions
// of every kv head (see pages.ts for the layout); a page holds float32, float16 or int8 values.
import type { Operand, OpPlan } from '../../backend.js';
import type { ResidentTensor } from '../../memory/resident.js';
import type { PageLayout } from './pages.js';

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

/** The pages (see pages.ts for their layout and element types): page p is page p % slabPages of slab floor(p / slabPages). */
export interface PageStore extends PageLayout {
  readonly slabs: readonly ResidentTensor[];
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
