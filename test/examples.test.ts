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

  it('train: a small transformer learns to copy; the loss halves within 150 steps (seeded), the SVG curve is drawn', async () => {
    const { train, lossCurve } = await import('../examples/train/index.js');
    const engine = createEngineSync({ backend: 'wasm-simd' });
    try {
      const { losses, accuracy } = train({ steps: 150, seed: 1, engine });
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      expect(mean(losses.slice(-10))).toBeLessThan(mean(losses.slice(0, 10)) / 2);
      // chance is 1 in 16: the copies are being fetched by attention
      expect(accuracy).toBeGreaterThan(0.3);
      expect(lossCurve(losses)).toMatch(/^<svg[^]*<polyline[^]*<\/svg>$/);
    } finally {
      engine.dispose();
    }
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

  it('server streams the greedy tokens of the model run directly, batched or not, with each KV page dtype, and refuses bad requests with 4xx', async () => {
    const { startServer } = await import('../examples/server/server.js');
    // @ts-expect-error plain-JS example without types
    const { createModel, greedyDecode } = await import('../examples/decoder/model.js');
    // the model run directly: two requests of one session (the last generated token goes in first on the next)
    const runDirect = (kvDtype: string) => {
      const engine = createEngineSync({ backend: 'wasm-simd', threads: 1 });
      const model = createModel(engine, { kvDtype });
      const direct = model.session();
      const first: number[] = greedyDecode(direct, [11, 22, 33, 44, 55], 4, 4096).tokens;
      const second: number[] = greedyDecode(direct, [first.at(-1), 66, 77], 3, 4096).tokens;
      model.dispose();
      engine.dispose();
      return { first, second };
    };

    await expect(startServer({ dtype: 'bfloat16' })).rejects.toThrow(/config.kvDtype must be one of float32, float16, int8/);
    for (const { batcher, dtype } of [{ batcher: true, dtype: undefined }, { batcher: false, dtype: undefined }, { batcher: true, dtype: 'int8' }]) {
      const { first, second } = runDirect(dtype ?? 'float32');
      const server = await startServer({ backend: 'wasm-simd', threads: 2, batcher, dtype, limits: { maxSessions: 3, maxSessionTokens: 64 } });
      const base = `http://127.0.0.1:${server.port}`;
      const post = async (path: string, body?: unknown) => {
        const res = await fetch(base + path, { method: 'POST', body: JSON.stringify(body ?? {}) });
        return { status: res.status, text: await res.text() };
      };
      const tokensOf = (text: string) => text.trim().split('\n').map((line) => JSON.parse(line).token);
      try {
        const ids = [];
        for (let i = 0; i < 3; i++) ids.push(JSON.parse((await post('/sessions')).text).id);
        expect((await post('/sessions')).status).toBe(429);
        // three sessions at once (one batch with the batcher), each as the model alone
        const streams = await Promise.all(ids.map((id) => post(`/sessions/${id}/tokens`, { tokens: [11, 22, 33, 44, 55], generate: 4 })));
        for (const { status, text } of streams) {
          expect(status).toBe(200);
          expect(tokensOf(text)).toEqual(first);
        }
        expect(tokensOf((await post(`/sessions/${ids[0]}/tokens`, { tokens: [66, 77], generate: 3 })).text)).toEqual(second);
        // refusals change nothing
        expect((await post(`/sessions/${ids[1]}/tokens`, { tokens: [4096], generate: 1 })).status).toBe(400);
        expect((await post(`/sessions/${ids[1]}/tokens`, { tokens: [1], generate: 1.5 })).status).toBe(400);
        expect((await post(`/sessions/${ids[1]}/tokens`, { tokens: Array(60).fill(1), generate: 1 })).status).toBe(413);
        expect((await post(`/sessions/${ids[1]}/tokens`, { tokens: Array(20000).fill(1), generate: 1 })).status).toBe(413);
        expect((await post('/sessions/99/tokens', { tokens: [1], generate: 1 })).status).toBe(404);
        // a second request while the first streams (its headers are out) is refused; the first goes on
        const streaming = await fetch(`${base}/sessions/${ids[1]}/tokens`, { method: 'POST', body: JSON.stringify({ tokens: [66, 77], generate: 3 }) });
        expect((await post(`/sessions/${ids[1]}/tokens`, { tokens: [1], generate: 1 })).status).toBe(409);
        expect(tokensOf(await streaming.text())).toEqual(second);
        expect((await fetch(`${base}/sessions/${ids[2]}`, { method: 'DELETE' })).status).toBe(200);
        const stats = await (await fetch(`${base}/stats`)).json();
        expect(stats.sessions).toBe(2);
        expect(stats.batcher).toBe(batcher);
        expect(stats.dtype).toBe(dtype ?? 'float32');
        expect(stats.pool.pool.dtype).toBe(dtype ?? 'float32');
        expect(stats.tokens.generated).toBe(3 * 4 + 3 + 3);
        if (batcher) expect(stats.batches.meanCalls).toBeGreaterThan(1);
        expect(stats.pool.pagesHeld).toBe(2); // two sessions of 12 positions, a page of 16 each
        expect((await fetch(`${base}/nowhere`)).status).toBe(404);
      } finally {
        await server.close();
      }
    }
  }, 120_000);

  it('the server load test reports tokens/s, per-token latency and event-loop delay, batched and not, per KV page dtype', () => {
    const out = execFileSync(process.execPath, [new URL('../examples/server/load-test.js', import.meta.url).pathname, '--sessions', '4', '--seconds', '1', '--generate', '4', '--dtypes', 'float32,int8'], { encoding: 'utf8', timeout: 120_000 });
    const rows = out.split('\n').filter((l) => /^\| \d+ \| (batcher|no-batcher) \|/.test(l));
    expect(rows).toHaveLength(4);
    const cellsOf = rows.map((row) => row.split('|').map((c) => c.trim()));
    expect(cellsOf.map((cells) => cells[3])).toEqual(['float32', 'float32', 'int8', 'int8']);
    expect(cellsOf.map((cells) => cells[2])).toEqual(['batcher', 'no-batcher', 'batcher', 'no-batcher']);
    for (const cells of cellsOf) {
      expect(Number(cells[4])).toBeGreaterThan(0); // tokens/s
      expect(Number(cells[10])).toBe(0); // errors
    }
  }, 180_000);
});
