#!/usr/bin/env node
// The wasm-attention command line: info, bench, verify. `wasm-attention <command> --help` for each.
// On a Node that has relaxed SIMD only behind a flag (Node 20), it starts itself again with
// --experimental-wasm-relaxed-simd, so every command sees the fastest build (NODE_OPTIONS cannot
// carry that flag). Arguments are checked before any work starts.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { OUTPUT_ROLES, conformanceCall, conformanceCases, conformanceTensor } from './conformance.js';
import { type BackendName, createEngineSync } from './engine.js';
import { halfToFloat } from './float16.js';
import type { OnnxOutputTensor, OnnxTensor } from './features/onnx.js';
import { referenceAttention } from './reference.js';
import { WASM_BUILDS, buildSupported, sharedMemorySupported } from './backends/wasm-module.js';

const HELP: Record<string, string> = {
  main: `wasm-attention <command> [options]

Commands:
  info      runtime, detected WebAssembly features, the build every command uses, thread count
  bench     attention GFLOP/s per backend and thread count (progress on stderr, then a table)
  verify    the 76 ONNX Attention conformance cases and a random differential sample; exit 1 on failure

Run "wasm-attention <command> --help" for a command's options; "wasm-attention --version" for the version.`,
  info: `wasm-attention info [--json]

Prints the Node version, whether this runtime validates the simd and relaxed-simd builds and has
shared memory (threads), the build createEngine() picks, and the default thread count.`,
  bench: `wasm-attention bench [options]

  --shapes LIST     comma-separated: ${'bert-128,bert-512,gpt-1024,decode,decode-b8,long-4096'} (default: the first four)
  --backends LIST   comma-separated backends (default: every wasm build this runtime runs, and js)
  --threads LIST    comma-separated thread counts for the wasm backends (default: 1)
  --repeats N       timed calls per cell, median reported (an integer >= 1, default 5; js: at most 2)
  --json            print JSON instead of a table
  --svg FILE        also sweep the sequence length (B1 H8 D64, 128..2048) and draw GFLOP/s per backend
                    as an SVG chart in FILE`,
  verify: `wasm-attention verify [--backends LIST] [--samples N]

Runs the ONNX conformance cases shipped with the package through engine.onnxAttention, and N random
attention calls (default 200) against the float64 reference, on each backend. Prints a summary and exits
with status 1 if anything disagrees.`,
};

const SHAPES: Record<string, { batch: number; heads: number; seqQ: number; seqKV: number; headDim: number; causal: boolean }> = {
  'bert-128': { batch: 1, heads: 12, seqQ: 128, seqKV: 128, headDim: 64, causal: false },
  'bert-512': { batch: 1, heads: 12, seqQ: 512, seqKV: 512, headDim: 64, causal: false },
  'gpt-1024': { batch: 1, heads: 12, seqQ: 1024, seqKV: 1024, headDim: 64, causal: true },
  decode: { batch: 2, heads: 32, seqQ: 1, seqKV: 2048, headDim: 128, causal: false },
  'decode-b8': { batch: 8, heads: 32, seqQ: 1, seqKV: 2048, headDim: 128, causal: false },
  'long-4096': { batch: 1, heads: 8, seqQ: 4096, seqKV: 4096, headDim: 64, causal: true },
};

function available(): BackendName[] {
  return [...WASM_BUILDS.filter(buildSupported), 'js'];
}

let seed = 2026;
function random(): number {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return seed / 2 ** 32 - 0.5;
}
const tensor = (dims: number[]) => ({ data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, random), dims });

function info(argv: string[]): number {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean' }, help: { type: 'boolean' } } });
  if (values.help) return print(HELP.info);
  const engine = createEngineSync({ threads: 1 });
  const report = {
    version: packageVersion(),
    node: process.version,
    simd: buildSupported('wasm-simd'),
    relaxedSimd: buildSupported('wasm-relaxed-simd'),
    threads: sharedMemorySupported(),
    build: engine.backend,
    defaultThreads: Math.min(4, availableParallelism()),
    cores: availableParallelism(),
  };
  engine.dispose();
  if (values.json) return print(JSON.stringify(report, null, 2));
  return print([
    `wasm-attention   ${report.version}`,
    `node             ${report.node}`,
    `WASM SIMD        ${report.simd ? 'yes' : 'no'}`,
    `relaxed SIMD     ${report.relaxedSimd ? 'yes' : 'no (Node 20 without --experimental-wasm-relaxed-simd; this command line adds it itself)'}`,
    `threads          ${report.threads ? 'yes (shared WebAssembly.Memory)' : 'no'}`,
    `chosen build     ${report.build} (what createEngine() picks, and what bench and verify run by default)`,
    `default threads  ${report.defaultThreads} of ${report.cores} cores`,
  ].join('\n'));
}

function time(run: () => void, repeats: number): number {
  run();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    run();
    times.push(performance.now() - t0);
  }
  return times.sort((a, b) => a - b)[times.length >> 1];
}

function bench(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    options: {
      shapes: { type: 'string', default: 'bert-128,bert-512,gpt-1024,decode' }, backends: { type: 'string' }, threads: { type: 'string', default: '1' },
      repeats: { type: 'string', default: '5' }, json: { type: 'boolean' }, svg: { type: 'string' }, help: { type: 'boolean' },
    },
  });
  if (values.help) return print(HELP.bench);
  const backends = (values.backends?.split(',') ?? available()) as BackendName[];
  for (const backend of backends) if (![...WASM_BUILDS, 'js'].includes(backend)) return fail(`unknown backend ${backend}; known: ${[...WASM_BUILDS, 'js'].join(', ')}`);
  const threads = values.threads.split(',').map((t) => positiveInteger(t));
  if (threads.some((t) => t === undefined)) return fail(`--threads must be integers >= 1, got ${values.threads}`);
  const repeats = positiveInteger(values.repeats);
  if (repeats === undefined) return fail(`--repeats must be an integer >= 1, got ${values.repeats}`);
  for (const name of values.shapes.split(',')) if (!SHAPES[name]) return fail(`unknown shape ${name}; known: ${Object.keys(SHAPES).join(', ')}`);
  if (values.svg && !existsSync(dirname(resolve(values.svg)))) return fail(`--svg ${values.svg}: the folder ${dirname(resolve(values.svg))} does not exist`);
  const rows: Array<{ shape: string; backend: string; threads: number; ms: number; gflops: number }> = [];
  const measure = (name: string, s: (typeof SHAPES)[string]): void => {
    const q = tensor([s.batch, s.heads, s.seqQ, s.headDim]);
    const k = tensor([s.batch, s.heads, s.seqKV, s.headDim]);
    const flops = (4 * s.batch * s.heads * s.seqQ * s.seqKV * s.headDim) / (s.causal ? 2 : 1);
    for (const backend of backends) {
      for (const t of backend === 'js' ? [1] : (threads as number[])) {
        process.stderr.write(`  ${name} ${backend} x${t}...\n`);
        const engine = createEngineSync({ backend, threads: t });
        const ms = time(() => engine.attention(q, k, k, { causal: s.causal }), backend === 'js' ? Math.min(2, repeats) : repeats);
        engine.dispose();
        rows.push({ shape: name, backend, threads: t, ms, gflops: flops / ms / 1e6 });
      }
    }
  };
  for (const name of values.shapes.split(',')) measure(name, SHAPES[name]);
  if (values.svg) {
    const sweep = [128, 256, 512, 1024, 2048];
    for (const seq of sweep) measure(`S${seq}`, { batch: 1, heads: 8, seqQ: seq, seqKV: seq, headDim: 64, causal: false });
    const title = `attention B1 H8 D64, ${threads[0]} thread${threads[0] === 1 ? '' : 's'}, Node ${process.version}`;
    writeFileSync(values.svg, chart(rows.filter((r) => r.shape.startsWith('S') && (r.backend === 'js' || r.threads === threads[0])), sweep, title));
    process.stderr.write(`chart written to ${values.svg}\n`);
  }
  if (values.json) return print(JSON.stringify({ node: process.version, rows }, null, 2));
  return print(table(['shape', 'backend', 'threads', 'median ms', 'GFLOP/s'], rows.map((r) => [r.shape, r.backend, String(r.threads), r.ms.toFixed(2), r.gflops.toFixed(2)]), [false, false, true, true, true]));
}

/** A Markdown table whose columns line up in a terminal (numbers right-aligned). */
function table(header: string[], rows: string[][], right: boolean[]): string {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]) => `| ${cells.map((cell, c) => (right[c] ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join(' | ')} |`;
  const rule = `|${widths.map((w, c) => (right[c] ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/** n for a decimal integer string n >= 1 (or >= 0 with `zero`), else undefined. */
function positiveInteger(text: string, zero = false): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) && (zero || n >= 1) ? n : undefined;
}

function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

/** A line chart of GFLOP/s against sequence length, one line per backend. */
function chart(rows: Array<{ shape: string; backend: string; gflops: number }>, sweep: number[], title: string): string {
  const width = 680, height = 380, left = 70, right = 150, top = 36, bottom = 50;
  const backends = [...new Set(rows.map((r) => r.backend))];
  // round ticks: a step of 1, 2 or 5 times a power of ten, about five of them
  const top0 = Math.max(1, ...rows.map((r) => r.gflops));
  const magnitude = 10 ** Math.floor(Math.log10(top0 / 5));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => top0 / s <= 6)!;
  const ticks = Math.ceil(top0 / step);
  const maxY = ticks * step;
  const x = (i: number) => left + (i * (width - left - right)) / (sweep.length - 1);
  const y = (g: number) => height - bottom - (g / maxY) * (height - top - bottom);
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e'];
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${title}: GFLOP/s against sequence length</text>`,
    `<line x1="${left}" y1="${height - bottom}" x2="${width - right}" y2="${height - bottom}" stroke="black"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${height - bottom}" stroke="black"/>`,
  ];
  sweep.forEach((s, i) => parts.push(`<text x="${x(i)}" y="${height - bottom + 18}" text-anchor="middle">${s}</text>`));
  for (let t = 0; t <= ticks; t++) {
    const g = t * step;
    const label = step < 1 ? g.toFixed(Math.ceil(-Math.log10(step))) : String(g);
    parts.push(`<text x="${left - 8}" y="${y(g) + 4}" text-anchor="end">${label}</text>`, `<line x1="${left}" y1="${y(g)}" x2="${width - right}" y2="${y(g)}" stroke="#ddd"/>`);
  }
  parts.push(`<text x="${(left + width - right) / 2}" y="${height - 12}" text-anchor="middle">sequence length (Sq = Skv)</text>`);
  parts.push(`<text transform="translate(18 ${(top + height - bottom) / 2}) rotate(-90)" text-anchor="middle">GFLOP/s (higher is better)</text>`);
  backends.forEach((backend, b) => {
    const points = sweep.map((s, i) => [x(i), y(rows.find((r) => r.backend === backend && r.shape === `S${s}`)?.gflops ?? 0)]);
    parts.push(`<polyline fill="none" stroke="${colors[b % colors.length]}" stroke-width="2" points="${points.map((p) => p.join(',')).join(' ')}"/>`);
    for (const [px, py] of points) parts.push(`<circle cx="${px}" cy="${py}" r="3.5" fill="${colors[b % colors.length]}"/>`);
    parts.push(`<text x="${width - right + 10}" y="${top + 20 + b * 18}" fill="${colors[b % colors.length]}">${backend}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

function verify(argv: string[]): number {
  const { values } = parseArgs({ args: argv, options: { backends: { type: 'string' }, samples: { type: 'string', default: '200' }, help: { type: 'boolean' } } });
  if (values.help) return print(HELP.verify);
  const samples = positiveInteger(values.samples, true);
  if (samples === undefined) return fail(`--samples must be an integer >= 0, got ${values.samples}`);
  const cases = conformanceCases();
  const values32 = (t: OnnxOutputTensor | OnnxTensor): number[] => (t.data instanceof Uint16Array ? Array.from(t.data, halfToFloat) : Array.from(t.data as Float32Array));
  let failures = 0;
  for (const backend of (values.backends?.split(',') ?? available()) as BackendName[]) {
    const engine = createEngineSync({ backend, threads: 1 });
    let passed = 0;
    for (const c of cases) {
      const { name } = c;
      let ok = true;
      try {
        const { inputs, attributes, request } = conformanceCall(c);
        const result = engine.onnxAttention(inputs as never, attributes, request) as unknown as Record<string, OnnxOutputTensor>;
        c.outputs.forEach((e, i) => {
          if (!e) return;
          const want = values32(conformanceTensor(e));
          const got = result[OUTPUT_ROLES[i]] ? values32(result[OUTPUT_ROLES[i]]) : [];
          if (got.length !== want.length) ok = false;
          for (let j = 0; ok && j < want.length; j++) {
            if (Number.isFinite(want[j]) ? !(Math.abs(got[j] - want[j]) <= 1e-7 + 1e-3 * Math.abs(want[j])) : got[j] !== want[j]) ok = false;
          }
        });
      } catch (error) {
        ok = false;
        process.stderr.write(`  ${name}: ${String(error)}\n`);
      }
      if (ok) passed++;
      else process.stderr.write(`  FAIL ${backend} ${name}\n`);
    }
    let agreed = 0;
    for (let i = 0; i < samples; i++) {
      const dims = [1 + (i % 2), 1 + (i % 3), 1 + Math.floor((random() + 0.5) * 40), 1 + Math.floor((random() + 0.5) * 70), 1 + Math.floor((random() + 0.5) * 64)];
      const [b, h, sq, skv, d] = dims;
      const q = tensor([b, h, sq, d]);
      const k = tensor([b, h, skv, d]);
      const v = tensor([b, h, skv, d]);
      const options = { causal: i % 2 === 0, softcap: i % 5 === 0 ? 5 : undefined };
      const y = engine.attention(q, k, v, options).data;
      const r = referenceAttention(q, k, v, options).data;
      let err = 0;
      for (let j = 0; j < r.length; j++) err = Math.max(err, Math.abs(y[j] - r[j]));
      if (err < 1e-5) agreed++;
      else process.stderr.write(`  FAIL ${backend} random case ${i} [${dims}]: max error ${err}\n`);
    }
    engine.dispose();
    failures += cases.length - passed + samples - agreed;
    console.log(`${backend}: ONNX conformance ${passed}/${cases.length} passed; random differential ${agreed}/${samples} agreed with the float64 reference`);
  }
  console.log(failures === 0 ? 'verify: all passed' : `verify: ${failures} failed`);
  return failures === 0 ? 0 : 1;
}

function print(text: string): number {
  console.log(text);
  return 0;
}

function fail(text: string): number {
  console.error(text);
  return 2;
}

const RELAXED_FLAG = '--experimental-wasm-relaxed-simd';

/** On a Node that has relaxed SIMD behind a flag, runs this command line again with it; its exit code, or undefined. */
function relaunched(): number | undefined {
  if (buildSupported('wasm-relaxed-simd') || process.execArgv.includes(RELAXED_FLAG) || process.env.WASM_ATTENTION_NO_RELAUNCH === '1') return undefined;
  const child = spawnSync(process.execPath, [...process.execArgv, RELAXED_FLAG, process.argv[1], ...process.argv.slice(2)], {
    stdio: 'inherit', env: { ...process.env, WASM_ATTENTION_NO_RELAUNCH: '1' },
  });
  // a Node that does not know the flag at all: run here, on the simd build
  if (child.status === 9 || child.error) return undefined;
  return child.status ?? 1;
}

const [command, ...rest] = process.argv.slice(2);
const commands: Record<string, (argv: string[]) => number> = { info, bench, verify };
const again = command && command !== '--version' && statSync(process.argv[1], { throwIfNoEntry: false }) ? relaunched() : undefined;
if (again !== undefined) process.exitCode = again;
else if (command === '--version' || command === '-v') process.exitCode = print(packageVersion());
else if (!command || command === '--help' || command === '-h' || command === 'help') process.exitCode = print(HELP.main);
else if (!commands[command]) process.exitCode = fail(`unknown command "${command}"\n\n${HELP.main}`);
else {
  try {
    process.exitCode = commands[command](rest);
  } catch (error) {
    process.exitCode = fail(String(error instanceof Error ? error.message : error));
  }
}
