// A whole decoder, token by token: the Llama-architecture model of examples/decoder on this package's
// ops against the same model (same seeded weights) as an ONNX opset-23 graph on onnxruntime-node.
//   npm run bench:model                       both models, 1 and 2 threads, 8 and 64 sessions
//   node bench/model.bench.js --models small --threads 1 --sessions 8 --decode 32 --json
// For each model and thread count, in one process:
// - agreement: a 16-token prompt and 8 greedy steps on both; the largest max|ours - ort| / max|ort| over
//   each run's logits (goal <= 1e-4) and whether the greedy tokens are the same;
// - prefill of a 32- and a 512-token prompt (every position's logits, as the graph gives them): tokens/s,
//   the median of several runs;
// - decode, one session: after a 32-token prompt, rounds of `--decode` greedy steps, ours and theirs in
//   turn, tokens/s the median over the rounds; and where each millisecond of our step goes (matmuls, the
//   attention step, the JS glue between them; their mean over the rounds);
// - sessions: `--sessions` sessions, each after its own 32-token prompt, decode `--decode` steps together
//   (ours: one forwardBatch of every session per step; onnxruntime-node: one run per session per step, as
//   a server runs an ONNX decoder whose sessions hold different lengths): aggregate tokens/s.
// onnxruntime-node runs at its best from Node: graph optimizations 'all' (its default), sequential
// execution, intra-op threads = the thread count, past keys and values fed back as the previous run's
// present outputs (onnxruntime-node has no IO binding that would keep them in place). When bench/peers
// is installed (npm --prefix bench/peers ci), onnxruntime-web too (its WASM SIMD build, numThreads =
// the thread count): logits, prefill and one session's decode.
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { createEngineSync } from '../dist/index.js';
import { buildSupported } from '../dist/backends/wasm-module.js';
import { argmax, createModel, makeWeights, modelConfig } from '../examples/decoder/model.js';
import { buildOnnxModel } from '../examples/decoder/onnx-graph.js';
import { collect, relaunchWithRelaxedSimd } from './relaxed-flag.js';

relaunchWithRelaxedSimd();

/** The issue's two sizes: 4 layers of width 512 (8 q and 2 kv heads of 64), and 12 of width 768 (12 and 4). */
const MODELS = {
  small: { layers: 4, width: 512, heads: 8, kvHeads: 2, headDim: 64, mlpWidth: 1376, vocab: 4096 },
  medium: { layers: 12, width: 768, heads: 12, kvHeads: 4, headDim: 64, mlpWidth: 2048, vocab: 4096 },
};

const { values } = parseArgs({
  options: {
    models: { type: 'string', default: 'small,medium' },
    threads: { type: 'string', default: `1,${Math.min(2, availableParallelism())}` },
    sessions: { type: 'string', default: '8,64' },
    decode: { type: 'string', default: '32' },
    prefill: { type: 'string', default: '32,512' },
    backend: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const backend = values.backend ?? (buildSupported('wasm-relaxed-simd') ? 'wasm-relaxed-simd' : 'wasm-simd');
const list = (text) => text.split(',').filter(Boolean).map(Number);
const decodeSteps = Number(values.decode);
const log = (line) => values.json || process.stderr.write(`${line}\n`);
const now = () => performance.now();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
/** Decode rounds per side, taken in turn (the machine's speed drifts within seconds). */
const DECODE_ROUNDS = 5;

/** A prompt of `length` token ids, different for each `seed`. */
const prompt = (length, seed, vocab) => Array.from({ length }, (_, i) => (i * 389 + seed * 7919 + 11) % vocab);

/** max |a - b| / max |b|. */
function relativeError(a, b) {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

/** onnxruntime-web from bench/peers (npm --prefix bench/peers ci), or undefined when it is not installed. */
async function loadOrtWeb() {
  try {
    const require = createRequire(new URL('./peers/package.json', import.meta.url));
    const module = await import(pathToFileURL(require.resolve('onnxruntime-web')).href);
    const web = module.default ?? module;
    web.env.wasm.proxy = false;
    web.env.logLevel = 'error';
    return web;
  } catch {
    return undefined;
  }
}

/** An onnxruntime's side (node's native CPU or web's WASM): a session of the graph and a decoding state per sequence. */
class OrtModel {
  static async create(runtime, bytes, config, threads) {
    const web = runtime !== ort;
    // onnxruntime-web: its SIMD build, numThreads workers (set before the session)
    if (web) runtime.env.wasm.numThreads = threads;
    const session = await runtime.InferenceSession.create(bytes, web
      ? { executionProviders: ['wasm'], executionMode: 'sequential', graphOptimizationLevel: 'all' }
      : { executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all' });
    return new OrtModel(runtime, session, config);
  }

  constructor(runtime, session, config) {
    this.ort = runtime;
    this.session = session;
    this.config = config;
  }

  /** A decoding state: no past. */
  state() {
    const { layers, kvHeads, headDim } = this.config;
    const past = {};
    for (let l = 0; l < layers; l++) {
      for (const kind of ['key', 'value']) past[`past_${kind}_${l}`] = new this.ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
    }
    return { past, length: 0 };
  }

  /** Runs `tokens` after the state's past; returns every position's logits and keeps the present. */
  async forward(state, tokens) {
    const ids = BigInt64Array.from(tokens, (t) => BigInt(t));
    const positions = BigInt64Array.from(tokens, (_, i) => BigInt(state.length + i));
    const result = await this.session.run({
      input_ids: new this.ort.Tensor('int64', ids, [1, tokens.length]),
      position_ids: new this.ort.Tensor('int64', positions, [1, tokens.length]),
      ...state.past,
    });
    state.length += tokens.length;
    for (let l = 0; l < this.config.layers; l++) {
      state.past[`past_key_${l}`] = result[`present_key_${l}`];
      state.past[`past_value_${l}`] = result[`present_value_${l}`];
    }
    return result.logits.data;
  }

  release() {
    return this.session.release();
  }
}

/**
 * Our model with every engine call timed: engine.matmul and each pool's step are wrapped, so a forward's
 * time splits into matmuls, attention steps and the JS between them.
 */
function timedModel(engine, config, weights) {
  const spent = { matmul: 0, attention: 0 };
  const timed = (kind, call) => (...args) => {
    const start = now();
    try {
      return call(...args);
    } finally {
      spent[kind] += now() - start;
    }
  };
  const proxy = new Proxy(engine, {
    get(target, key) {
      if (key === 'matmul') return timed('matmul', target.matmul.bind(target));
      if (key === 'kvPool') {
        return (options) => {
          const pool = target.kvPool(options);
          return new Proxy(pool, { get: (p, k) => (k === 'step' ? timed('attention', p.step.bind(p)) : typeof p[k] === 'function' ? p[k].bind(p) : p[k]) });
        };
      }
      const value = target[key];
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const model = createModel(proxy, { ...config, maxTokens: 8192 }, { weights });
  return { model, spent, reset: () => Object.assign(spent, { matmul: 0, attention: 0 }) };
}

/**
 * onnxruntime-web on the same graph, after the rest of a (model, threads) row: its logits on the
 * agreement run's inputs against ours, its prefill and its decode of one session (the sessions
 * columns are onnxruntime-node's only: onnxruntime-web is slower at them).
 */
async function measureWeb(web, bytes, config, threads, agreement, row) {
  const { vocab } = config;
  const theirs = await OrtModel.create(web, bytes, config, threads);
  try {
    const result = { version: web.env.versions?.web, prefill: {} };
    let state = theirs.state();
    result.maxRelativeError = 0;
    for (const { feed, logits } of agreement) result.maxRelativeError = Math.max(result.maxRelativeError, relativeError(logits, await theirs.forward(state, feed)));
    for (const length of list(values.prefill)) {
      const runs = length >= 256 ? 3 : 8;
      const ms = [];
      for (let r = 0; r <= runs; r++) {
        state = theirs.state();
        const start = now();
        await theirs.forward(state, prompt(length, r + 1, vocab));
        if (r > 0) ms.push(now() - start);
      }
      result.prefill[length] = (1000 * length) / median(ms);
    }
    state = theirs.state();
    let next = argmax(await theirs.forward(state, prompt(32, 99, vocab)), vocab);
    for (let s = 0; s < 4; s++) next = argmax(await theirs.forward(state, [next]), vocab);
    const ms = [];
    for (let round = 0; round < DECODE_ROUNDS; round++) {
      const start = now();
      for (let s = 0; s < decodeSteps; s++) next = argmax(await theirs.forward(state, [next]), vocab);
      ms.push((now() - start) / decodeSteps);
    }
    result.decode = 1000 / median(ms);
    log(`  onnxruntime-web: logits ${result.maxRelativeError.toExponential(1)}; prefill ${Object.values(result.prefill).map((x) => x.toFixed(0)).join(', ')} tokens/s; decode ${result.decode.toFixed(0)} tokens/s (ours ${row.decode.ours.toFixed(0)})`);
    return result;
  } finally {
    await theirs.release();
  }
}

const ortWeb = await loadOrtWeb();
if (!ortWeb) log('onnxruntime-web is not installed (npm --prefix bench/peers ci): its columns are left out');
const results = [];
for (const name of values.models.split(',')) {
  const config = modelConfig({ ...MODELS[name] });
  const { vocab } = config;
  log(`${name}: making the weights and the ONNX graph...`);
  const weights = makeWeights(config);
  const bytes = buildOnnxModel(config, { maxPositions: 1024 });
  for (const threads of list(values.threads)) {
    log(`${name}, ${threads} thread(s): building both...`);
    const engine = createEngineSync({ backend, threads });
    const ours = timedModel(engine, config, weights);
    const theirs = await OrtModel.create(ort, bytes, config, threads);
    const row = { model: name, backend, threads, node: process.version };

    // agreement: 16-token prompt, then 8 greedy steps (what we fed and our logits, kept for onnxruntime-web)
    const agreement = [];
    {
      const session = ours.model.session();
      const state = theirs.state();
      let feed = prompt(16, 0, vocab);
      let worst = 0;
      let same = true;
      for (let s = 0; s < 9; s++) {
        const a = session.forward(feed);
        agreement.push({ feed, logits: a });
        const b = await theirs.forward(state, feed);
        worst = Math.max(worst, relativeError(a, b));
        const [ta, tb] = [argmax(a, vocab), argmax(b, vocab)];
        same &&= ta === tb;
        feed = [tb];
      }
      session.dispose();
      Object.assign(row, { maxRelativeError: worst, sameTokens: same });
    }

    // prefill: tokens/s of each prompt length (median of runs; the first of each side is a warm-up)
    row.prefill = {};
    for (const length of list(values.prefill)) {
      const runs = length >= 256 ? 3 : 8;
      const oursMs = [];
      const theirsMs = [];
      for (let r = 0; r <= runs; r++) {
        const tokens = prompt(length, r + 1, vocab);
        const session = ours.model.session();
        let start = now();
        session.forward(tokens);
        if (r > 0) oursMs.push(now() - start);
        session.dispose();
        const state = theirs.state();
        start = now();
        await theirs.forward(state, tokens);
        if (r > 0) theirsMs.push(now() - start);
      }
      row.prefill[length] = { ours: (1000 * length) / median(oursMs), ort: (1000 * length) / median(theirsMs) };
      log(`  prefill ${length}: ours ${row.prefill[length].ours.toFixed(0)} tokens/s, onnxruntime-node ${row.prefill[length].ort.toFixed(0)}`);
    }

    // decode, one session, after a 32-token prompt: rounds of `--decode` steps, ours and theirs in turn
    {
      const tokens = prompt(32, 99, vocab);
      const session = ours.model.session();
      const state = theirs.state();
      let next = argmax(session.forward(tokens), vocab);
      let nextOrt = argmax(await theirs.forward(state, tokens), vocab);
      for (let s = 0; s < 4; s++) {
        next = argmax(session.forward([next]), vocab);
        nextOrt = argmax(await theirs.forward(state, [nextOrt]), vocab);
      }
      const oursMs = [];
      const theirsMs = [];
      ours.reset();
      for (let round = 0; round < DECODE_ROUNDS; round++) {
        let start = now();
        for (let s = 0; s < decodeSteps; s++) next = argmax(session.forward([next]), vocab);
        oursMs.push((now() - start) / decodeSteps);
        start = now();
        for (let s = 0; s < decodeSteps; s++) nextOrt = argmax(await theirs.forward(state, [nextOrt]), vocab);
        theirsMs.push((now() - start) / decodeSteps);
      }
      session.dispose();
      const steps = DECODE_ROUNDS * decodeSteps;
      const stepMs = oursMs.reduce((a, b) => a + b) / DECODE_ROUNDS;
      const matmulMs = ours.spent.matmul / steps;
      const attentionMs = ours.spent.attention / steps;
      row.decode = { ours: 1000 / median(oursMs), ort: 1000 / median(theirsMs), stepMs, matmulMs, attentionMs, glueMs: stepMs - matmulMs - attentionMs };
      log(`  decode: ours ${row.decode.ours.toFixed(0)} tokens/s, onnxruntime-node ${row.decode.ort.toFixed(0)} (medians of ${DECODE_ROUNDS} rounds); step ${stepMs.toFixed(2)} ms = matmul ${matmulMs.toFixed(2)} + attention ${attentionMs.toFixed(2)} + glue ${row.decode.glueMs.toFixed(2)}`);
    }

    // many sessions decoding together
    row.sessions = {};
    for (const count of list(values.sessions)) {
      const sessions = Array.from({ length: count }, () => ours.model.session());
      const states = Array.from({ length: count }, () => theirs.state());
      const firstOurs = ours.model.forwardBatch(sessions.map((session, i) => ({ session, tokens: prompt(32, 200 + i, vocab) })), { logits: 'last' });
      const firstTheirs = [];
      for (let i = 0; i < count; i++) firstTheirs.push((await theirs.forward(states[i], prompt(32, 200 + i, vocab))).subarray(31 * vocab));
      let next = firstOurs.map((logits) => argmax(logits, vocab));
      ours.reset();
      let start = now();
      for (let s = 0; s < decodeSteps; s++) {
        next = ours.model.forwardBatch(sessions.map((session, i) => ({ session, tokens: [next[i]] })), { logits: 'last' }).map((logits) => argmax(logits, vocab));
      }
      const oursMs = now() - start;
      const split = { stepMs: oursMs / decodeSteps, matmulMs: ours.spent.matmul / decodeSteps, attentionMs: ours.spent.attention / decodeSteps };
      split.glueMs = split.stepMs - split.matmulMs - split.attentionMs;
      next = firstTheirs.map((logits) => argmax(logits, vocab));
      start = now();
      for (let s = 0; s < decodeSteps; s++) {
        for (let i = 0; i < count; i++) next[i] = argmax(await theirs.forward(states[i], [next[i]]), vocab);
      }
      const theirsMs = now() - start;
      for (const session of sessions) session.dispose();
      row.sessions[count] = { ours: (1000 * count * decodeSteps) / oursMs, ort: (1000 * count * decodeSteps) / theirsMs, ...split };
      log(`  ${count} sessions: ours ${row.sessions[count].ours.toFixed(0)} tokens/s, onnxruntime-node one run at a time ${row.sessions[count].ort.toFixed(0)}; step ${split.stepMs.toFixed(2)} ms = matmul ${split.matmulMs.toFixed(2)} + attention ${split.attentionMs.toFixed(2)} + glue ${split.glueMs.toFixed(2)}`);
    }
    if (ortWeb) row.web = await measureWeb(ortWeb, bytes, config, threads, agreement, row);
    results.push(row);
    ours.model.dispose();
    engine.dispose();
    await theirs.release();
    collect();
  }
}

if (values.json) {
  console.log(JSON.stringify(results, null, 2));
} else {
  const ratio = (x) => `${x.ours.toFixed(0)} / ${x.ort.toFixed(0)} = ${(x.ours / x.ort).toFixed(2)}x`;
  console.log(`\nnode ${process.version}, ${backend}; tokens/s ours / onnxruntime-node ${ort.env.versions?.common ?? ''} = ratio`);
  const prefills = list(values.prefill);
  const counts = list(values.sessions);
  console.log(`\n| model | threads | logits rel. error | same tokens | ${prefills.map((p) => `prefill ${p}`).join(' | ')} | decode, 1 session | ${counts.map((c) => `${c} sessions`).join(' | ')} |`);
  console.log(`|---|---:|---:|---|${prefills.map(() => '---:|').join('')}---:|${counts.map(() => '---:|').join('')}`);
  for (const r of results) {
    console.log(`| ${r.model} | ${r.threads} | ${r.maxRelativeError.toExponential(1)} | ${r.sameTokens ? 'yes' : 'NO'} | ${prefills.map((p) => ratio(r.prefill[p])).join(' | ')} | ${ratio(r.decode)} | ${counts.map((c) => ratio(r.sessions[c])).join(' | ')} |`);
  }
  const webRows = results.filter((r) => r.web);
  if (webRows.length > 0) {
    console.log(`\nAgainst onnxruntime-web ${webRows[0].web.version ?? ''} (its WASM SIMD build, numThreads = threads), the same rows; tokens/s ours / onnxruntime-web = ratio\n`);
    console.log(`| model | threads | logits rel. error | ${prefills.map((p) => `prefill ${p}`).join(' | ')} | decode, 1 session |`);
    console.log(`|---|---:|---:|${prefills.map(() => '---:|').join('')}---:|`);
    const vs = (a, b) => `${a.toFixed(0)} / ${b.toFixed(0)} = ${(a / b).toFixed(2)}x`;
    for (const r of webRows) {
      console.log(`| ${r.model} | ${r.threads} | ${r.web.maxRelativeError.toExponential(1)} | ${prefills.map((p) => vs(r.prefill[p].ours, r.web.prefill[p])).join(' | ')} | ${vs(r.decode.ours, r.web.decode)} |`);
    }
  }
  console.log('\nOur decode step: where the milliseconds go (engine.matmul calls, pool steps, the JS between them)\n');
  console.log('| model | threads | sessions | step ms | matmul ms | attention ms | glue ms |');
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    for (const [sessions, d] of [[1, r.decode], ...counts.map((c) => [c, r.sessions[c]])]) {
      console.log(`| ${r.model} | ${r.threads} | ${sessions} | ${d.stepMs.toFixed(2)} | ${d.matmulMs.toFixed(2)} | ${d.attentionMs.toFixed(2)} | ${d.glueMs.toFixed(2)} |`);
    }
  }
}
