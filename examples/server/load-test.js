// Load test of the token server (loopback only, bounded in time): for each KV page dtype (--dtypes,
// each the server's --dtype; default float32 only) and each mode (batcher, no batcher) it starts the
// server in a child process, then for each count of concurrent sessions runs that many clients for
// --seconds. A client opens a session, sends a prompt of --prompt tokens asking for --generate
// tokens, then three more requests of 8 tokens each asking for as many, closes the session and starts
// again, until the time is up (requests under way are finished). Each token line is timed
// on arrival: the first of a request from when it was sent (it includes the prompt's forward),
// the others from the token before. Reports generated tokens/s, per-token latency p50/p99, the first
// token's p50, and the server's event-loop delay p99 (monitorEventLoopDelay, from GET /stats), as
// a markdown table. Autocannon is not used here: it times whole responses, not tokens in a stream.
//   node examples/server/load-test.js [--sessions 1,8,64] [--seconds 6] [--prompt 16] [--generate 32]
//                                     [--modes batcher,no-batcher] [--dtypes float32,float16,int8]
//                                     [--backend auto] [--threads 2]
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { KV_DTYPES } from '../decoder/model.js';

const { values } = parseArgs({
  options: {
    sessions: { type: 'string', default: '1,8,64' }, seconds: { type: 'string', default: '6' }, prompt: { type: 'string', default: '16' },
    generate: { type: 'string', default: '32' }, modes: { type: 'string', default: 'batcher,no-batcher' }, backend: { type: 'string', default: 'auto' },
    threads: { type: 'string', default: '2' }, dtypes: { type: 'string', default: 'float32' },
  },
});
const dtypes = values.dtypes.split(',');
const unknown = dtypes.filter((d) => !KV_DTYPES.includes(d));
if (unknown.length > 0) {
  console.error(`--dtypes takes ${KV_DTYPES.join(', ')}; ${unknown.join(', ')} is not one`);
  process.exit(2);
}
const seconds = Number(values.seconds);
const promptLength = Number(values.prompt);
const generate = Number(values.generate);
const VOCAB = 4096;

/** Starts server.js in a child process; resolves with its base URL and the process. */
async function startChild(batcher, dtype) {
  const args = [new URL('./server.js', import.meta.url).pathname, '--backend', values.backend, '--threads', values.threads, '--dtype', dtype, ...(batcher ? [] : ['--no-batcher'])];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      const m = /listening (\d+)/.exec(String(d));
      if (m) resolve(Number(m[1]));
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  return { base: `http://127.0.0.1:${port}`, child };
}

/** Sends one tokens request and times each token line as it arrives; returns the latencies (ms) and an error count. */
async function request(base, id, tokens, timings) {
  const sent = performance.now();
  const res = await fetch(`${base}/sessions/${id}/tokens`, { method: 'POST', body: JSON.stringify({ tokens, generate }) });
  if (res.status !== 200) {
    await res.text();
    return 1;
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffered = '';
  let previous = sent;
  let index = 0;
  let errors = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    const lines = buffered.split('\n');
    buffered = lines.pop();
    const now = performance.now();
    for (const line of lines) {
      if ('error' in JSON.parse(line)) errors++;
      else (index++ === 0 ? timings.first : timings.next).push(now - previous);
      previous = now;
    }
  }
  if (index !== generate) errors++;
  return errors;
}

/** One client: sessions of a prompt and three follow-ups, until `deadline`. */
async function client(base, seed, deadline, timings) {
  let errors = 0;
  let state = seed;
  const token = () => (state = (state * 1103515245 + 12345) % 2147483648) % VOCAB;
  while (performance.now() < deadline) {
    const { id } = await (await fetch(`${base}/sessions`, { method: 'POST' })).json();
    for (let r = 0; r < 4 && performance.now() < deadline; r++) {
      errors += await request(base, id, Array.from({ length: r === 0 ? promptLength : 8 }, token), timings);
    }
    await (await fetch(`${base}/sessions/${id}`, { method: 'DELETE' })).text();
  }
  return errors;
}

const percentile = (sorted, p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : NaN);

const rows = [];
let backend = '';
for (const [dtype, mode] of dtypes.flatMap((d) => values.modes.split(',').map((m) => [d, m]))) {
  const { base, child } = await startChild(mode === 'batcher', dtype);
  try {
    for (const count of values.sessions.split(',').map(Number)) {
      await fetch(`${base}/stats?reset=1`).then((r) => r.json());
      const timings = { first: [], next: [] };
      const start = performance.now();
      const errors = (await Promise.all(Array.from({ length: count }, (_, c) => client(base, c + 1, start + seconds * 1000, timings)))).reduce((a, b) => a + b, 0);
      const elapsed = (performance.now() - start) / 1000;
      const stats = await fetch(`${base}/stats`).then((r) => r.json());
      backend = `${stats.backend}, ${stats.threads} threads`;
      const all = [...timings.first, ...timings.next].sort((a, b) => a - b);
      const first = [...timings.first].sort((a, b) => a - b);
      if (stats.dtype !== dtype) throw new Error(`the server runs ${stats.dtype} KV pages, not ${dtype}`);
      rows.push({ dtype, mode, count, tokensPerSecond: all.length / elapsed, p50: percentile(all, 50), p99: percentile(all, 99), first: percentile(first, 50), loop: stats.loopDelayMs.p99, batch: stats.batches?.meanCalls, errors });
    }
  } finally {
    child.kill();
  }
}

console.log(`\n${backend}; prompt ${promptLength} tokens, then 3 x 8 more, ${generate} generated per request; ${seconds} s per row (loopback)\n`);
console.log('| sessions | mode | KV pages | tokens/s | token p50 ms | token p99 ms | first token p50 ms | mean batch | event-loop delay p99 ms | errors |');
console.log('|---:|---|---|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  console.log(`| ${r.count} | ${r.mode} | ${r.dtype} | ${r.tokensPerSecond.toFixed(0)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.first.toFixed(1)} | ${r.batch === undefined ? '-' : r.batch.toFixed(1)} | ${r.loop.toFixed(1)} | ${r.errors} |`);
}
