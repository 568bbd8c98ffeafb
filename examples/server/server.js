// A node:http inference endpoint that keeps a KV cache per session and serves decode steps with
// attentionAsync, so the event loop stays free while the workers compute.
//   POST   /sessions                 {"heads":32,"kvHeads":8,"headDim":128,"maxSeq":4096} -> {"id":1}
//   POST   /sessions/:id/step        {"q":[Hq·D floats],"k":[Hkv·D],"v":[Hkv·D]} -> {"y":[Hq·D], "length":n}
//   DELETE /sessions/:id
//   GET    /stats[?reset=1]          event-loop delay (ms) and session count
// Steps of one session run in order; a cache that fills up is reset (a real server would evict).
// Run: node examples/server/server.js [--backend wasm|js] [--port 0]   (prints "listening <port>")
import { createServer } from 'node:http';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createEngine } from 'wasm-attention';

export async function startServer({ backend = 'auto', port = 0, threads } = {}) {
  const engine = await createEngine({ backend, threads });
  const sessions = new Map();
  let nextId = 1;
  const delay = monitorEventLoopDelay({ resolution: 1 });
  delay.enable();

  const readJson = (req) => new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      try {
        resolve(chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {});
      } catch (error) {
        reject(error);
      }
    });
  });
  const send = (res, status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };

  /** body[name] as float32, checked: `length` finite numbers; a refused step changes nothing. */
  const floats = (body, name, length) => {
    const value = body?.[name];
    if (!Array.isArray(value) || value.length !== length || !value.every((x) => typeof x === 'number' && Number.isFinite(x))) {
      throw Object.assign(new Error(`${name} must be an array of ${length} finite numbers`), { name: 'AttentionError', code: 'INVALID_TENSOR' });
    }
    return Float32Array.from(value);
  };

  async function step(session, body) {
    const { cache, heads, kvHeads, headDim } = session;
    // every input checked before the cache is touched
    const q = floats(body, 'q', heads * headDim);
    const k = floats(body, 'k', kvHeads * headDim);
    const v = floats(body, 'v', kvHeads * headDim);
    if (cache.length >= cache.maxSeq) cache.reset();
    cache.append({ data: k, dims: [1, kvHeads, 1, headDim] }, { data: v, dims: [1, kvHeads, 1, headDim] });
    const y = await cache.attentionAsync({ data: q, dims: [1, heads, 1, headDim] });
    return { y: Array.from(y.data), length: cache.length };
  }

  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url, 'http://localhost');
      const parts = url.pathname.split('/').filter(Boolean);
      if (req.method === 'POST' && url.pathname === '/sessions') {
        const { heads = 8, kvHeads = heads, headDim = 64, maxSeq = 4096 } = await readJson(req);
        const id = nextId++;
        sessions.set(id, { cache: engine.kvCache({ batch: 1, kvHeads, headDim, maxSeq }), heads, kvHeads, headDim, queue: Promise.resolve() });
        return send(res, 201, { id });
      }
      const session = parts[0] === 'sessions' ? sessions.get(Number(parts[1])) : undefined;
      if (req.method === 'POST' && parts[2] === 'step' && session) {
        const body = await readJson(req);
        const result = session.queue.then(() => step(session, body));
        session.queue = result.catch(() => {});
        return send(res, 200, await result);
      }
      if (req.method === 'DELETE' && session) {
        session.cache.dispose();
        sessions.delete(Number(parts[1]));
        return send(res, 200, { deleted: Number(parts[1]) });
      }
      if (req.method === 'GET' && url.pathname === '/stats') {
        const stats = { backend: engine.backend, sessions: sessions.size, loopDelayMs: { p50: delay.percentile(50) / 1e6, p99: delay.percentile(99) / 1e6, max: delay.max / 1e6 } };
        if (url.searchParams.get('reset')) delay.reset();
        return send(res, 200, stats);
      }
      return send(res, 404, { error: 'not found' });
    } catch (error) {
      return send(res, error?.name === 'AttentionError' ? 400 : 500, { error: String(error?.message ?? error), code: error?.code });
    }
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  const close = () => new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections?.();
    engine.dispose();
    delay.disable();
  });
  return { port: server.address().port, close, engine };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { backend: { type: 'string', default: 'auto' }, port: { type: 'string', default: '0' } } });
  const { port } = await startServer({ backend: values.backend, port: Number(values.port) });
  console.log(`listening ${port}`);
}
