// Before any test: make dist/ and build/ current. The tests import src/ directly, but worker
// threads (and the CLI and package tests) run the compiled dist/ and the .wasm builds, so after an
// edit without a rebuild the main thread and the workers would run different code. Each part is
// rebuilt only when one of its sources is newer than what it produced.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;

/** Newest modification time of the files under `dir` whose names pass `keep`. */
function newest(dir: string, keep: (name: string) => boolean): number {
  let time = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) time = Math.max(time, newest(path, keep));
    else if (keep(entry.name)) time = Math.max(time, statSync(path).mtimeMs);
  }
  return time;
}

/** Oldest of `files` (0 when one is missing). */
const oldest = (files: string[]): number => Math.min(...files.map((f) => (existsSync(f) ? statSync(f).mtimeMs : 0)));

export default function setup(): void {
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const wasm = ['attention-simd', 'attention-relaxed-simd', 'attention-simd-unshared', 'attention-relaxed-simd-unshared'].map((f) => join(root, 'build', `${f}.wasm`));
  if (newest(join(root, 'assembly'), (n) => n.endsWith('.ts')) > oldest(wasm)) execFileSync(npm, ['run', 'asbuild'], { cwd: root, stdio: 'inherit' });
  const dist = join(root, 'dist');
  const distTime = existsSync(dist) ? newest(dist, (n) => n.endsWith('.js')) : 0;
  const stale = !existsSync(dist) || newest(join(root, 'src'), (n) => n.endsWith('.ts')) > distTime;
  if (stale) execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
}
