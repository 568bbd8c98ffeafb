// The Node built-ins the engine uses, loaded with dynamic imports only when running on Node, so that
// the same package also loads as plain ES modules in a browser (where they are undefined).
import type * as Fs from 'node:fs';
import type * as Os from 'node:os';
import type * as WorkerThreads from 'node:worker_threads';

export const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

export const nodeFs: typeof Fs | undefined = isNode ? await import('node:fs') : undefined;
export const nodeOs: typeof Os | undefined = isNode ? await import('node:os') : undefined;
export const nodeWorkers: typeof WorkerThreads | undefined = isNode ? await import('node:worker_threads') : undefined;

/** Results of at least this many floats are allocated uninitialized on Node (they are written in full at once). */
const LARGE_RESULT = 16384;
const nodeBuffer = isNode ? (globalThis as { Buffer?: { allocUnsafeSlow(bytes: number): Uint8Array } }).Buffer : undefined;

/**
 * A new Float32Array of `length` elements for a result the caller fills in full at once. Large ones come
 * from Buffer.allocUnsafeSlow on Node (an ArrayBuffer of their own, not zeroed): `new Float32Array(n)`
 * zeroes fresh pages first, which measured 1-6 ms for 1.5 MB here against 0.2-0.5 ms (Node 20 and 24).
 */
export function resultFloats(length: number): Float32Array {
  if (!nodeBuffer || length < LARGE_RESULT) return new Float32Array(length);
  const bytes = nodeBuffer.allocUnsafeSlow(4 * length);
  return new Float32Array(bytes.buffer, bytes.byteOffset, length);
}

/** Cores this process may use: os.availableParallelism on Node, navigator.hardwareConcurrency elsewhere. */
export function cores(): number {
  if (nodeOs) return nodeOs.availableParallelism();
  return typeof navigator !== 'undefined' ? navigator.hardwareConcurrency || 1 : 1;
}

/**
 * Whether this runtime computes i32x4.relaxed_dot_i8x16_i7x16_add_s exactly in every compiler tier:
 * V8 11.3 (Node 20) doubles the sums in its baseline compiler (Liftoff) and gets them right once a
 * function tiers up, so a kernel's results would depend on timing there; V8 12.4 (Node 22) and later
 * are right in both (checked with --liftoff --no-wasm-tier-up and --no-liftoff). Elsewhere (browsers)
 * the int8 kernel keeps to 16-bit dots, which give the same bits.
 */
export const relaxedDotExact: boolean = isNode && Number(process.versions.v8?.split('.')[0]) >= 12;
