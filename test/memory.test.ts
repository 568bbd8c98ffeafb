// What a long run of small calls costs: nothing kept per call. The allocator's block table creates
// no JS object per alloc or release (a Map there kept young garbage alive: new space grew to its
// 16 MiB cap and RSS by about 20 MiB over 10 000 tiny calls), checked in a child process so that
// the test runner's own heap does not count. Not a timing test: sizes only.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { BlockTable } from '../src/memory/block-table.js';
import { rng } from './helpers.js';

describe('memory over many calls', () => {
  it('10 000 tiny wasm calls keep new space small and RSS flat', () => {
    const child = new URL('./fixtures/tiny-calls.mjs', import.meta.url).pathname;
    const result = JSON.parse(execFileSync(process.execPath, [child], { encoding: 'utf8', timeout: 120_000 }));
    expect(result.usedBytes).toBe(0);
    expect(result.peakNewSpaceMiB).toBeLessThanOrEqual(8);
    expect(result.rssGrowthMiB).toBeLessThan(12);
  });

  it('the block table agrees with a Map over random inserts and removals', () => {
    const random = rng(9);
    const table = new BlockTable();
    const map = new Map<number, number[]>();
    for (let step = 0; step < 100_000; step++) {
      const live = [...map.keys()];
      if (live.length > 0 && (random() < 0.5 || live.length > 2000)) {
        const key = live[Math.floor(random() * live.length)];
        const slot = table.find(key);
        expect([table.start(slot), table.size(slot), table.bytes(slot)]).toEqual(map.get(key));
        table.remove(slot);
        map.delete(key);
        expect(table.find(key)).toBe(-1);
      } else {
        const key = 64 * (1 + Math.floor(random() * 1e6));
        if (map.has(key)) continue;
        const value = [key - 64, 128 + step, step];
        table.set(key, value[0], value[1], value[2]);
        map.set(key, value);
      }
    }
    for (const [key, value] of map) {
      const slot = table.find(key);
      expect([table.start(slot), table.size(slot), table.bytes(slot)]).toEqual(value);
    }
  });
});
