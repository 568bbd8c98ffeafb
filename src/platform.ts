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
