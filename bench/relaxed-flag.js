// Node 20 runs relaxed SIMD only with --experimental-wasm-relaxed-simd; Node 22 and later by default.
// relaunchWithRelaxedSimd() re-runs the current script with the flag where it is needed and missing,
// so that the relaxed-SIMD build is measured too. It returns only in the process that should work.
import { spawnSync } from 'node:child_process';

export const RELAXED_FLAG = '--experimental-wasm-relaxed-simd';

export function needsRelaxedFlag() {
  return Number(process.versions.node.split('.')[0]) < 22;
}

export function relaunchWithRelaxedSimd() {
  if (!needsRelaxedFlag() || process.execArgv.includes(RELAXED_FLAG) || process.env.WASM_ATTENTION_NO_RELAUNCH) return;
  const child = spawnSync(process.execPath, [...process.execArgv, RELAXED_FLAG, ...process.argv.slice(1)], { stdio: 'inherit' });
  process.exit(child.status ?? 1);
}
