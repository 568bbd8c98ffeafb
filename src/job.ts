// A job is one op call cut into independent items, described by numbers only (a Float64Array), so
// that the calling thread and every worker can run any item of it with the same code. Items write
// disjoint outputs, and how a call is cut depends only on its shape, never on the thread count, so
// the result is bit-for-bit the same on 1 thread or 64, sync or async.
//
// Each op declares its descriptor once, as a list of field names (jobLayout below): the encoder on
// the calling thread writes `job[layout.at.q]`, the item runner on a worker reads the same index.
// Every descriptor starts with the header fields the pool and the backend use.
import type { Kernels } from './backends/kernels.js';

/**
 * Fields every job has, at these indices: which op, how many items, the first thread's scratch and
 * each thread's scratch size, and the address of the item flags (one byte per item, 1 when done).
 */
export const HEADER = { op: 0, items: 1, scratch: 2, scratchBytes: 3, flags: 4 } as const;
type HeaderField = keyof typeof HEADER;
const HEADER_FIELDS = Object.keys(HEADER) as HeaderField[];

/** Room for the longest descriptor (the pool's shared job buffer has this many fields). */
export const JOB_FIELDS = 64;

/** The field indices of one op's descriptor. */
export interface JobLayout<F extends string> {
  /** The op's number, stored in field `op`. */
  readonly op: number;
  readonly at: Readonly<Record<F | HeaderField, number>>;
  /** A fresh descriptor with `op` set. */
  create(): Float64Array;
}

/** Declares an op's job descriptor: the header, then `fields` in order. */
export function jobLayout<const F extends readonly string[]>(op: number, fields: F): JobLayout<F[number]> {
  const names = [...HEADER_FIELDS, ...fields];
  if (names.length > JOB_FIELDS) throw new Error(`wasm-attention internal error: job ${op} has ${names.length} fields, more than ${JOB_FIELDS}`);
  const at = Object.fromEntries(names.map((name, i) => [name, i])) as Record<F[number] | HeaderField, number>;
  return {
    op,
    at: Object.freeze(at),
    create(): Float64Array {
      const job = new Float64Array(names.length);
      job[HEADER.op] = op;
      return job;
    },
  };
}

/** Byte address of the scratch of thread slot `slot` (slot 0: the calling thread). */
export const scratchOf = (job: Float64Array, slot: number): number => job[HEADER.scratch] + slot * job[HEADER.scratchBytes];

/** Runs item `item` of a job; `i32` views all of memory. */
export type ItemRunner = (kernels: Kernels, job: Float64Array, item: number, scratch: number, i32: Int32Array) => void;
