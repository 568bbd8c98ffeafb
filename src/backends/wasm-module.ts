// The WASM boundary, and the only file that knows about @assemblyscript/loader (deprecated upstream,
// so it stays in here). It finds the two builds of assembly/ (simd, relaxed-simd), picks the best one
// this runtime validates, compiles each at most once per process, and instantiates it over a memory
// that the caller owns: every build imports one shared WebAssembly.Memory, so worker threads can run
// the same kernels over the same bytes.
import { instantiateSync } from '@assemblyscript/loader';
import { AttentionError } from '../errors.js';
import type { WasmBuild } from '../backend.js';
import { isNode, nodeFs } from '../platform.js';
import type { Kernels } from './kernels.js';

const FILES: Record<WasmBuild, string> = {
  'wasm-relaxed-simd': 'attention-relaxed-simd',
  'wasm-simd': 'attention-simd',
};

/** Fastest first. */
export const WASM_BUILDS: readonly WasmBuild[] = ['wasm-relaxed-simd', 'wasm-simd'];

// Each build comes twice: over a shared memory (threads), and over an unshared one for runtimes
// without SharedArrayBuffer (a browser page that is not cross-origin isolated).
const bytesCache = new Map<string, Uint8Array<ArrayBuffer>>();
const moduleCache = new Map<string, WebAssembly.Module>();
const fileOf = (build: WasmBuild): string => `${FILES[build]}${sharedMemorySupported() ? '' : '-unshared'}.wasm`;
const urlOf = (build: WasmBuild): URL => new URL(`../../build/${fileOf(build)}`, import.meta.url);

/** The bytes of a build: read from disk on Node; in a browser only once loadBuilds() fetched them. */
function buildBytes(build: WasmBuild): Uint8Array<ArrayBuffer> | undefined {
  const file = fileOf(build);
  let bytes = bytesCache.get(file);
  if (!bytes && nodeFs) {
    bytes = new Uint8Array(nodeFs.readFileSync(urlOf(build)));
    bytesCache.set(file, bytes);
  }
  return bytes;
}

/** Fetches the builds' bytes where they cannot be read synchronously (browsers; a no-op on Node). */
export async function loadBuilds(): Promise<void> {
  if (isNode) return;
  await Promise.all(WASM_BUILDS.map(async (build) => {
    if (bytesCache.has(fileOf(build))) return;
    const response = await fetch(urlOf(build));
    if (response.ok) bytesCache.set(fileOf(build), new Uint8Array(await response.arrayBuffer()));
  }));
}

/** Whether the builds' bytes are at hand (always on Node; after loadBuilds() in a browser). */
export function buildsLoaded(): boolean {
  return isNode || WASM_BUILDS.some((build) => bytesCache.has(fileOf(build)));
}

/** Whether this runtime can create a shared WebAssembly.Memory (the threads feature). */
export function sharedMemorySupported(): boolean {
  try {
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    return typeof SharedArrayBuffer !== 'undefined';
  } catch {
    return false;
  }
}

/** Whether this runtime validates the given build (relaxed SIMD: Node 22+, or Node 20 with a flag). */
export function buildSupported(build: WasmBuild): boolean {
  const bytes = buildBytes(build);
  return bytes !== undefined && WebAssembly.validate(bytes);
}

/** The fastest build this runtime validates, or undefined. */
export function bestBuild(): WasmBuild | undefined {
  return WASM_BUILDS.find(buildSupported);
}

/** The compiled module of a build, compiled once per process. */
export function compiledModule(build: WasmBuild): WebAssembly.Module {
  const file = fileOf(build);
  let module = moduleCache.get(file);
  if (!module) {
    if (!buildSupported(build)) {
      throw new AttentionError('UNSUPPORTED', `this runtime cannot run the ${build} build (WebAssembly SIMD is needed)`);
    }
    module = new WebAssembly.Module(buildBytes(build)!);
    moduleCache.set(file, module);
  }
  return module;
}

/** Instantiates a compiled build over `memory`; the kernels never allocate, so no runtime is needed. */
export function instantiateKernels(module: WebAssembly.Module, memory: WebAssembly.Memory): Kernels {
  const { exports } = instantiateSync<Record<string, unknown>>(module, { env: { memory } });
  return exports as unknown as Kernels;
}
