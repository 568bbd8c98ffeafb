// A small Llama-architecture decoder on this package's ops, with its KV cache in paged KV pools, so
// that many sessions decode together: one pool.step per layer for all of them, and one GEMM per
// projection over the stacked rows of every session (a batch of single-token decodes turns the
// GEMVs into GEMMs).
//
// Per layer, for the rows x [N, E] of all sessions of a batch (E = width, Hq·D = E, Hkv·D = kv width):
//   a   = rmsnorm(x) · w_attn                                  rmsnorm(x) = x / sqrt(mean(x²) + eps) · w
//   q, k, v = a · Wq [E, Hq·D], a · Wk [E, Hkv·D], a · Wv     (one GEMM against [Wq | Wk | Wv])
//   y   = causal GQA attention of q over the session's history and k, v, with RoPE (half-split pairs,
//         base 10000) at absolute positions: pool.step appends k and v, rotates both, and attends
//   x  += y · Wo
//   m   = rmsnorm(x) · w_mlp
//   x  += (silu(m · W1) * (m · W3)) · W2                     silu(z) = z·sigmoid(z), in the W1 GEMM's epilogue
// then logits = rmsnorm(x) · w_final · embeddingᵀ (the output projection is tied to the embedding).
//
// Weights come from a seed (makeWeights), so the ONNX graph (onnx-graph.js) and the tests rebuild
// the same model. Layouts are row-major; a projection W [in, out] is applied as x · W.
// config.kvDtype is what the pools' pages store keys and values as: 'float32' (the default, the same
// as the ONNX graph), 'float16' or 'int8' (see kvPool's dtype option); accuracy.js measures what the
// two smaller ones change in the greedy tokens and the logits.
import { AttentionError } from '../../dist/index.js';

export const DEFAULT_CONFIG = Object.freeze({
  layers: 4,
  width: 512,
  heads: 8,
  kvHeads: 2,
  headDim: 64,
  mlpWidth: 1376,
  vocab: 4096,
  ropeBase: 10000,
  eps: 1e-5,
  seed: 1,
  /** Positions each layer's pool holds over all sessions. */
  maxTokens: 65536,
  pageSize: 16,
  /** What each layer's pool stores keys and values as: 'float32', 'float16' or 'int8'. */
  kvDtype: 'float32',
});

/** The page dtypes a pool takes (kvPool's options.dtype). */
export const KV_DTYPES = Object.freeze(['float32', 'float16', 'int8']);

/** A seeded stream of uniform numbers in [0, 1) (mulberry32: a 32-bit state, good enough for weights). */
function uniforms(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` floats scale·N(0, 1) around `mean` (Box-Muller on the uniform stream). */
function normals(next, count, scale, mean = 0) {
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(1 - next()));
    const angle = 2 * Math.PI * next();
    out[i] = mean + scale * radius * Math.cos(angle);
    if (i + 1 < count) out[i + 1] = mean + scale * radius * Math.sin(angle);
  }
  return out;
}

/** The config with defaults filled in and its shapes checked. */
export function modelConfig(config = {}) {
  const c = { ...DEFAULT_CONFIG, ...config };
  for (const key of Object.keys(c)) {
    if (!(key in DEFAULT_CONFIG)) throw new AttentionError('INVALID_OPTION', `config.${key} is not a model option`, `config.${key}`);
  }
  if (c.heads * c.headDim !== c.width) throw new AttentionError('INVALID_OPTION', `config.heads (${c.heads}) · headDim (${c.headDim}) must equal width ${c.width}`, 'config.heads');
  if (c.heads % c.kvHeads !== 0) throw new AttentionError('INVALID_OPTION', `config.heads ${c.heads} is not a multiple of kvHeads ${c.kvHeads}`, 'config.kvHeads');
  if (!KV_DTYPES.includes(c.kvDtype)) throw new AttentionError('INVALID_OPTION', `config.kvDtype must be one of ${KV_DTYPES.join(', ')}, got ${JSON.stringify(c.kvDtype)}`, 'config.kvDtype');
  return Object.freeze(c);
}

/**
 * The model's weights as plain Float32Arrays, from config.seed: the embedding [vocab, E], per layer
 * attnNorm [E], wq [E, Hq·D], wk [E, Hkv·D], wv [E, Hkv·D], wo [Hq·D, E], mlpNorm [E], w1 and w3
 * [E, F], w2 [F, E]; finalNorm [E]. Matrices are 0.02·N(0, 1), norm weights 1 + 0.1·N(0, 1).
 */
export function makeWeights(config) {
  const c = modelConfig(config);
  const next = uniforms(c.seed);
  const kvWidth = c.kvHeads * c.headDim;
  const matrix = (rows, cols) => normals(next, rows * cols, 0.02);
  const norm = () => normals(next, c.width, 0.1, 1);
  const embedding = matrix(c.vocab, c.width);
  const layers = [];
  for (let l = 0; l < c.layers; l++) {
    layers.push({
      attnNorm: norm(), wq: matrix(c.width, c.width), wk: matrix(c.width, kvWidth), wv: matrix(c.width, kvWidth), wo: matrix(c.width, c.width),
      mlpNorm: norm(), w1: matrix(c.width, c.mlpWidth), w3: matrix(c.width, c.mlpWidth), w2: matrix(c.mlpWidth, c.width),
    });
  }
  return { embedding, layers, finalNorm: norm() };
}

/** [rows, a] and [rows, b] side by side: [rows, a + b] (two projections fused into one GEMM). */
function sideBySide(rows, left, leftCols, right, rightCols) {
  const out = new Float32Array(rows * (leftCols + rightCols));
  for (let r = 0; r < rows; r++) {
    out.set(left.subarray(r * leftCols, (r + 1) * leftCols), r * (leftCols + rightCols));
    out.set(right.subarray(r * rightCols, (r + 1) * rightCols), r * (leftCols + rightCols) + leftCols);
  }
  return out;
}

/** y[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight, for each row of x [rows, width]. */
function rmsNorm(x, rows, width, weight, eps) {
  const y = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) {
    let sum = 0;
    for (let i = r * width; i < (r + 1) * width; i++) sum += x[i] * x[i];
    const inverse = 1 / Math.sqrt(sum / width + eps);
    for (let i = 0; i < width; i++) y[r * width + i] = x[r * width + i] * inverse * weight[i];
  }
  return y;
}

/** Index of the largest value of row `row` of logits [rows, vocab] (the first on a tie). */
export function argmax(logits, vocab, row = logits.length / vocab - 1) {
  let best = 0;
  for (let i = 1; i < vocab; i++) if (logits[row * vocab + i] > logits[row * vocab + best]) best = i;
  return best;
}

/**
 * Builds the model on `engine`: weights packed once in the engine's memory (engine.packWeights: every
 * matmul then streams them as they are), and one KV pool per layer
 * (a session holds one sequence in each). Returns { config, session(), forwardBatch(), stats(), dispose() }.
 * `weights`, makeWeights(config)'s result, saves making them again for several models of one config
 * (the same model with different page dtypes).
 */
export function createModel(engine, config = {}, { weights = makeWeights(config) } = {}) {
  const c = modelConfig(config);
  const { width, heads, kvHeads, headDim, mlpWidth, vocab, eps, pageSize } = c;
  const kvWidth = kvHeads * headDim;
  const qkvWidth = width + 2 * kvWidth;
  const packed = (dims, data, options) => engine.packWeights({ data, dims }, options);
  const layers = weights.layers.map((w) => ({
    attnNorm: w.attnNorm,
    mlpNorm: w.mlpNorm,
    wqkv: packed([width, qkvWidth], sideBySide(width, sideBySide(width, w.wq, width, w.wk, kvWidth), width + kvWidth, w.wv, kvWidth)),
    wo: packed([width, width], w.wo),
    w1: packed([width, mlpWidth], w.w1),
    w3: packed([width, mlpWidth], w.w3),
    w2: packed([mlpWidth, width], w.w2),
    pool: engine.kvPool({ kvHeads, headDim, pageSize, maxTokens: c.maxTokens, dtype: c.kvDtype }),
  }));
  // the output projection, tied to the embedding [vocab, width]: packed as its transpose [width, vocab]
  const embedding = packed([vocab, width], weights.embedding, { transposeB: true });
  const stepOptions = { rope: { base: c.ropeBase, dims: headDim, interleaved: false } };
  const maxPages = layers[0].pool.maxPages;
  const pagesFor = (length) => Math.ceil(length / pageSize);
  /** Pages each layer's pool holds or has promised to the forwards under way. */
  let pagesHeld = 0;
  let nextSessionId = 1;
  const live = new Set();
  let disposed = false;

  class Session {
    constructor() {
      this.id = nextSessionId++;
      this.sequences = layers.map((layer) => layer.pool.sequence());
      /** Positions held (the tokens fed so far). */
      this.length = 0;
      /** A forward is under way. */
      this.busy = false;
      this.disposeWhenDone = false;
      this.disposed = false;
      live.add(this);
    }

    /** Appends tokenIds and returns their logits [n, vocab] (a Float32Array, row-major). */
    forward(tokenIds) {
      return forwardBatch([{ session: this, tokens: tokenIds }])[0];
    }

    /** Gives the session's pages back (once its forward under way, if any, is done). */
    dispose() {
      if (this.disposed) return;
      if (this.busy) {
        this.disposeWhenDone = true;
        return;
      }
      this.disposed = true;
      live.delete(this);
      pagesHeld -= pagesFor(this.length);
      for (const sequence of this.sequences) sequence.dispose();
    }
  }

  /** Checks a batch and promises its pages; returns how many pages it took. Changes nothing when it throws. */
  function admit(requests) {
    if (disposed) throw new AttentionError('DISPOSED', 'this model was disposed');
    if (!Array.isArray(requests) || requests.length === 0) throw new AttentionError('INVALID_ARGUMENT', 'requests must be a non-empty array of { session, tokens }', 'requests');
    const seen = new Set();
    let pages = 0;
    requests.forEach(({ session, tokens }, i) => {
      if (!(session instanceof Session)) throw new AttentionError('INVALID_ARGUMENT', `requests[${i}].session is not a session of this model`, `requests[${i}].session`);
      if (session.disposed) throw new AttentionError('DISPOSED', `requests[${i}].session was disposed`, `requests[${i}].session`);
      if (session.busy || seen.has(session)) throw new AttentionError('BUSY', `requests[${i}].session has a forward under way`, `requests[${i}].session`);
      seen.add(session);
      if (!Array.isArray(tokens) && !ArrayBuffer.isView(tokens)) throw new AttentionError('INVALID_ARGUMENT', `requests[${i}].tokens must be an array of token ids`, `requests[${i}].tokens`);
      if (tokens.length === 0) throw new AttentionError('INVALID_ARGUMENT', `requests[${i}].tokens is empty`, `requests[${i}].tokens`);
      for (const t of tokens) {
        if (!Number.isInteger(t) || t < 0 || t >= vocab) throw new AttentionError('INVALID_ARGUMENT', `requests[${i}].tokens holds ${t}, not a token id in [0, ${vocab})`, `requests[${i}].tokens`);
      }
      pages += pagesFor(session.length + tokens.length) - pagesFor(session.length);
    });
    if (pagesHeld + pages > maxPages) {
      throw new AttentionError('CACHE_FULL', `the batch needs ${pages} more pages of ${pageSize} positions; ${maxPages - pagesHeld} of ${maxPages} are free`, 'requests');
    }
    pagesHeld += pages;
    for (const { session } of requests) session.busy = true;
    return pages;
  }

  /**
   * The forward pass of a batch, as a generator that yields each engine call ([method, ...args]) and
   * gets its result back, so that one body serves the sync and the async driver.
   */
  function* forwardSteps(requests, lastOnly) {
    const counts = requests.map((r) => r.tokens.length);
    const offsets = counts.map((_, i) => counts.slice(0, i).reduce((a, b) => a + b, 0));
    const rows = offsets.at(-1) + counts.at(-1);
    let x = new Float32Array(rows * width);
    requests.forEach(({ tokens }, i) => {
      for (let t = 0; t < tokens.length; t++) x.set(weights.embedding.subarray(tokens[t] * width, (tokens[t] + 1) * width), (offsets[i] + t) * width);
    });
    for (let l = 0; l < layers.length; l++) {
      const layer = layers[l];
      const qkv = (yield ['matmul', { data: rmsNorm(x, rows, width, layer.attnNorm, eps), dims: [rows, width] }, layer.wqkv]).data;
      // rows [n, Hq·D | Hkv·D | Hkv·D] of each session -> q [Hq, n, D], k and v [Hkv, n, D]
      const items = requests.map(({ session }, i) => {
        const n = counts[i];
        if (n === 1) {
          // one position: its row [Hq·D | Hkv·D | Hkv·D] already is q [Hq, 1, D], k and v [Hkv, 1, D]
          const row = offsets[i] * qkvWidth;
          const part = (from, size, dims) => ({ data: qkv.subarray(row + from, row + from + size), dims });
          return { sequence: session.sequences[l], q: part(0, width, [heads, 1, headDim]), k: part(width, kvWidth, [kvHeads, 1, headDim]), v: part(width + kvWidth, kvWidth, [kvHeads, 1, headDim]) };
        }
        const q = new Float32Array(heads * n * headDim);
        const k = new Float32Array(kvHeads * n * headDim);
        const v = new Float32Array(kvHeads * n * headDim);
        for (let t = 0; t < n; t++) {
          const row = (offsets[i] + t) * qkvWidth;
          for (let h = 0; h < heads; h++) q.set(qkv.subarray(row + h * headDim, row + (h + 1) * headDim), (h * n + t) * headDim);
          for (let h = 0; h < kvHeads; h++) {
            k.set(qkv.subarray(row + width + h * headDim, row + width + (h + 1) * headDim), (h * n + t) * headDim);
            v.set(qkv.subarray(row + width + kvWidth + h * headDim, row + width + kvWidth + (h + 1) * headDim), (h * n + t) * headDim);
          }
        }
        return { sequence: session.sequences[l], q: { data: q, dims: [heads, n, headDim] }, k: { data: k, dims: [kvHeads, n, headDim] }, v: { data: v, dims: [kvHeads, n, headDim] } };
      });
      const outputs = yield ['step', layer.pool, items];
      // outputs [Hq, n, D] -> rows [n, Hq·D]
      const attended = new Float32Array(rows * width);
      outputs.forEach(({ data }, i) => {
        const n = counts[i];
        if (n === 1) {
          attended.set(data, offsets[i] * width); // [Hq, 1, D] is the row
          return;
        }
        for (let h = 0; h < heads; h++) {
          for (let t = 0; t < n; t++) attended.set(data.subarray((h * n + t) * headDim, (h * n + t + 1) * headDim), (offsets[i] + t) * width + h * headDim);
        }
      });
      const projected = (yield ['matmul', { data: attended, dims: [rows, width] }, layer.wo]).data;
      for (let i = 0; i < x.length; i++) x[i] += projected[i];
      const m = { data: rmsNorm(x, rows, width, layer.mlpNorm, eps), dims: [rows, width] };
      // silu(m · W1) by the kernel's epilogue, times m · W3
      const hidden = (yield ['matmul', m, layer.w1, { activation: 'silu' }]).data;
      const up = (yield ['matmul', m, layer.w3]).data;
      for (let i = 0; i < hidden.length; i++) hidden[i] *= up[i];
      const down = (yield ['matmul', { data: hidden, dims: [rows, mlpWidth] }, layer.w2]).data;
      for (let i = 0; i < x.length; i++) x[i] += down[i];
    }
    // logits of every row, or of each request's last row only
    let outRows = rows;
    if (lastOnly) {
      const last = new Float32Array(requests.length * width);
      requests.forEach((_, i) => last.set(x.subarray((offsets[i] + counts[i] - 1) * width, (offsets[i] + counts[i]) * width), i * width));
      x = last;
      outRows = requests.length;
    }
    const logits = (yield ['matmul', { data: rmsNorm(x, outRows, width, weights.finalNorm, eps), dims: [outRows, width] }, embedding]).data;
    return requests.map((_, i) => (lastOnly ? logits.slice(i * vocab, (i + 1) * vocab) : logits.slice(offsets[i] * vocab, (offsets[i] + counts[i]) * vocab)));
  }

  const callSync = ([method, ...args]) => (method === 'step' ? args[0].step(args[1], stepOptions) : engine.matmul(...args));
  const callAsync = ([method, ...args]) => (method === 'step' ? args[0].stepAsync(args[1], stepOptions) : engine.matmulAsync(...args));

  /** Ends a batch: the sessions are free again; a failed batch leaves its sessions' layers out of step, so they are disposed. */
  function settle(requests, pages, failed) {
    for (const { session } of requests) session.busy = false;
    if (failed) {
      pagesHeld -= pages;
      for (const { session } of requests) session.dispose();
    } else {
      for (const { session, tokens } of requests) {
        session.length += tokens.length;
        if (session.disposeWhenDone) session.dispose();
      }
    }
  }

  /**
   * Runs several sessions' tokens through one pass: each layer's projections as one GEMM over every
   * session's rows and its attention as one pool step. requests: [{ session, tokens }]; returns each
   * request's logits [n, vocab] (Float32Array), or [vocab] of its last token with { logits: 'last' };
   * a Promise of them with { async: true } (steps and matmuls on the worker threads). A batch that
   * does not fit the pools is refused before anything changes (CACHE_FULL).
   */
  function forwardBatch(requests, { async = false, logits = 'all' } = {}) {
    const pages = admit(requests);
    const steps = forwardSteps(requests, logits === 'last');
    if (!async) {
      let failed = true;
      try {
        let state = steps.next();
        while (!state.done) state = steps.next(callSync(state.value));
        failed = false;
        return state.value;
      } finally {
        settle(requests, pages, failed);
      }
    }
    return (async () => {
      let failed = true;
      try {
        let state = steps.next();
        while (!state.done) state = steps.next(await callAsync(state.value));
        failed = false;
        return state.value;
      } finally {
        settle(requests, pages, failed);
      }
    })();
  }

  return {
    config: c,
    weights,
    session: () => {
      if (disposed) throw new AttentionError('DISPOSED', 'this model was disposed');
      return new Session();
    },
    forwardBatch,
    /** Sessions, pages held (per layer) and the pools' own stats (of layer 0; every layer holds the same). */
    stats: () => ({ sessions: live.size, pagesHeld, maxPages, pool: layers[0].pool.stats(), layers: layers.length }),
    dispose() {
      if (disposed) return;
      disposed = true;
      for (const session of [...live]) session.dispose();
      for (const layer of layers) {
        layer.pool.dispose();
        for (const t of [layer.wqkv, layer.wo, layer.w1, layer.w3, layer.w2]) t.release();
      }
      embedding.release();
    },
  };
}

/** Greedy decoding on one session: feeds `prompt`, then `steps` times the argmax token; returns the tokens and every logits row. */
export function greedyDecode(session, prompt, steps, vocab) {
  const logits = [session.forward(prompt)];
  const tokens = [];
  for (let s = 0; s < steps; s++) {
    tokens.push(argmax(logits.at(-1), vocab));
    if (s + 1 < steps) logits.push(session.forward([tokens.at(-1)]));
  }
  return { tokens, logits };
}
