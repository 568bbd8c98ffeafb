// The command line, run as a user runs it: node dist/cli.js <command>.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const CLI = new URL('../dist/cli.js', import.meta.url).pathname;
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });

describe('wasm-attention CLI', () => {
  it('info reports the runtime and the build every command uses: relaxed SIMD without any flag', () => {
    // started without --experimental-wasm-relaxed-simd: on Node 20 the CLI starts itself again with it
    const report = JSON.parse(execFileSync(process.execPath, [CLI, 'info', '--json'], { encoding: 'utf8' }));
    expect(report.node).toBe(process.version);
    expect(report.simd).toBe(true);
    expect(report.relaxedSimd).toBe(true);
    expect(report.build).toBe('wasm-relaxed-simd');
    expect(report.version).toBe(JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version);
    expect(run('--version').stdout.trim()).toBe(report.version);
  });

  it('refuses bad arguments before any work', () => {
    for (const args of [['bench', '--repeats', '0'], ['bench', '--repeats', 'abc'], ['bench', '--threads', '0', '--backends', 'js'], ['verify', '--samples', '2.5'], ['verify', '--samples', '-5'], ['bench', '--svg', '/no/such/folder/chart.svg']]) {
      const result = run(...args);
      expect(result.status, args.join(' ')).toBe(2);
      expect(result.stdout, args.join(' ')).toBe('');
    }
  });

  it('verify passes the ONNX cases and a differential sample, and says so', () => {
    const result = run('verify', '--samples', '20', '--backends', 'wasm-simd,js');
    expect(result.status).toBe(0);
    expect(result.stdout).toContain('wasm-simd: ONNX conformance 76/76 passed; random differential 20/20');
    expect(result.stdout).toContain('verify: all passed');
  });

  it('bench prints JSON rows and draws an SVG chart', () => {
    const svg = join(mkdtempSync(join(tmpdir(), 'wasm-attention-')), 'chart.svg');
    const result = run('bench', '--shapes', 'bert-128', '--backends', 'wasm-simd', '--repeats', '1', '--json', '--svg', svg);
    expect(result.status).toBe(0);
    const rows = JSON.parse(result.stdout).rows as Array<{ shape: string; gflops: number }>;
    expect(rows.map((r) => r.shape)).toEqual(['bert-128', 'S128', 'S256', 'S512', 'S1024', 'S2048']);
    expect(rows.every((r) => r.gflops > 0)).toBe(true);
    expect(result.stderr).toContain('bert-128 wasm-simd x1...');
    const chart = readFileSync(svg, 'utf8');
    expect(chart).toMatch(/^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    expect(chart).toContain('<polyline');
  });

  it('gives help for each command, and refuses unknown ones', () => {
    expect(run('--help').stdout).toContain('Commands:');
    for (const command of ['info', 'bench', 'verify']) expect(run(command, '--help').stdout).toContain(`wasm-attention ${command}`);
    const unknown = run('frobnicate');
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain('unknown command "frobnicate"');
    expect(run('bench', '--shapes', 'nope').status).toBe(2);
  });
});
