// The KV pool's pages: their element types, where each row lies in a slab, and how a row of float32
// values is stored into a page (quantized) and read back out (dequantized). One implementation for
// every backend: the pool writes new rows with storeRow whichever backend runs its attention, so the
// bits in a page do not depend on the backend, and the js path and the reference read them back with
// loadRow (what the kernels compute in registers).
//
// Element types (dtype):
//   float32: as given, subnormals stored as 0.
//   float16: IEEE half, round to nearest even (subnormal halves kept); |x| > 65504 is refused before
//            anything is stored (it would round to infinity).
//   int8:    symmetric, one float32 scale per row (one position of one kv head, keys and values
//            apart): s = absmax / 127, q = round_half_even(x · (127 / absmax)) in [-127, 127],
//            x ≈ q·s. A row whose absmax is below 127·2^-126 (its scale would be subnormal) is stored
//            as zeros with scale 0.
//
// Layout of one slab (bytes): every (kv head, page) pair has a key block and a value block:
//   keys   [kvHeads, slabPages] blocks of keyBlock bytes, then
//   values [kvHeads, slabPages] blocks of valueBlock bytes;
//   a block: pageSize rows of width·elementBytes, padded to 16 bytes, then (int8) pageSize float32
//   scales, padded to 16 bytes. int8 values go in pairs of rows (rows 2t and 2t+1 of the page,
//   interleaved element by element: v[2t][0], v[2t+1][0], v[2t][1], ...; an odd last row pairs with
//   padding), so that one 16-bit dot (i32x4.dot_i16x8_s) weighs two positions of four columns at once.
// Head-major: the pages a sequence took one after another hold each head's keys (and values) in one
// run of memory, which a kernel streams far faster than pieces of a page each.
import { floatToHalf, halfToFloat } from '../../float16.js';

export type KVDtype = 'float32' | 'float16' | 'int8';

export const KV_DTYPES: readonly KVDtype[] = ['float32', 'float16', 'int8'];

/** Bytes of one element of a row. */
export const elementBytes = (dtype: KVDtype): number => (dtype === 'float32' ? 4 : dtype === 'float16' ? 2 : 1);

/** The shape of a pool's pages (what the slabs hold; PageStore adds the slabs). */
export interface PageLayout {
  readonly dtype: KVDtype;
  readonly slabPages: number;
  readonly pageSize: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly valueDim: number;
}

const roundUp16 = (bytes: number): number => Math.ceil(bytes / 16) * 16;

/** Whether a block holds its rows in interleaved pairs (int8 values). */
const paired = (dtype: KVDtype, part: 'key' | 'value'): boolean => dtype === 'int8' && part === 'value';

/** Bytes of the rows of a block: pageSize rows (rounded up to pairs when paired) of width elements, padded to 16. */
const rowBytes = (layout: Omit<PageLayout, 'slabPages'>, width: number, part: 'key' | 'value'): number => {
  const rows = paired(layout.dtype, part) ? 2 * Math.ceil(layout.pageSize / 2) : layout.pageSize;
  return roundUp16(rows * width * elementBytes(layout.dtype));
};

/** Bytes of a block of `width`-wide rows: the rows, then the int8 scales padded to 16. */
function blockBytes(layout: Omit<PageLayout, 'slabPages'>, width: number, part: 'key' | 'value'): number {
  const rows = rowBytes(layout, width, part);
  return layout.dtype === 'int8' ? rows + roundUp16(4 * layout.pageSize) : rows;
}

/** Bytes of one page: its key and value blocks for every kv head. */
export const pageBytes = (layout: Omit<PageLayout, 'slabPages'>): number =>
  layout.kvHeads * (blockBytes(layout, layout.headDim, 'key') + blockBytes(layout, layout.valueDim, 'value'));

/** Bytes of one slab (a multiple of 16). */
export const slabBytes = (layout: PageLayout): number => layout.slabPages * pageBytes(layout);

/** Bytes one cached position takes: its keys, values and scales for every kv head (no padding counted). */
export const bytesPerToken = (layout: Omit<PageLayout, 'slabPages' | 'pageSize'>): number =>
  layout.kvHeads * ((layout.headDim + layout.valueDim) * elementBytes(layout.dtype) + (layout.dtype === 'int8' ? 8 : 0));

/**
 * Where one row lies in its slab (bytes): its first element and, for int8, its scale. Elements of a
 * key row follow one another; those of a value row are valueStride elements apart (2 for int8, whose
 * value rows are interleaved in pairs).
 */
export interface RowAt {
  key: number;
  keyScale: number;
  value: number;
  valueScale: number;
}

/** Elements between one element of a value row and the next (2 in int8 pages' interleaved pairs, else 1). */
export const valueStride = (dtype: KVDtype): number => (paired(dtype, 'value') ? 2 : 1);

/** Byte offsets, inside its slab, of row `row` of kv head h's keys and values in the page at index `index` of the slab. */
export function rowsAt(layout: PageLayout, index: number, kvHead: number, row: number): RowAt {
  const { kvHeads, slabPages, pageSize, headDim, valueDim } = layout;
  const bytes = elementBytes(layout.dtype);
  const keyBlock = blockBytes(layout, headDim, 'key');
  const valueBlock = blockBytes(layout, valueDim, 'value');
  const keys = (kvHead * slabPages + index) * keyBlock;
  const values = kvHeads * slabPages * keyBlock + (kvHead * slabPages + index) * valueBlock;
  const value = paired(layout.dtype, 'value') ? (row >> 1) * 2 * valueDim + (row & 1) : row * valueDim * bytes;
  return {
    key: keys + row * headDim * bytes,
    keyScale: keys + rowBytes(layout, headDim, 'key') + 4 * row,
    value: values + value,
    valueScale: values + rowBytes(layout, valueDim, 'value') + 4 * row,
  };
}

/** Byte size of the key block and value block of one (kv head, page). */
export const blockSizes = (layout: PageLayout): { key: number; value: number } => ({ key: blockBytes(layout, layout.headDim, 'key'), value: blockBytes(layout, layout.valueDim, 'value') });

/** Typed views of a slab's bytes (the slab's memory as it is now). */
export interface SlabViews {
  bytes: Uint8Array;
  f32: Float32Array;
  u16: Uint16Array;
  i8: Int8Array;
}

export function slabViews(slab: Float32Array): SlabViews {
  const { buffer, byteOffset, byteLength } = slab;
  return {
    bytes: new Uint8Array(buffer, byteOffset, byteLength),
    f32: slab,
    u16: new Uint16Array(buffer, byteOffset, byteLength / 2),
    i8: new Int8Array(buffer, byteOffset, byteLength),
  };
}

/** The largest float16 value; anything larger in magnitude is refused from a float16 page. */
export const HALF_MAX = 65504;

/** Smallest int8 row absmax kept: below it the scale (absmax / 127) would be subnormal, and the row is stored as zeros. */
const INT8_MIN_ABSMAX = 127 * 2 ** -126;

/** Rounds half to even (x is a float32 value within ±2^24). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** x, or 0 when x is a float32 subnormal. */
const flushSubnormal = (x: number): number => (Math.abs(x) < 2 ** -126 ? 0 : x);

/**
 * Stores `width` floats of `data` from `from` as one row at byte `at` of a slab (scale at byte
 * `scaleAt` for int8; elements `stride` apart, 2 for int8 value rows), in the page's element type.
 * The values are finite and, for float16, within ±65504 (the pool checked them).
 */
export function storeRow(dtype: KVDtype, views: SlabViews, at: number, scaleAt: number, data: Float32Array, from: number, width: number, stride = 1): void {
  if (dtype === 'float32') {
    const base = at >> 2;
    for (let d = 0; d < width; d++) views.f32[base + d] = flushSubnormal(data[from + d]);
  } else if (dtype === 'float16') {
    const base = at >> 1;
    for (let d = 0; d < width; d++) views.u16[base + d] = floatToHalf(data[from + d]);
  } else {
    let absmax = 0;
    for (let d = 0; d < width; d++) absmax = Math.max(absmax, Math.abs(data[from + d]));
    if (absmax < INT8_MIN_ABSMAX) {
      for (let d = 0; d < width; d++) views.i8[at + d * stride] = 0;
      views.f32[scaleAt >> 2] = 0;
      return;
    }
    const inverse = Math.fround(127 / absmax);
    for (let d = 0; d < width; d++) views.i8[at + d * stride] = Math.max(-127, Math.min(127, roundHalfEven(Math.fround(data[from + d] * inverse))));
    views.f32[scaleAt >> 2] = Math.fround(absmax / 127);
  }
}

let halves: Float32Array | undefined;

/** Every half's float value by bit pattern (256 KiB, made on first use): loadRow's float16 rows. */
function halfTable(): Float32Array {
  if (!halves) {
    halves = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halves[h] = halfToFloat(h);
  }
  return halves;
}

/** Reads one row back as float values (what the kernels compute with) into `out` from `to` (elements `stride` apart in the page). */
export function loadRow(dtype: KVDtype, views: SlabViews, at: number, scaleAt: number, out: Float32Array | Float64Array, to: number, width: number, stride = 1): void {
  if (dtype === 'float32') {
    const base = at >> 2;
    for (let d = 0; d < width; d++) out[to + d] = views.f32[base + d];
  } else if (dtype === 'float16') {
    const base = at >> 1;
    const table = halfTable();
    for (let d = 0; d < width; d++) out[to + d] = table[views.u16[base + d]];
  } else {
    const scale = views.f32[scaleAt >> 2];
    for (let d = 0; d < width; d++) out[to + d] = views.i8[at + d * stride] * scale;
  }
}
