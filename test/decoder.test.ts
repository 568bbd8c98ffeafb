// The decoder example (examples/decoder) against onnxruntime-node running the same model as an ONNX
// opset-23 graph (RMSNormalization, RotaryEmbedding, Attention with past_key/past_value): a
// 16-token prompt and 32 greedy decode steps give the same greedy tokens, and logits within 1e-4
// relative (max |ours - ort| / max |ort| over each run's logits), on every backend. Then the
// batching the server relies on: a forwardBatch of several sessions (prefill and decode rows mixed,
// sync and async) equals each session run alone, and a batch that does not fit is refused with
// nothing changed. Last, float16 and int8 KV pages against float32 pages (examples/decoder/accuracy.js,
// one prompt, 32 steps).
import ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error plain-JS example without types
import { argmax, createModel, greedyDecode } from '../examples/decoder/model.js';
// @ts-expect-error plain-JS example without types
import { buildOnnxModel, onnxGreedyDecode } from '../examples/decoder/onnx-graph.js';
// @ts-expect-error plain-JS example without types
import { measureAccuracy } from '../examples/decoder/accuracy.js';
import { createEngineSync } from '../src/index.js';
import { BACKENDS, relativeError } from './helpers.js';

const PROMPT = Array.from({ length: 16 }, (_, i) => (i * 389 + 11) % 4096);
/** The prompt's run, then 32 decode steps: 33 greedy tokens. */
const RUNS = 33;
const VOCAB = 4096;

describe('decoder example', () => {
  let reference: { tokens: number[]; logits: Float32Array[] };
  beforeAll(async () => {
    reference = await onnxGreedyDecode(ort, buildOnnxModel(), {}, PROMPT, RUNS);
  }, 60_000);

  for (const backend of BACKENDS) {
    it(`${backend}: logits and greedy tokens equal onnxruntime-node's`, () => {
      const engine = createEngineSync({ backend, threads: 2 });
      const model = createModel(engine);
      try {
        const ours = greedyDecode(model.session(), PROMPT, RUNS, VOCAB);
        expect(ours.tokens).toEqual(reference.tokens);
        expect(ours.logits.length).toBe(RUNS);
        expect(ours.logits[0].length).toBe(PROMPT.length * VOCAB);
        const worst = Math.max(...ours.logits.map((row: Float32Array, s: number) => relativeError(row, reference.logits[s])));
        expect(worst).toBeLessThan(1e-4);
      } finally {
        model.dispose();
        engine.dispose();
      }
    }, 120_000);

    it(`${backend}: a batch of sessions equals each session alone, sync and async`, async () => {
      const engine = createEngineSync({ backend, threads: 2 });
      const model = createModel(engine, { layers: 2, vocab: 512, maxTokens: 256 });
      try {
        const vocab = model.config.vocab;
        const prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]];
        // alone: each prompt, then one more token
        const alone = prompts.map((prompt) => {
          const session = model.session();
          const first = session.forward(prompt);
          const next = session.forward([argmax(first, vocab)]);
          session.dispose();
          return { first, next };
        });
        for (const async of [false, true]) {
          const sessions = prompts.map(() => model.session());
          const first = await model.forwardBatch(sessions.map((session, i) => ({ session, tokens: prompts[i] })), { async });
          const next = await model.forwardBatch(sessions.map((session, i) => ({ session, tokens: [argmax(first[i], vocab)] })), { async, logits: 'last' });
          // float32 rounding only: x·W of one row sums K in four chains (f32_gemv_1x8c4), of several
          // rows in one chain per row (measured 1.05e-6 on wasm-simd; 1e-4 is the bound against onnxruntime)
          prompts.forEach((_, i) => {
            expect(relativeError(first[i], alone[i].first)).toBeLessThan(1e-5);
            expect(relativeError(next[i], alone[i].next)).toBeLessThan(1e-5);
            expect(sessions[i].length).toBe(prompts[i].length + 1);
          });
          for (const session of sessions) session.dispose();
        }
        expect(model.stats().pagesHeld).toBe(0);
        expect(model.stats().pool.pagesUsed).toBe(0);

        // 256 positions = 16 pages per layer: a batch that needs more is refused before anything changes
        const a = model.session();
        const b = model.session();
        a.forward(Array.from({ length: 200 }, (_, i) => i % vocab));
        expect(() => model.forwardBatch([{ session: b, tokens: [1] }, { session: a, tokens: Array.from({ length: 60 }, () => 3) }])).toThrow(expect.objectContaining({ code: 'CACHE_FULL' }));
        expect([a.length, b.length, a.busy, b.busy]).toEqual([200, 0, false, false]);
        expect(() => model.forwardBatch([{ session: b, tokens: [vocab] }])).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
        expect(b.forward([1]).length).toBe(vocab);
      } finally {
        model.dispose();
        engine.dispose();
      }
    }, 120_000);

    // Measured (wasm-simd and js, prompt 0, 32 steps): every token and argmax the same for both dtypes;
    // logits rel. L2 error per step max (median) 3.4e-4 (2.8e-4) for float16, 8.4e-3 (7.0e-3) for int8,
    // within 4% between the backends. Float32's smallest top-2 logit margin over these steps is 0.036,
    // about 9 times int8's typical error per logit (8e-3 · rms 0.46), so the token bounds (the issue's
    // 99% and 90%) hold with room. The error bounds sit 15 to 30% above what was measured (the run is
    // seeded and deterministic): rounding by truncation instead of to nearest gives 4.4e-4 (3.7e-4) in
    // float16 and 1.5e-2 (1.3e-2) in int8 and fails them, as does any coarser bug. The floor says the
    // pages really were float16 or int8 (float32 pages would give 0).
    it(`${backend}: float16 and int8 KV pages decode as float32 pages do, within bounds`, () => {
      const engine = createEngineSync({ backend, threads: 1 });
      try {
        const { rows } = measureAccuracy(engine, { steps: 32, prompts: 1 });
        const bounds = { float16: { same: 0.99, relL2Max: 4e-4, relL2Median: 3.2e-4 }, int8: { same: 0.9, relL2Max: 1.1e-2, relL2Median: 9e-3 } };
        for (const dtype of ['float16', 'int8'] as const) {
          const row = rows.find((r: { dtype: string; prompt: number | string }) => r.dtype === dtype && r.prompt === 0);
          expect(row.steps).toBe(32);
          expect(row.freeRunning.same, dtype).toBeGreaterThanOrEqual(bounds[dtype].same);
          expect(row.teacherForced.same, dtype).toBeGreaterThanOrEqual(bounds[dtype].same);
          expect(row.teacherForced.relL2Max, dtype).toBeLessThan(bounds[dtype].relL2Max);
          expect(row.teacherForced.relL2Median, dtype).toBeLessThan(bounds[dtype].relL2Median);
          expect(row.teacherForced.relL2Median, dtype).toBeGreaterThan(1e-5);
        }
      } finally {
        engine.dispose();
      }
    }, 120_000);
  }
});
