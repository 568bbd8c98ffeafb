// The published package, as a user gets it: `npm pack`, install the tarball into an empty project,
// import it by name (and its reference subpath and CLI) there.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = new URL('..', import.meta.url).pathname;

describe('npm pack', () => {
  it('gives a tarball that installs into an empty project and works there', () => {
    const dir = mkdtempSync(join(tmpdir(), 'wasm-attention-pack-'));
    execFileSync('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], { cwd: root, stdio: 'pipe' });
    const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'))!;
    const size = statSync(join(dir, tarball)).size;
    console.log(`tarball ${tarball}: ${(size / 1024).toFixed(0)} KiB`);
    expect(size).toBeLessThan(2 * 1024 * 1024);
    const project = join(dir, 'project');
    execFileSync('mkdir', ['-p', project]);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', type: 'module', private: true }));
    execFileSync('npm', ['install', '--no-audit', '--no-fund', join(dir, tarball)], { cwd: project, stdio: 'pipe' });
    const script = `
      import { createEngine } from 'wasm-attention';
      import { referenceAttention } from 'wasm-attention/reference';
      const engine = await createEngine({ threads: 2 });
      const q = { data: Float32Array.from({ length: 2 * 5 * 8 }, (_, i) => Math.sin(i)), dims: [1, 2, 5, 8] };
      const y = await engine.attentionAsync(q, q, q, { causal: true });
      const r = referenceAttention(q, q, q, { causal: true });
      let err = 0;
      for (let i = 0; i < r.data.length; i++) err = Math.max(err, Math.abs(y.data[i] - r.data[i]));
      console.log(engine.backend, err < 1e-6 ? 'ok' : 'wrong ' + err);
      engine.dispose();`;
    writeFileSync(join(project, 'check.mjs'), script);
    expect(execFileSync(process.execPath, ['check.mjs'], { cwd: project, encoding: 'utf8' }).trim()).toMatch(/^wasm-(relaxed-)?simd ok$/);
    const info = execFileSync(join(project, 'node_modules', '.bin', 'wasm-attention'), ['info', '--json'], { encoding: 'utf8' });
    expect(JSON.parse(info).simd).toBe(true);
  }, 120_000);
});
