// The package in a real browser: Debian's Chromium, headless, driven by playwright-core, on a page
// served from loopback with and without the cross-origin isolation headers. Run by `npm run
// test:browser` (.ci/run installs Chromium first).
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve } from './serve.js';

const root = new URL('../..', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
let browser: Awaited<ReturnType<typeof chromium.launch>>;

beforeAll(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}, 60_000);
afterAll(async () => browser?.close());

async function runPage(isolated: boolean): Promise<Record<string, unknown>> {
  const server = await serve(root, isolated);
  const page = await browser.newPage();
  try {
    await page.goto(`http://127.0.0.1:${server.port}/test/browser/page.html`);
    await page.waitForFunction(() => (window as unknown as { result?: unknown }).result !== undefined, undefined, { timeout: 30_000 });
    return await page.evaluate(() => (window as unknown as { result: Record<string, unknown> }).result);
  } finally {
    await page.close();
    await server.close();
  }
}

describe('in Chromium', () => {
  it('a cross-origin-isolated page runs the shared-memory build on worker threads and agrees with js', async () => {
    const result = await runPage(true);
    expect(result.error).toBeUndefined();
    expect(result.crossOriginIsolated).toBe(true);
    expect(result.sharedMemory).toBe(true);
    expect(result.pooledThreads).toBe(2);
    expect(result.sameBits).toBe(true);
    expect(['wasm-simd', 'wasm-relaxed-simd']).toContain(result.backend);
    expect(result.maxError as number).toBeLessThan(1e-5);
    expect(result.poolSteps).toBe(6);
    expect(result.poolError as number).toBeLessThan(1e-5);
  });

  it('a page without isolation falls back to the unshared build, single thread, instead of failing', async () => {
    const result = await runPage(false);
    expect(result.error).toBeUndefined();
    expect(result.crossOriginIsolated).toBe(false);
    expect(result.sharedMemory).toBe(false);
    expect(['wasm-simd', 'wasm-relaxed-simd']).toContain(result.backend);
    expect(result.threads).toBe(1);
    expect(result.pooledThreads).toBe(1);
    expect(result.sameBits).toBe(true);
    expect(result.maxError as number).toBeLessThan(1e-5);
    expect(result.poolSteps).toBe(6);
    expect(result.poolError as number).toBeLessThan(1e-5);
  });
});
