// Paged attention as a job (see ../../job.ts). Items are ragged, so the encoder writes one record
// per work item into WASM memory: a work item is one (step item, kv head, chunk of query positions
// [, chunk of keys]) slice with its own pointers, handed to f32_attention_paged as it is. A decode
// item over a long history is cut along its keys too (flash-decoding); its partial results are
// merged afterwards in a fixed order. How an item is cut depends only on its own shape (positions,
// heads, length), never on the other items of the step or on the thread count, so its bits do not.
import type { Kernels } from '../../backends/kernels.js';
import { type ItemRunner, jobLayout } from '../../job.js';

export const PAGED_JOB = jobLayout(5, ['records', 'headDim', 'valueDim', 'pageSize', 'scale', 'cap', 'left', 'dtype', 'relaxedDot'] as const);

/** The job's dtype field: which kernel runs its items (the pages' element type). */
export const PAGED_DTYPE = { float32: 0, float16: 1, int8: 2 } as const;

const J = PAGED_JOB.at;

/** A work item's record: int32 fields at these indices (addresses are read as unsigned). */
export const RECORD = {
  q: 0, ldqHead: 1, out: 2, ldoHead: 3, ldoPos: 4, positions: 5, group: 6, pagesK: 7, pagesV: 8,
  kOffset: 9, vOffset: 10, keyStart: 11, keyEnd: 12, offset: 13, stats: 14,
} as const;
export const RECORD_INTS = 16;

/** Rows (query positions × heads of a group) per work item, at most. */
export const PAGED_ROW_CHUNK = 64;
/** Flash-decoding: items of at most this many query positions over at least SPLIT_MIN_KEYS keys are cut along the keys. */
export const PAGED_SPLIT_MAX_POSITIONS = 4;
export const PAGED_SPLIT_MIN_KEYS = 1024;
/**
 * A cut item's keys go in chunks of at least PAGED_SPLIT_CHUNK keys (whole pages), and no more chunks
 * than give it about PAGED_SPLIT_SLICES work items over its kv heads: enough to spread one long
 * sequence over 16 threads, few enough that merging the chunks stays a small part of a step.
 */
export const PAGED_SPLIT_CHUNK = 512;
export const PAGED_SPLIT_SLICES = 16;

/** Keys per chunk of an item of `length` keys with `kvHeads` kv heads, cut along its keys (its shape alone decides). */
export function splitChunk(length: number, kvHeads: number, pageSize: number): number {
  const chunksPerHead = Math.max(1, Math.ceil(PAGED_SPLIT_SLICES / kvHeads));
  const keys = Math.max(PAGED_SPLIT_CHUNK, Math.ceil(length / chunksPerHead));
  return Math.ceil(keys / pageSize) * pageSize;
}

/** Runs one work item: its record as the kernel's arguments. */
export const runPagedItem: ItemRunner = (kernels: Kernels, job: Float64Array, item: number, scratch: number, i32: Int32Array): void => {
  const at = (job[J.records] >>> 2) + item * RECORD_INTS;
  const headDim = job[J.headDim];
  const dtype = job[J.dtype];
  const kernel = dtype === PAGED_DTYPE.float32 ? kernels.f32_attention_paged : dtype === PAGED_DTYPE.float16 ? kernels.f16_attention_paged : kernels.qs8_attention_paged;
  kernel(
    i32[at + RECORD.q] >>> 0, i32[at + RECORD.ldqHead], headDim,
    i32[at + RECORD.out] >>> 0, i32[at + RECORD.ldoHead], i32[at + RECORD.ldoPos],
    i32[at + RECORD.positions], i32[at + RECORD.group], i32[at + RECORD.pagesK] >>> 0, i32[at + RECORD.pagesV] >>> 0, job[J.pageSize],
    i32[at + RECORD.kOffset], i32[at + RECORD.vOffset], i32[at + RECORD.keyStart], i32[at + RECORD.keyEnd],
    headDim, job[J.valueDim], job[J.scale], job[J.cap], i32[at + RECORD.offset], job[J.left],
    i32[at + RECORD.stats] >>> 0, scratch, job[J.relaxedDot],
  );
};
