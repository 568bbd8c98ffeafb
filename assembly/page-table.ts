// Where a paged history's rows lie (see attention-paged-simd.ts): key or value j of a sequence is row
// j % pageSize of page j / pageSize. A page table is a run of u32 addresses, one per page, of kv head
// 0's rows in that page; a head's rows are partOffset bytes further. In int8 pages each block of
// pageSize rows is followed by the rows' float32 scales, at roundUp16(pageSize · rowBytes).

/** Address of row j (rowBytes long) of this head's part of its page. */
// @ts-ignore: decorator
@inline export function pageRow(pages: usize, pageSize: i32, partOffset: i32, rowBytes: i32, j: i32): usize {
  const page = <usize>load<u32>(pages + ((<usize>(j / pageSize)) << 2));
  return page + <usize>partOffset + <usize>(j % pageSize) * <usize>rowBytes;
}

/** Address of row j's float32 scale in an int8 page (rows of rowBytes bytes). */
// @ts-ignore: decorator
@inline export function pageScale(pages: usize, pageSize: i32, partOffset: i32, rowBytes: i32, j: i32): usize {
  const page = <usize>load<u32>(pages + ((<usize>(j / pageSize)) << 2));
  const scales = (<usize>(pageSize * rowBytes) + 15) & ~(<usize>15);
  return page + <usize>partOffset + scales + ((<usize>(j % pageSize)) << 2);
}
