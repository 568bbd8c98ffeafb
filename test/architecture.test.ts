// The shape of the code base, checked: no import cycle among src/ files (type-only imports
// included), and the compiled code that workers and the CLI run is as new as src/.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = new URL('..', import.meta.url).pathname;
const src = join(root, 'src');

function files(dir: string, ext: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name), ext) : e.name.endsWith(ext) ? [join(dir, e.name)] : []));
}

/** Every relative import and re-export of a file (static, dynamic and `import type` alike), as .ts paths. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specifiers = [...text.matchAll(/(?:import|export)\s[^'"]*?from\s+'(\.[^']+)'|import\(\s*'(\.[^']+)'\s*\)/g)].map((m) => m[1] ?? m[2]);
  return specifiers.map((s) => resolve(dirname(file), s).replace(/\.js$/, '.ts'));
}

/** The first cycle found by depth-first search, as a list of files, or undefined. */
function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string): string[] | undefined => {
    if (state.get(node) === 'done') return undefined;
    if (state.get(node) === 'open') return [...stack.slice(stack.indexOf(node)), node];
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    stack.pop();
    state.set(node, 'done');
    return undefined;
  };
  for (const node of graph.keys()) {
    const cycle = visit(node);
    if (cycle) return cycle;
  }
  return undefined;
}

describe('architecture', () => {
  it('has no import cycle in src/, type-only imports included', () => {
    const graph = new Map(files(src, '.ts').map((f) => [f, importsOf(f)]));
    expect(graph.size).toBeGreaterThan(20);
    const cycle = findCycle(graph);
    expect(cycle?.map((f) => relative(root, f)).join(' -> ')).toBeUndefined();
  });

  it('finds a planted cycle (the check itself works)', () => {
    const graph = new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', []]]);
    expect(findCycle(graph)).toEqual(['a', 'b', 'c', 'a']);
  });

  it('runs workers from a dist/ compiled after the last edit of src/', () => {
    const newest = (list: string[]): number => Math.max(...list.map((f) => statSync(f).mtimeMs));
    expect(newest(files(join(root, 'dist'), '.js'))).toBeGreaterThanOrEqual(newest(files(src, '.ts')));
  });
});
