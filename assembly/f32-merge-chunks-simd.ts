// Exact merge of attention computed over separate chunks of keys (flash-decoding), for `rows` rows.
// Chunk c gives row r its normalised output o_c (valueDim floats at partial + c·chunkStride +
// r·rowStride) and its [m_c, l_c] (running max and sum, at stats + 2·(c·statsChunkStride + r·statsRowStride), as the
// attention kernels write them). Then
//   out[r] = sum_c w_c · o_c / sum_c w_c,   w_c = l_c · exp(m_c - max_c m_c)  over chunks with l_c > 0
// (or NaN, which propagates), and 0 when no chunk saw a key. out row r at out + r·outStride. When
// merged is not 0, row r's merged [max_c m_c, sum_c w_c] goes to merged + 8·r (as an unsplit row's
// [max, sum]: -inf and 0 when no chunk saw a key).
// Chunks are taken in order, so the result does not depend on who computed them.

import { exp1 } from './f32-vmath-simd';

/** Merges `chunks` partial attention results per row; see the file header. */
export function f32_merge_chunks(
  partial: usize, rowStride: i32, chunkStride: i32, stats: usize, statsRowStride: i32, statsChunkStride: i32,
  chunks: i32, rows: i32, valueDim: i32, out: usize, outStride: i32, merged: usize,
): void {
  for (let r = 0; r < rows; r++) {
    let max: f32 = -Infinity;
    for (let c = 0; c < chunks; c++) {
      const at = stats + ((<usize>(c * statsChunkStride + r * statsRowStride)) << 3);
      const l = load<f32>(at, 4);
      if (l > 0 || l != l) max = Mathf.max(max, load<f32>(at));
    }
    const dst = out + ((<usize>r * <usize>outStride) << 2);
    memory.fill(dst, 0, (<usize>valueDim) << 2);
    let total: f32 = 0;
    for (let c = 0; c < chunks; c++) {
      const at = stats + ((<usize>(c * statsChunkStride + r * statsRowStride)) << 3);
      const l = load<f32>(at, 4);
      if (!(l > 0 || l != l)) continue;
      const w = l * exp1(load<f32>(at) - max);
      total += w;
      const src = partial + ((<usize>c * <usize>chunkStride + <usize>r * <usize>rowStride) << 2);
      const wv = f32x4.splat(w);
      let d = 0;
      for (; d + 4 <= valueDim; d += 4) {
        const off = <usize>d << 2;
        v128.store(dst + off, f32x4.add(v128.load(dst + off), f32x4.mul(wv, v128.load(src + off))));
      }
      for (; d < valueDim; d++) store<f32>(dst + (<usize>d << 2), load<f32>(dst + (<usize>d << 2)) + w * load<f32>(src + (<usize>d << 2)));
    }
    if (merged != 0) {
      store<f32>(merged + ((<usize>r) << 3), max);
      store<f32>(merged + ((<usize>r) << 3), total, 4);
    }
    if (total > 0 || total != total) {
      const scale = f32x4.splat(1 / total);
      let d = 0;
      for (; d + 4 <= valueDim; d += 4) v128.store(dst + (<usize>d << 2), f32x4.mul(v128.load(dst + (<usize>d << 2)), scale));
      for (; d < valueDim; d++) store<f32>(dst + (<usize>d << 2), load<f32>(dst + (<usize>d << 2)) / total);
    }
  }
}
