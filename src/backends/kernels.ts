// The kernels' exports as TypeScript sees them: the signatures of assembly/index.ts, pointers as
// byte offsets into the module's (imported) linear memory. Kept apart from the loader so that jobs,
// the pool and the ops can name the kernels without importing the loader.
/** The mask kinds the kernels take (0: no mask). */
export const MASK_KIND = { bool: 1, float: 2 } as const;

export interface Kernels {
  heap_base(): number;
  f32_gemm_packed(m: number, n: number, k: number, a: number, lda: number, transA: number, panels: number, c: number, ldc: number, bias: number, activation: number, scratch: number): void;
  f32_gemm_packed_scratch_bytes(m: number, k: number): number;
  f32_pack_panels(src: number, ld: number, transposed: number, kc: number, nc: number, dst: number): void;
  f32_softmax_rows(
    x: number, ldx: number, y: number, ldy: number, rows: number, cols: number,
    scale: number, cap: number, mask: number, maskKind: number, maskRowStride: number, causal: number, causalOffset: number,
  ): void;
  f32_attention(
    q: number, ldq: number, k: number, ldk: number, v: number, ldv: number, out: number, ldo: number,
    rows: number, seqKV: number, headDim: number, valueDim: number,
    scale: number, cap: number, mask: number, maskKind: number, maskRowStride: number,
    offset: number, left: number, right: number, rowStats: number, scratch: number,
    weights: number, ldw: number,
  ): void;
  f32_rope_rows(
    x: number, ldx: number, y: number, ldy: number, rows: number, headDim: number, dims: number,
    cos: number, sin: number, ldc: number, interleaved: number,
  ): void;
  f32_attention_scratch_bytes(headDim: number, valueDim: number): number;
  f32_attention_backward(
    q: number, ldq: number, qHead: number, k: number, ldk: number, v: number, ldv: number,
    out: number, dOut: number, ldo: number, oHead: number, lse: number, delta: number,
    dq: number, lddq: number, dqHead: number, dk: number, lddk: number, dv: number, lddv: number,
    heads: number, rows: number, seqKV: number, headDim: number, valueDim: number, scale: number, cap: number,
    mask: number, maskKind: number, maskRow: number, maskHead: number, offset: number, left: number, right: number, scratch: number,
    parts: number, rowLo: number, rowHi: number, keyLo: number, keyHi: number,
  ): void;
  /** The row multiple (low 16 bits) and key multiple (high 16) a backward call's parts start at. */
  f32_attention_backward_grain(): number;
  f32_attention_backward_scratch_bytes(headDim: number, valueDim: number): number;
  f32_softmax_backward_rows(y: number, dy: number, dx: number, rows: number, cols: number, scale: number): void;
  f32_rows_dot(a: number, lda: number, b: number, ldb: number, rows: number, n: number, delta: number): void;
  /** Query rows per block of f32_attention (ATT_BR). */
  f32_attention_block_rows(): number;
  f32_merge_chunks(
    partial: number, rowStride: number, chunkStride: number, stats: number, statsRowStride: number, statsChunkStride: number,
    chunks: number, rows: number, valueDim: number, out: number, outStride: number, merged: number,
  ): void;
  /** The paged kernels, one per page element type: see PagedKernel. */
  f32_attention_paged: PagedKernel;
  f16_attention_paged: PagedKernel;
  qs8_attention_paged: PagedKernel;
  f32_attention_paged_scratch_bytes(headDim: number, valueDim: number): number;
  f32_exp(x: number): number;
  copy_bytes(dst: number, src: number, bytes: number): void;
  f32_ceiling_probe(iterations: number, form: number, seed: number): number;
  f32_ceiling_flops_per_iteration(): number;
}

/** assembly/attention-paged-simd.ts's kernels: the same arguments for float32, float16 and int8 pages. */
export type PagedKernel = (
  q: number, ldqHead: number, ldqPos: number, out: number, ldoHead: number, ldoPos: number,
  positions: number, group: number, pagesK: number, pagesV: number, pageSize: number, kOffset: number, vOffset: number,
  keyStart: number, keyEnd: number, headDim: number, valueDim: number,
  scale: number, cap: number, offset: number, left: number, rowStats: number, scratch: number, relaxedDot: number,
) => void;
