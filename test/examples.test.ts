// Every example runs here, so none can rot.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { createEngineSync } from '../src/index.js';

describe('examples', () => {
  it('quick-start (the README\'s) runs and agrees with the reference', () => {
    const out = execFileSync(process.execPath, [new URL('../examples/quick-start/index.js', import.meta.url).pathname], { encoding: 'utf8', timeout: 60_000 });
    expect(out).toMatch(/y dims \[1,12,128,64\], async result identical: true/);
    const error = Number(/reference: (\S+)/.exec(out)![1]);
    expect(error).toBeLessThan(1e-5);
  });

  it('transformer-block matches its float64 reference', async () => {
    const { main } = await import('../examples/transformer-block/index.js');
    expect(await main()).toBeLessThan(1e-5);
  });

  it('ort-interop round-trips onnxruntime tensors', async () => {
    const { main } = await import('../examples/ort-interop/index.js');
    const { yTensor, yHalf } = await main();
    expect(yTensor.type).toBe('float32');
    expect(yTensor.dims).toEqual([1, 4, 6, 8]);
    expect(yHalf.type).toBe('float16');
    // onnxruntime keeps float16 as Uint16Array bits, or as a Float16Array where the runtime has one (Node 24)
    expect(['Uint16Array', 'Float16Array']).toContain(yHalf.data.constructor.name);
  });

  it('server serves decode steps that equal attention over the whole sequence', async () => {
    const { startServer } = await import('../examples/server/server.js');
    const server = await startServer({ backend: 'wasm', threads: 2 });
    const base = `http://127.0.0.1:${server.port}`;
    const post = (path: string, body: unknown) => fetch(base + path, { method: 'POST', body: JSON.stringify(body) }).then((r) => r.json());
    try {
      const { id } = await post('/sessions', { heads: 4, kvHeads: 2, headDim: 8, maxSeq: 64 });
      const steps = 10;
      const value = (i: number) => Math.sin(i * 0.7);
      const q = Array.from({ length: steps * 32 }, (_, i) => value(i));
      const k = Array.from({ length: steps * 16 }, (_, i) => value(i + 1000));
      const v = Array.from({ length: steps * 16 }, (_, i) => value(i + 2000));
      let last: { y: number[]; length: number } | undefined;
      for (let t = 0; t < steps; t++) {
        last = await post(`/sessions/${id}/step`, { q: q.slice(t * 32, t * 32 + 32), k: k.slice(t * 16, t * 16 + 16), v: v.slice(t * 16, t * 16 + 16) });
        if (t === 4) {
          // a refused step (q one float short) changes nothing: the next step is still position 6
          const refused = await fetch(`${base}/sessions/${id}/step`, { method: 'POST', body: JSON.stringify({ q: q.slice(0, 31), k: k.slice(0, 16), v: v.slice(0, 16) }) });
          expect(refused.status).toBe(400);
          expect((await refused.json()).code).toBe('INVALID_TENSOR');
        }
      }
      expect(last!.length).toBe(steps);
      // the last step against one attention call over the whole sequence ([1, n, H·D] → [1, H, n, D])
      const heads = (flat: number[], h: number) => {
        const out = new Float32Array(flat.length);
        for (let t = 0; t < steps; t++) for (let hd = 0; hd < h; hd++) for (let d = 0; d < 8; d++) out[(hd * steps + t) * 8 + d] = flat[t * h * 8 + hd * 8 + d];
        return { data: out, dims: [1, h, steps, 8] };
      };
      const full = createEngineSync({ backend: 'js' }).attention(heads(q, 4), heads(k, 2), heads(v, 2), { causal: true });
      for (let hd = 0; hd < 4; hd++) {
        for (let d = 0; d < 8; d++) expect(last!.y[hd * 8 + d]).toBeCloseTo(full.data[(hd * steps + steps - 1) * 8 + d], 5);
      }
      const stats = await (await fetch(`${base}/stats`)).json();
      expect(stats.sessions).toBe(1);
      expect((await fetch(`${base}/nowhere`)).status).toBe(404);
    } finally {
      await server.close();
    }
  });

  it('the server load test reports throughput, latency and event-loop delay', () => {
    const out = execFileSync(process.execPath, [new URL('../examples/server/load-test.js', import.meta.url).pathname, '--seconds', '1', '--connections', '4', '--backends', 'wasm,js'], { encoding: 'utf8', timeout: 120_000 });
    const rows = out.split('\n').filter((l) => /^\| (wasm|js)/.test(l));
    expect(rows).toHaveLength(2);
    for (const row of rows) {
      const cells = row.split('|').map((c) => c.trim());
      expect(Number(cells[2])).toBeGreaterThan(0); // requests/s
      expect(Number(cells[5])).toBe(0); // errors
    }
  }, 180_000);
});
