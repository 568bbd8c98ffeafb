// Load test of the example server (loopback only, bounded in time): for each backend it starts the
// server in a child process, opens a decode session (Hq 32, Hkv 8, D 128) with a 1024-position
// prefill, and drives POST /sessions/1/step with autocannon. Reports requests per second, p50/p99
// latency and the server's event-loop delay.
//   node examples/server/load-test.js [--seconds 5] [--connections 8] [--backends wasm,js]
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '5' }, connections: { type: 'string', default: '8' }, backends: { type: 'string', default: 'wasm,js' } } });
const [heads, kvHeads, headDim] = [32, 8, 128];
const floats = (n, phase) => Array.from({ length: n }, (_, i) => Number(Math.sin(i + phase).toFixed(4)));

async function run(backend) {
  const server = spawn(process.execPath, [new URL('./server.js', import.meta.url).pathname, '--backend', backend], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    server.stdout.on('data', (d) => {
      const m = /listening (\d+)/.exec(String(d));
      if (m) resolve(Number(m[1]));
    });
    server.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const base = `http://127.0.0.1:${port}`;
  const post = (path, body) => fetch(base + path, { method: 'POST', body: JSON.stringify(body) }).then((r) => r.json());
  try {
    const { id } = await post('/sessions', { heads, kvHeads, headDim, maxSeq: 16384 });
    for (let t = 0; t < 1024; t++) await post(`/sessions/${id}/step`, { q: floats(heads * headDim, t), k: floats(kvHeads * headDim, t + 1), v: floats(kvHeads * headDim, t + 2) });
    await fetch(`${base}/stats?reset=1`);
    const result = await autocannon({
      url: `${base}/sessions/${id}/step`, method: 'POST', connections: Number(values.connections), duration: Number(values.seconds),
      body: JSON.stringify({ q: floats(heads * headDim, 7), k: floats(kvHeads * headDim, 8), v: floats(kvHeads * headDim, 9) }),
    });
    const stats = await (await fetch(`${base}/stats`)).json();
    return { backend: stats.backend, rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, errors: result.errors + result.non2xx, loop: stats.loopDelayMs };
  } finally {
    server.kill();
  }
}

const rows = [];
for (const backend of values.backends.split(',')) rows.push(await run(backend));
console.log(`\n${values.connections} connections, ${values.seconds} s per backend, decode steps over a 1024+ position cache (Hq 32, Hkv 8, D 128)\n`);
console.log('| backend | requests/s | latency p50 ms | latency p99 ms | errors | event-loop delay p99 ms | max ms |');
console.log('|---|---:|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(`| ${r.backend} | ${r.rps.toFixed(0)} | ${r.p50} | ${r.p99} | ${r.errors} | ${r.loop.p99.toFixed(2)} | ${r.loop.max.toFixed(2)} |`);
