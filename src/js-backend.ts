// The pure-JS path: the same plans as the wasm kernels, in plain TypeScript over Float32Arrays.
// It is the fallback where WASM SIMD is missing and the yardstick in tests and benchmarks, so it is
// written to be fast in plain JS (contiguous inner loops, no allocation per row) but stays simple.
import type { AttentionPlan, MatmulPlan, SoftmaxPlan } from './plan.js';

/** Keys per block of the online softmax (the wasm kernel's ATT_BC). */
const BLOCK = 64;

/**
 * Attention for every (batch, query head): out[i] = softmax_j(t[i][j]) · v, with the scores t of
 * the plan (scale, softcap, mask, visible window), streamed over blocks of BLOCK keys with an online
 * softmax: the running max m and sum l, and the output rescaled by exp(m_old - m_new) when m grows.
 */
export function attentionJs(plan: AttentionPlan, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, logSumExp?: Float32Array): void {
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, scale, softcap, offset, left, right, mask } = plan;
  const group = kvHeads === 0 ? 1 : qHeads / kvHeads;
  const scores = new Float32Array(BLOCK);
  const acc = new Float64Array(valueDim);
  const maskData = mask?.data;
  const boolMask = mask?.kind === 'bool';
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < qHeads; h++) {
      const kvHead = Math.floor(h / group);
      const kBase = b * plan.k.batch + kvHead * plan.k.head;
      const vBase = b * plan.v.batch + kvHead * plan.v.head;
      for (let i = 0; i < seqQ; i++) {
        const qRow = b * plan.q.batch + h * plan.q.head + i * plan.q.row;
        const oRow = b * plan.out.batch + h * plan.out.head + i * plan.out.row;
        const maskRow = mask ? b * mask.at.batch + h * mask.at.head + i * mask.at.row : 0;
        const lo = left < 0 ? 0 : Math.max(0, i + offset - left);
        const hi = right < 0 ? seqKV : Math.min(seqKV, i + offset + right + 1);
        let m = -Infinity;
        let l = 0;
        acc.fill(0);
        for (let j0 = lo; j0 < hi; j0 += BLOCK) {
          const count = Math.min(BLOCK, hi - j0);
          let blockMax = -Infinity;
          for (let c = 0; c < count; c++) {
            const kRow = kBase + (j0 + c) * plan.k.row;
            let dot = 0;
            for (let d = 0; d < headDim; d++) dot += q[qRow + d] * k[kRow + d];
            let t = dot * scale;
            if (softcap > 0) t = softcap * Math.tanh(t / softcap);
            if (maskData) {
              const mv = maskData[maskRow + j0 + c];
              if (boolMask) t = mv === 0 ? -Infinity : t;
              else t += mv;
            }
            scores[c] = t;
            if (!(t <= blockMax)) blockMax = t; // NaN wins, as in the kernel
          }
          const mNew = Math.max(m, blockMax);
          if (mNew === -Infinity) continue;
          if (mNew !== m && m !== -Infinity) {
            const alpha = Math.exp(m - mNew);
            for (let d = 0; d < valueDim; d++) acc[d] *= alpha;
            l *= alpha;
          }
          m = mNew;
          for (let c = 0; c < count; c++) {
            const p = Math.exp(scores[c] - m);
            if (p === 0) continue;
            l += p;
            const vRow = vBase + (j0 + c) * plan.v.row;
            for (let d = 0; d < valueDim; d++) acc[d] += p * v[vRow + d];
          }
        }
        if (l > 0 || Number.isNaN(l)) {
          const inv = 1 / l;
          for (let d = 0; d < valueDim; d++) out[oRow + d] = acc[d] * inv;
        } else {
          out.fill(0, oRow, oRow + valueDim);
        }
        if (logSumExp) logSumExp[(b * qHeads + h) * seqQ + i] = l > 0 || Number.isNaN(l) ? m + Math.log(l) : -Infinity;
      }
    }
  }
}

/** c = a · b (or a · bᵀ) for every broadcast batch matrix. */
export function matmulJs(plan: MatmulPlan, a: Float32Array, b: Float32Array, out: Float32Array): void {
  const { m, n, k, transposeB } = plan;
  const row = new Float64Array(n);
  for (let index = 0; index < plan.aOffsets.length; index++) {
    const aBase = plan.aOffsets[index];
    const bBase = plan.bOffsets[index];
    const cBase = index * m * n;
    for (let i = 0; i < m; i++) {
      const aRow = aBase + i * k;
      if (transposeB) {
        for (let j = 0; j < n; j++) {
          const bRow = bBase + j * k;
          let dot = 0;
          for (let p = 0; p < k; p++) dot += a[aRow + p] * b[bRow + p];
          out[cBase + i * n + j] = dot;
        }
      } else {
        row.fill(0);
        for (let p = 0; p < k; p++) {
          const x = a[aRow + p];
          const bRow = bBase + p * n;
          for (let j = 0; j < n; j++) row[j] += x * b[bRow + j];
        }
        for (let j = 0; j < n; j++) out[cBase + i * n + j] = row[j];
      }
    }
  }
}

/** Row softmax of scale*x + mask (causal drops j > i), fully masked rows give zeros. */
export function softmaxJs(plan: SoftmaxPlan, x: Float32Array, out: Float32Array): void {
  const { matrices, rows, cols, scale, causal, mask, maskRowStride } = plan;
  const maskData = mask?.data;
  const boolMask = mask?.kind === 'bool';
  for (let index = 0; index < matrices; index++) {
    const maskBase = mask ? plan.maskOffsets[index] : 0;
    for (let i = 0; i < rows; i++) {
      const base = (index * rows + i) * cols;
      const maskRow = maskBase + i * maskRowStride;
      const visible = causal ? Math.min(cols, i + 1) : cols;
      let max = -Infinity;
      for (let j = 0; j < cols; j++) {
        let t = j < visible ? x[base + j] * scale : -Infinity;
        if (maskData && j < visible) {
          const mv = maskData[maskRow + j];
          if (boolMask) t = mv === 0 ? -Infinity : t;
          else t += mv;
        }
        out[base + j] = t;
        if (!(t <= max)) max = t;
      }
      if (max === -Infinity) {
        out.fill(0, base, base + cols);
        continue;
      }
      let sum = 0;
      for (let j = 0; j < cols; j++) {
        const e = Math.exp(out[base + j] - max);
        out[base + j] = e;
        sum += e;
      }
      const inv = 1 / sum;
      for (let j = 0; j < cols; j++) out[base + j] *= inv;
    }
  }
}
