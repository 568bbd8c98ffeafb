// The Node built-ins the engine uses, loaded with dynamic imports only when running on Node, so that
// the same package also loads as plain ES modules in a browser (where they are undefined).
import type * as Fs from 'node:fs';
import type * as Os from 'node:os';
import type * as WorkerThreads from 'node:worker_threads';

export const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';

export const nodeFs: typeof Fs | undefined = isNode ? await import('node:fs') : undefined;
export const nodeOs: typeof Os | undefined = isNode ? await import('node:os') : undefined;
export const nodeWorkers: typeof WorkerThreads | undefined = isNode ? await import('node:worker_threads') : undefined;

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
