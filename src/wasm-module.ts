// The WASM boundary, and the only file that knows about @assemblyscript/loader (deprecated upstream,
// so it stays in here). It finds the two builds of assembly/ (simd, relaxed-simd), picks the best one
// this runtime validates, compiles each at most once per process, and instantiates it over a memory
// that the caller owns: every build imports one shared WebAssembly.Memory, so worker threads can run
// the same kernels over the same bytes.
import { readFileSync } from 'node:fs';
import { instantiateSync } from '@assemblyscript/loader';
import { AttentionError } from './errors.js';

export type WasmBuild = 'wasm-relaxed-simd' | 'wasm-simd';

/** The kernels' exports, with the signatures of assembly/index.ts (pointers are byte offsets). */
export interface Kernels {
  heap_base(): number;
  f32_gemm(m: number, n: number, k: number, a: number, lda: number, b: number, ldb: number, transB: number, c: number, ldc: number, scratch: number): void;
  f32_gemm_scratch_bytes(): number;
  f32_softmax_rows(
    x: number, ldx: number, y: number, ldy: number, rows: number, cols: number,
    scale: number, cap: number, mask: number, maskKind: number, maskRowStride: number, causal: number, causalOffset: number,
  ): void;
  f32_attention(
    q: number, ldq: number, k: number, ldk: number, v: number, ldv: number, out: number, ldo: number,
    rows: number, seqKV: number, headDim: number, valueDim: number,
    scale: number, cap: number, mask: number, maskKind: number, maskRowStride: number,
    offset: number, left: number, right: number, rowStats: number, scratch: number,
  ): void;
  f32_attention_scratch_bytes(headDim: number, valueDim: number): number;
  f32_exp(x: number): number;
  copy_bytes(dst: number, src: number, bytes: number): void;
  f32_flush_subnormals(x: number, n: number): void;
}

const FILES: Record<WasmBuild, string> = {
  'wasm-relaxed-simd': 'attention-relaxed-simd.wasm',
  'wasm-simd': 'attention-simd.wasm',
};

/** Fastest first. */
export const WASM_BUILDS: readonly WasmBuild[] = ['wasm-relaxed-simd', 'wasm-simd'];

const bytesCache = new Map<WasmBuild, Uint8Array<ArrayBuffer>>();
const moduleCache = new Map<WasmBuild, WebAssembly.Module>();

function buildBytes(build: WasmBuild): Uint8Array<ArrayBuffer> {
  let bytes = bytesCache.get(build);
  if (!bytes) {
    bytes = new Uint8Array(readFileSync(new URL(`../build/${FILES[build]}`, import.meta.url)));
    bytesCache.set(build, bytes);
  }
  return bytes;
}

/** Whether this runtime can create a shared WebAssembly.Memory (the threads feature). */
export function sharedMemorySupported(): boolean {
  try {
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    return true;
  } catch {
    return false;
  }
}

/** Whether this runtime validates the given build (relaxed SIMD: Node 22+, or Node 20 with a flag). */
export function buildSupported(build: WasmBuild): boolean {
  return sharedMemorySupported() && WebAssembly.validate(buildBytes(build));
}

/** The fastest build this runtime validates, or undefined. */
export function bestBuild(): WasmBuild | undefined {
  return WASM_BUILDS.find(buildSupported);
}

/** The compiled module of a build, compiled once per process. */
export function compiledModule(build: WasmBuild): WebAssembly.Module {
  let module = moduleCache.get(build);
  if (!module) {
    if (!buildSupported(build)) {
      throw new AttentionError('UNSUPPORTED', `this runtime cannot run the ${build} build (WebAssembly SIMD and shared memory are needed)`);
    }
    module = new WebAssembly.Module(buildBytes(build));
    moduleCache.set(build, module);
  }
  return module;
}

/** Instantiates a compiled build over `memory`; the kernels never allocate, so no runtime is needed. */
export function instantiateKernels(module: WebAssembly.Module, memory: WebAssembly.Memory): Kernels {
  const { exports } = instantiateSync<Record<string, unknown>>(module, { env: { memory } });
  return exports as unknown as Kernels;
}
