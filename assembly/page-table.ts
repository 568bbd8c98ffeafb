// Where a paged history's rows lie (see attention-paged-simd.ts): key or value j of a sequence is row
// j % pageSize of page j / pageSize. A page table is a run of u32 addresses, one per page, of kv head
// 0's rows in that page; a head's rows are partOffset bytes further. In int8 pages each block of rows
// is followed by the rows' float32 scales, `scales` bytes after the block (the rows' bytes rounded up
// to 16), and the value rows go in interleaved pairs (see src/ops/paged-attention/pages.ts).

/** Address of row j (rowBytes long) of this head's part of its page. */
// @ts-ignore: decorator
@inline export function pageRow(pages: usize, pageSize: i32, partOffset: i32, rowBytes: i32, j: i32): usize {
  const page = <usize>load<u32>(pages + ((<usize>(j / pageSize)) << 2));
  return page + <usize>partOffset + <usize>(j % pageSize) * <usize>rowBytes;
}

/** Address of row j's float32 scale in an int8 page whose scales start `scales` bytes into the block. */
// @ts-ignore: decorator
@inline export function pageScale(pages: usize, pageSize: i32, partOffset: i32, scales: i32, j: i32): usize {
  const page = <usize>load<u32>(pages + ((<usize>(j / pageSize)) << 2));
  return page + <usize>partOffset + <usize>scales + ((<usize>(j % pageSize)) << 2);
}

/** Address of the pair of int8 value rows (width bytes each, interleaved) that holds row j. */
// @ts-ignore: decorator
@inline export function pageRowPair(pages: usize, pageSize: i32, partOffset: i32, width: i32, j: i32): usize {
  const page = <usize>load<u32>(pages + ((<usize>(j / pageSize)) << 2));
  return page + <usize>partOffset + <usize>((j % pageSize) >> 1) * (<usize>width << 1);
}

/** Bytes from a block's start to its int8 scales: `rows` rows of `rowBytes` bytes, rounded up to 16. */
// @ts-ignore: decorator
@inline export function scalesOffset(rows: i32, rowBytes: i32): i32 {
  return (rows * rowBytes + 15) & ~15;
}
