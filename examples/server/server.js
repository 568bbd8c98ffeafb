// A token server (node:http, no framework) for the decoder of examples/decoder: each session keeps
// its keys and values in the model's paged KV pools between requests, and greedy tokens stream back
// one JSON line each as they are made.
//   POST   /sessions                  -> 201 {"id":1}
//   POST   /sessions/:id/tokens       {"tokens":[ids],"generate":N} -> 200, application/x-ndjson:
//                                      N lines {"token":id}, then the stream ends
//   DELETE /sessions/:id              -> 200 {"deleted":1}
//   GET    /stats[?reset=1]           pool, tokens/s, batches, event-loop delay (ms)
// The request's tokens are appended, then N times the argmax of the last logits is streamed and
// appended in turn; the last generated token is held and goes in first on the session's next
// request (so a session's history is every token sent and generated, in order).
//
// With the batcher (default) the forwards of all sessions go through one queue (decoder/batcher.js):
// what arrives while a batch runs is the next batch, one model.forwardBatch with a GEMM per
// projection and one pool.stepAsync per layer for all of them. `--no-batcher` runs each request's
// forward on its own (model.forwardBatch of one session, stepAsync per request), for comparison.
// Refusals are 4xx and change nothing: a body over maxBodyBytes (413), bad JSON or ids (400), an
// unknown session (404), a session with a request under way (409), a session that would pass
// maxSessionTokens (413), too many sessions (429), pools full (503).
// --dtype is what the pools' pages store keys and values as (float32, float16 or int8: the model's
// kvDtype); examples/decoder/accuracy.js measures how far float16 and int8 move the greedy tokens.
// Run: node examples/server/server.js [--backend auto|wasm|js] [--threads 2] [--dtype float32|float16|int8] [--no-batcher] [--port 0]
import { createServer } from 'node:http';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createEngine } from '../../dist/index.js';
import { createBatcher } from '../decoder/batcher.js';
import { KV_DTYPES, argmax, createModel, modelConfig } from '../decoder/model.js';

export const DEFAULT_LIMITS = Object.freeze({ maxSessions: 256, maxBodyBytes: 64 * 1024, maxRequestTokens: 1024, maxGenerate: 256, maxSessionTokens: 4096 });

/** An error that becomes an HTTP status. */
class HttpError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The status of a refusal by the model or the pools. */
const statusOf = (error) => error instanceof HttpError ? error.status : ({ CACHE_FULL: 503, BUSY: 409, DISPOSED: 404, INVALID_ARGUMENT: 400 })[error?.code] ?? 500;

function readJson(req, maxBytes) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let bytes = 0;
    req.on('data', (chunk) => {
      bytes += chunk.length;
      if (bytes > maxBytes) {
        reject(new HttpError(413, `the body is over ${maxBytes} bytes`, 'TOO_LARGE'));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => {
      try {
        resolve(chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {});
      } catch {
        reject(new HttpError(400, 'the body is not JSON', 'INVALID_JSON'));
      }
    });
    req.on('error', reject);
  });
}

/** dtype: the KV pages' (the model's config.kvDtype, which it overrides when given). */
export async function startServer({ backend = 'auto', threads, batcher = true, port = 0, dtype, model: modelOptions = {}, limits: limitOptions = {} } = {}) {
  const limits = { ...DEFAULT_LIMITS, ...limitOptions };
  const config = modelConfig(dtype === undefined ? modelOptions : { ...modelOptions, kvDtype: dtype });
  const engine = await createEngine({ backend, threads });
  const model = createModel(engine, config);
  const { vocab } = model.config;
  const queue = batcher ? createBatcher(model) : undefined;
  const forward = queue
    ? (session, tokens) => queue.forward(session, tokens)
    : async (session, tokens) => (await model.forwardBatch([{ session, tokens }], { async: true, logits: 'last' }))[0];
  /** id -> { session (the model's), held (the last generated token, not yet appended, or -1), busy } */
  const sessions = new Map();
  let nextId = 1;
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();
  const counters = { since: performance.now(), generated: 0, appended: 0, requests: 0, refused: 0 };

  /** Checks a tokens request against the limits and the session; returns the tokens to feed first and N. */
  function readRequest(entry, body) {
    const { tokens = [], generate = 0 } = body ?? {};
    if (!Array.isArray(tokens) || tokens.length > limits.maxRequestTokens) {
      throw new HttpError(Array.isArray(tokens) ? 413 : 400, `tokens must be an array of at most ${limits.maxRequestTokens} token ids`, 'INVALID_TOKENS');
    }
    if (!tokens.every((t) => Number.isInteger(t) && t >= 0 && t < vocab)) throw new HttpError(400, `tokens must be integers in [0, ${vocab})`, 'INVALID_TOKENS');
    if (!Number.isInteger(generate) || generate < 0 || generate > limits.maxGenerate) {
      throw new HttpError(400, `generate must be an integer from 0 to ${limits.maxGenerate}`, 'INVALID_GENERATE');
    }
    const feed = entry.held >= 0 ? [entry.held, ...tokens] : tokens;
    if (feed.length === 0 && generate > 0) throw new HttpError(400, 'the session is empty: send tokens to start it', 'INVALID_TOKENS');
    // the positions this request will have appended when done (the last generated token is held back)
    const total = entry.session.length + feed.length + Math.max(0, generate - 1);
    if (total > limits.maxSessionTokens) {
      throw new HttpError(413, `the session would hold ${total} tokens, over the ${limits.maxSessionTokens} allowed`, 'SESSION_TOO_LONG');
    }
    return { feed, generate };
  }

  /** Appends `feed`, then streams `generate` greedy tokens; stops early when the client goes away. */
  async function serveTokens(entry, feed, generate, res) {
    let gone = false;
    res.on('close', () => (gone = !res.writableFinished));
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    let next = feed;
    try {
      if (next.length > 0 && generate === 0) {
        await forward(entry.session, next);
        entry.held = -1;
        counters.appended += next.length;
      }
      for (let g = 0; g < generate && !gone && sessions.get(entry.id) === entry; g++) {
        const logits = await forward(entry.session, next);
        counters.appended += next.length;
        const token = argmax(logits, vocab);
        entry.held = token;
        counters.generated++;
        if (!gone) res.write(`${JSON.stringify({ token })}\n`);
        next = [token];
      }
    } catch (error) {
      // the headers are out: the error goes as the last line
      if (!gone) res.write(`${JSON.stringify({ error: String(error?.message ?? error), code: error?.code })}\n`);
      if (entry.session.disposed) sessions.delete(entry.id);
    }
    res.end();
  }

  const send = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };

  const server = createServer(async (req, res) => {
    let entry;
    try {
      const url = new URL(req.url, 'http://localhost');
      const parts = url.pathname.split('/').filter(Boolean);
      if (req.method === 'POST' && url.pathname === '/sessions') {
        if (sessions.size >= limits.maxSessions) throw new HttpError(429, `${limits.maxSessions} sessions are open, the most allowed`, 'TOO_MANY_SESSIONS');
        const id = nextId++;
        sessions.set(id, { id, session: model.session(), held: -1, busy: false });
        return send(res, 201, { id });
      }
      if (req.method === 'GET' && url.pathname === '/stats') {
        const seconds = (performance.now() - counters.since) / 1000;
        const stats = {
          backend: engine.backend, threads: engine.threads, dtype: model.config.kvDtype, batcher: Boolean(queue), sessions: sessions.size,
          tokens: { generated: counters.generated, appended: counters.appended, perSecond: counters.generated / seconds, seconds },
          requests: counters.requests, refused: counters.refused,
          batches: queue?.stats(Boolean(url.searchParams.get('reset'))),
          pool: model.stats(), memory: engine.stats(),
          loopDelayMs: { p50: delay.percentile(50) / 1e6, p99: delay.percentile(99) / 1e6, max: delay.max / 1e6 },
        };
        if (url.searchParams.get('reset')) {
          delay.reset();
          Object.assign(counters, { since: performance.now(), generated: 0, appended: 0, requests: 0, refused: 0 });
        }
        return send(res, 200, stats);
      }
      if (parts[0] !== 'sessions' || parts.length < 2) throw new HttpError(404, 'not found', 'NOT_FOUND');
      const id = Number(parts[1]);
      const found = sessions.get(id);
      if (!found) throw new HttpError(404, `no session ${parts[1]}`, 'NO_SESSION');
      if (req.method === 'DELETE' && parts.length === 2) {
        sessions.delete(id);
        found.session.dispose(); // after its forward under way, if any
        return send(res, 200, { deleted: id });
      }
      if (req.method === 'POST' && parts[2] === 'tokens' && parts.length === 3) {
        counters.requests++;
        const body = await readJson(req, limits.maxBodyBytes);
        if (found.busy) throw new HttpError(409, `session ${id} has a request under way`, 'BUSY');
        const { feed, generate } = readRequest(found, body);
        entry = found;
        entry.busy = true;
        await serveTokens(entry, feed, generate, res);
        return undefined;
      }
      throw new HttpError(404, 'not found', 'NOT_FOUND');
    } catch (error) {
      counters.refused++;
      if (!res.headersSent) send(res, statusOf(error), { error: String(error?.message ?? error), code: error?.code });
      return undefined;
    } finally {
      if (entry) entry.busy = false;
    }
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const close = () => new Promise((resolve) => {
    server.close(() => {
      model.dispose();
      engine.dispose();
      delay.disable();
      resolve();
    });
    server.closeAllConnections();
  });
  return { port: server.address().port, close, engine, model };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      backend: { type: 'string', default: 'auto' }, threads: { type: 'string' }, port: { type: 'string', default: '0' },
      dtype: { type: 'string', default: 'float32' }, 'no-batcher': { type: 'boolean', default: false },
    },
  });
  if (!KV_DTYPES.includes(values.dtype)) {
    console.error(`--dtype must be one of ${KV_DTYPES.join(', ')}, got ${values.dtype}`);
    process.exit(2);
  }
  const threads = values.threads === undefined ? undefined : Number(values.threads);
  const { port, engine, model } = await startServer({ backend: values.backend, threads, dtype: values.dtype, batcher: !values['no-batcher'], port: Number(values.port) });
  console.log(`listening ${port} (${engine.backend}, ${engine.threads} threads, ${model.config.kvDtype} KV pages, ${values['no-batcher'] ? 'no batcher' : 'batcher'})`);
}
