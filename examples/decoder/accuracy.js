// What float16 and int8 KV pages change in the decoder's output, against float32 pages: the same
// seeded model (model.js, the token server's), the same prompts, greedy decoding.
//
// For each prompt (--prompts of them, --prompt-length seeded token ids each) it first decodes --steps
// greedy tokens with float32 pages and keeps every step's logits [vocab]. Then, for each smaller dtype:
//   free-running:   the dtype decodes greedily on its own; "same token" is the fraction of the steps s
//                   whose token equals float32's token at step s, and "first divergence" the first step
//                   where they differ (steps count from 0: step 0 is the token after the prompt). After a
//                   divergence the two continue different histories, so later steps rarely agree again.
//   teacher-forced: the dtype is fed float32's tokens (the prompt, then float32's token of each step), so
//                   both see the same history and only the pages differ; "same argmax" is the fraction
//                   of steps whose argmax equals float32's token, and the logits' relative L2 error
//                   ||logits_dtype - logits_f32|| / ||logits_f32|| of each step is summed up by its max
//                   and its median.
// The "generates the same greedy tokens as float32 for at least X% of 256 steps" reads
// literally as the free-running figure; the teacher-forced one says how close each step is without
// the compounding of a divergence. Both are reported. Deterministic for a given backend.
// A caveat the output states: the model's weights are seeded noise, and its greedy output settles into
// repeating one token for long runs (the line under the table counts float32's distinct tokens per
// prompt), so a divergence is mostly a switch from one run to the next made a step early or late, and
// the free-running figure is kinder than it would be on a trained model. The logits' error is the
// figure that does not depend on that.
//   node examples/decoder/accuracy.js [--steps 256] [--prompts 4] [--prompt-length 16] [--backend auto] [--threads 1]
import { parseArgs } from 'node:util';
import { createEngine } from '../../dist/index.js';
import { argmax, createModel, greedyDecode, makeWeights } from './model.js';

/** Prompt `index`: `length` token ids from a multiplicative hash of (index, position), so every run feeds the same. */
export function seededPrompt(index, length, vocab) {
  return Array.from({ length }, (_, i) => (Math.imul((index + 1) * 7919 + i, 2654435761) >>> 0) % vocab);
}

/** ||a - b||₂ / ||b||₂ in float64. */
function relativeL2(a, b) {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < b.length; i++) {
    diff += (a[i] - b[i]) ** 2;
    norm += b[i] ** 2;
  }
  return Math.sqrt(diff / norm);
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

/** The figures of one dtype over some prompts' steps. */
function summarize(dtype, prompt, freeSame, firstDivergence, forcedSame, errors) {
  return {
    dtype, prompt, steps: errors.length,
    freeRunning: { same: freeSame / errors.length, firstDivergence },
    teacherForced: { same: forcedSame / errors.length, relL2Max: Math.max(...errors), relL2Median: median(errors) },
    errors,
  };
}

/**
 * Decodes `prompts` seeded prompts for `steps` steps with float32 pages, then with each of `dtypes`,
 * on `engine`; `config` goes to createModel (its kvDtype is set here). Returns one row per (dtype,
 * prompt) and one per dtype over all prompts (prompt: 'all'; its first divergence is the earliest).
 */
export function measureAccuracy(engine, { steps = 256, prompts = 4, promptLength = 16, dtypes = ['float16', 'int8'], config = {} } = {}) {
  const weights = makeWeights(config);
  const f32 = createModel(engine, { ...config, kvDtype: 'float32' }, { weights });
  const { vocab } = f32.config;
  const inputs = Array.from({ length: prompts }, (_, p) => seededPrompt(p, promptLength, vocab));
  /** Per prompt: float32's tokens and the logits [vocab] each step's token is the argmax of. */
  const references = inputs.map((prompt) => {
    const session = f32.session();
    const { tokens, logits } = greedyDecode(session, prompt, steps, vocab);
    session.dispose();
    return { tokens, logits: logits.map((rows) => rows.slice(rows.length - vocab)) };
  });
  f32.dispose();

  const rows = [];
  for (const dtype of dtypes) {
    const model = createModel(engine, { ...config, kvDtype: dtype }, { weights });
    const perPrompt = inputs.map((prompt, p) => {
      const reference = references[p];
      const forced = model.session();
      const argmaxes = [];
      const errors = [];
      for (let s = 0; s < steps; s++) {
        const logits = s === 0 ? forced.forward(prompt).subarray(prompt.length * vocab - vocab) : forced.forward([reference.tokens[s - 1]]);
        argmaxes.push(argmax(logits, vocab));
        errors.push(relativeL2(logits, reference.logits[s]));
      }
      forced.dispose();
      const forcedSame = argmaxes.filter((t, s) => t === reference.tokens[s]).length;

      // Up to its first divergence the free run feeds what the forced run fed, so it computes the same
      // logits and argmaxes: it is run on its own only when the forced run's argmaxes differ somewhere.
      let tokens = argmaxes;
      if (forcedSame < steps) {
        const free = model.session();
        tokens = greedyDecode(free, prompt, steps, vocab).tokens;
        free.dispose();
      }
      const freeSame = tokens.filter((t, s) => t === reference.tokens[s]).length;
      const diverged = tokens.findIndex((t, s) => t !== reference.tokens[s]);
      return summarize(dtype, p, freeSame, diverged < 0 ? null : diverged, forcedSame, errors);
    });
    model.dispose();
    rows.push(...perPrompt);
    const divergences = perPrompt.map((r) => r.freeRunning.firstDivergence).filter((d) => d !== null);
    rows.push(summarize(
      dtype, 'all',
      perPrompt.reduce((sum, r) => sum + r.freeRunning.same * r.steps, 0),
      divergences.length ? Math.min(...divergences) : null,
      perPrompt.reduce((sum, r) => sum + r.teacherForced.same * r.steps, 0),
      perPrompt.flatMap((r) => r.errors),
    ));
  }
  return { backend: engine.backend, steps, prompts: inputs, rows, distinctTokens: references.map((r) => new Set(r.tokens).size) };
}

/** The rows as a markdown table. */
export function accuracyTable({ rows }) {
  const percent = (x) => `${(100 * x).toFixed(1)}%`;
  const lines = [
    '| KV pages | prompt | free-running: same token | first divergence (step) | teacher-forced: same argmax | logits rel. L2 error: max | median |',
    '|---|---|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    const name = r.prompt === 'all' ? '**all**' : String(r.prompt);
    lines.push(`| ${r.dtype} | ${name} | ${percent(r.freeRunning.same)} | ${r.freeRunning.firstDivergence ?? 'none'} | ${percent(r.teacherForced.same)} | ${r.teacherForced.relL2Max.toExponential(2)} | ${r.teacherForced.relL2Median.toExponential(2)} |`);
  }
  return lines.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      steps: { type: 'string', default: '256' }, prompts: { type: 'string', default: '4' }, 'prompt-length': { type: 'string', default: '16' },
      backend: { type: 'string', default: 'auto' }, threads: { type: 'string', default: '1' },
    },
  });
  const engine = await createEngine({ backend: values.backend, threads: Number(values.threads) });
  const started = performance.now();
  const result = measureAccuracy(engine, { steps: Number(values.steps), prompts: Number(values.prompts), promptLength: Number(values['prompt-length']) });
  const seconds = (performance.now() - started) / 1000;
  console.log(`\n${result.backend}, ${engine.threads} thread(s); ${result.prompts.length} prompts of ${values['prompt-length']} seeded tokens, ${result.steps} greedy steps each; against float32 pages (${seconds.toFixed(0)} s)\n`);
  console.log(accuracyTable(result));
  console.log(`\nfloat32's ${result.steps} greedy tokens hold ${result.distinctTokens.join(', ')} distinct token ids (prompts ${result.prompts.map((_, p) => p).join(', ')}): the seeded model repeats a token for long runs.`);
  engine.dispose();
}
