// Paged attention in plain TypeScript (see plan.ts for the math): each row's scores over its
// visible keys, read from their pages (dequantized as pages.ts's loadRow says), in float64, then the
// softmax and the weighted sum of values.
import type { ArrayOf } from '../../backend.js';
import type { Tensor } from '../../tensor.js';
import { loadRow, rowsAt, slabViews, valueStride } from './pages.js';
import type { PagedAttentionPlan } from './plan.js';

export function pagedAttentionJs(plan: PagedAttentionPlan, arrayOf: ArrayOf): Tensor[] {
  const { store, scale, softcap, left } = plan;
  const { pageSize, slabPages, kvHeads, headDim, valueDim, dtype } = store;
  const slabs = store.slabs.map((slab) => slabViews(slab.view() as Float32Array));
  const key = new Float64Array(headDim);
  return plan.items.map((item) => {
    const q = arrayOf(item.q);
    const { n, length, pages } = item;
    const group = item.qHeads / kvHeads;
    const out = new Float32Array(item.qHeads * n * valueDim);
    const scores = new Float64Array(length);
    const acc = new Float64Array(valueDim);
    const value = new Float64Array(valueDim);
    for (let kvHead = 0; kvHead < kvHeads; kvHead++) {
      // key or value j of this head, read into `row`
      const read = (j: number, part: 'key' | 'value', row: Float64Array): void => {
        const page = pages[Math.floor(j / pageSize)];
        const slab = Math.floor(page / slabPages);
        const at = rowsAt(store, page - slab * slabPages, kvHead, j % pageSize);
        if (part === 'key') loadRow(dtype, slabs[slab], at.key, at.keyScale, row, 0, headDim);
        else loadRow(dtype, slabs[slab], at.value, at.valueScale, row, 0, valueDim, valueStride(dtype));
      };
      for (let g = 0; g < group; g++) {
        const h = kvHead * group + g;
        for (let i = 0; i < n; i++) {
          const last = length - n + i;
          const first = left < 0 ? 0 : Math.max(0, last - left);
          const qRow = (h * n + i) * headDim;
          let max = -Infinity;
          // a NaN score (a NaN in q, an infinity times 0) makes the row NaN, as in the kernels and the reference
          let nan = false;
          for (let j = first; j <= last; j++) {
            read(j, 'key', key);
            let dot = 0;
            for (let d = 0; d < headDim; d++) dot += q[qRow + d] * key[d];
            let t = scale * dot;
            if (softcap > 0) t = softcap * Math.tanh(t / softcap);
            scores[j] = t;
            if (t > max) max = t;
            else if (Number.isNaN(t)) nan = true;
          }
          acc.fill(nan ? NaN : 0);
          let sum = nan ? NaN : 0;
          for (let j = first; j <= last && max > -Infinity; j++) {
            const p = Math.exp(scores[j] - max);
            sum += p;
            read(j, 'value', value);
            for (let d = 0; d < valueDim; d++) acc[d] += p * value[d];
          }
          const outRow = (h * n + i) * valueDim;
          for (let d = 0; d < valueDim; d++) out[outRow + d] = sum > 0 || Number.isNaN(sum) ? acc[d] / sum : 0;
        }
      }
    }
    return { data: out, dims: [item.qHeads, n, valueDim] };
  });
}
