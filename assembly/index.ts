// The module's exports: every kernel, plus the constants the TypeScript side sizes scratch with.
// Memory is imported (shared, so that worker threads run the same kernels over the same bytes) and
// owned by the TypeScript allocator; nothing here allocates.

export { f32_pack_panels } from './f32-pack-panels-simd';
export { f32_ceiling_probe, f32_ceiling_flops_per_iteration } from './ceiling-probe';
export { gemm_cols as f32_gemm_tile_cols, gemm_packed as f32_gemm_tile_packed, gemm_rows as f32_gemm_tile_rows } from './f32-gemm-tile';
export { f32_gemm_packed, f32_gemm_packed_scratch_bytes } from './f32-gemm-simd';
export { f32_softmax_rows } from './f32-softmax-scale-mask-simd';
export { f32_softmax_backward_rows } from './f32-softmax-backward-simd';
export { f32_attention, f32_attention_block_rows, f32_attention_scratch_bytes } from './f32-attention-flash-simd';
export { f32_rope_rows } from './f32-rope-simd';
export { f32_attention_backward, f32_attention_backward_grain, f32_attention_backward_scratch_bytes, f32_rows_dot } from './f32-attention-backward-simd';
export { f32_merge_chunks } from './f32-merge-chunks-simd';
export { f32_attention_paged, f16_attention_paged, qs8_attention_paged, f32_attention_paged_scratch_bytes } from './attention-paged-simd';

/** First byte of linear memory the module does not use itself (static data ends below it). */
export function heap_base(): usize {
  return __heap_base;
}

/** exp of x with the kernels' vector polynomial (exported so tests can measure its accuracy). */
export { exp1 as f32_exp } from './f32-vmath-simd';

/** memory.copy of `bytes` bytes: the bandwidth yardstick the bench compares decoding against. */
export function copy_bytes(dst: usize, src: usize, bytes: usize): void {
  memory.copy(dst, src, bytes);
}

