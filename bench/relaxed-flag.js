// Node 20 runs relaxed SIMD only with --experimental-wasm-relaxed-simd; Node 22 and later by default.
// relaunchWithRelaxedSimd() re-runs the current script with the flag where it is needed and missing,
// so that the relaxed-SIMD build is measured too, and with --expose-gc, so that a bench can let go
// of a disposed engine's WASM memory (which V8 frees only when it collects the Memory object) before
// the next one grows its own. It returns only in the process that should work.
import { spawnSync } from 'node:child_process';

export const RELAXED_FLAG = '--experimental-wasm-relaxed-simd';

export function needsRelaxedFlag() {
  return Number(process.versions.node.split('.')[0]) < 22;
}

export function relaunchWithRelaxedSimd() {
  const flags = [...(needsRelaxedFlag() && !process.execArgv.includes(RELAXED_FLAG) ? [RELAXED_FLAG] : []), ...(typeof globalThis.gc === 'function' ? [] : ['--expose-gc'])];
  if (flags.length === 0 || process.env.WASM_ATTENTION_NO_RELAUNCH) return;
  const child = spawnSync(process.execPath, [...process.execArgv, ...flags, ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(child.status ?? 1);
}

/** Collects garbage when the process runs with --expose-gc: a disposed engine's memory goes back. */
export function collect() {
  globalThis.gc?.();
}
