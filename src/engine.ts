// The public engine: validates every call into a plan (plan.ts), then runs it on the backend it was
// created with, the wasm kernels or the pure-JS path. Both produce the same numbers within float32
// rounding; the float64 reference (reference.ts) is the oracle for both.
import { AttentionError } from './errors.js';
import { cores } from './platform.js';
import { attentionJs, matmulJs, softmaxJs } from './js-backend.js';
import {
  type AttentionOptions, type AttentionPlan, type MatmulOptions, type MatmulPlan, type SoftmaxOptions, planAttention, planMatmul, planSoftmax,
} from './plan.js';
import { type Tensor, type TensorLike, checkDims, checkOptionsObject, describe, sizeOf } from './tensor.js';
import { KVCache, type KVCacheOptions } from './kv-cache.js';
import { type MultiHeadOptions, type MultiHeadWeights, multiHeadAttention } from './layer.js';
import { type OnnxAttentionAttributes, type OnnxAttentionInputs, type OnnxAttentionOutputs, onnxAttention } from './onnx.js';
import { attentionScores } from './scores.js';
import { type AttentionResult, WasmBackend } from './wasm-backend.js';
import { type WasmBuild, WASM_BUILDS, bestBuild, buildSupported, buildsLoaded, compiledModule, loadBuilds, sharedMemorySupported } from './wasm-module.js';

export type BackendName = WasmBuild | 'js';

/** What attention returns: the output, and what was asked for besides. */
export interface AttentionOutput extends Tensor {
  /** With returnWeights: softmax of the scores, [B, Hq, Sq, Skv]. */
  weights?: Tensor;
  /** With returnLogSumExp: log(sum_j exp(score_j)) per query row, [B, Hq, Sq]. */
  logSumExp?: Tensor;
}

/** A tensor from engine.tensor(): its data is a view of the engine's memory (wasm backends). */
export interface ResidentTensor {
  data: Float32Array | Uint8Array;
  dims: number[];
  /** Gives the memory back; the view must not be used by ops afterwards. */
  release(): void;
}

export interface EngineOptions {
  /**
   * 'auto' (default): the fastest wasm build this runtime validates, else 'js'. 'wasm': the fastest
   * wasm build, and an error if none runs here. 'js': the pure-JS path. 'wasm-simd' or
   * 'wasm-relaxed-simd': exactly that build (an error if it cannot run here).
   */
  backend?: 'auto' | 'wasm' | BackendName;
  /**
   * Threads that large calls run on (default: the machine's cores, at most 4, like onnxruntime-web).
   * Sync calls use the calling thread plus threads - 1 workers (on Node; a browser's main thread may
   * not block, so there sync calls run alone); async calls use `threads` workers and leave the
   * calling thread free. 1: no workers at all (async calls then run on the calling thread).
   */
  threads?: number;
  /** Cap on the WASM linear memory this engine may grow to, in bytes (default 4 GiB). */
  maxMemoryBytes?: number;
}

const MAX_WASM_BYTES = 65536 * 65536;

function chooseBackend(requested: unknown): BackendName {
  if (requested !== 'js' && !buildsLoaded()) {
    throw new AttentionError('UNSUPPORTED', 'in a browser the .wasm builds are fetched asynchronously: create the engine with createEngine()', 'options.backend');
  }
  switch (requested ?? 'auto') {
    case 'auto':
      return bestBuild() ?? 'js';
    case 'wasm': {
      const build = bestBuild();
      if (!build) throw new AttentionError('UNSUPPORTED', 'backend "wasm" needs WebAssembly SIMD, which this runtime lacks', 'options.backend');
      return build;
    }
    case 'js':
      return 'js';
    case 'wasm-simd':
    case 'wasm-relaxed-simd':
      if (!buildSupported(requested as WasmBuild)) {
        const hint = requested === 'wasm-relaxed-simd' ? ' (Node 20 needs --experimental-wasm-relaxed-simd)' : '';
        throw new AttentionError('UNSUPPORTED', `this runtime cannot run the ${String(requested)} build${hint}`, 'options.backend');
      }
      return requested as WasmBuild;
    default:
      throw new AttentionError('INVALID_OPTION', `options.backend must be one of auto, wasm, js, ${WASM_BUILDS.join(', ')}; got ${describe(requested)}`, 'options.backend');
  }
}

function checkEngineOptions(options: unknown): { backend: BackendName; threads: number; maxMemoryBytes: number } {
  if (options !== undefined && (options === null || typeof options !== 'object')) {
    throw new AttentionError('INVALID_OPTION', `options must be an object, got ${describe(options)}`, 'options');
  }
  const opts = (options ?? {}) as EngineOptions;
  const requested = opts.threads ?? Math.min(4, cores());
  if (!Number.isInteger(requested) || requested < 1) {
    throw new AttentionError('INVALID_OPTION', `options.threads must be an integer >= 1, got ${describe(opts.threads)}`, 'options.threads');
  }
  // worker threads need a shared memory (in a browser: a cross-origin-isolated page)
  const threads = sharedMemorySupported() ? requested : 1;
  const maxMemoryBytes = opts.maxMemoryBytes ?? MAX_WASM_BYTES;
  if (typeof maxMemoryBytes !== 'number' || !Number.isFinite(maxMemoryBytes) || maxMemoryBytes < 65536 * 32 || maxMemoryBytes > MAX_WASM_BYTES) {
    throw new AttentionError('INVALID_OPTION', `options.maxMemoryBytes must be between 2 MiB and 4 GiB, got ${describe(opts.maxMemoryBytes)}`, 'options.maxMemoryBytes');
  }
  return { backend: chooseBackend(opts.backend), threads, maxMemoryBytes };
}

/** Computes attention, matmul and softmax on one backend. Create with createEngine / createEngineSync. */
export class Engine {
  /** The backend every call of this engine runs on. */
  readonly backend: BackendName;
  /** Threads that large calls run on (see EngineOptions.threads). */
  readonly threads: number;
  private wasm: WasmBackend | undefined;
  private disposed = false;

  /** @internal use createEngine or createEngineSync */
  constructor(backend: BackendName, threads: number, wasm: WasmBackend | undefined) {
    this.backend = backend;
    this.threads = threads;
    this.wasm = wasm;
  }

  private live(): WasmBackend | undefined {
    if (this.disposed) throw new AttentionError('DISPOSED', 'this engine was disposed');
    return this.wasm;
  }

  /**
   * Scaled dot-product attention: softmax(q·kᵀ·scale + mask) · v along the keys.
   * q [B, Hq, Sq, Dk], k [B, Hkv, Skv, Dk], v [B, Hkv, Skv, Dv] → [B, Hq, Sq, Dv]. Query head h reads
   * kv head floor(h / (Hq/Hkv)). A query row that sees no key gives zeros.
   */
  attention(q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: AttentionOptions): AttentionOutput {
    const wasm = this.live();
    return this.runAttention(planAttention(q, k, v, options), q.data, k.data, v.data, wasm);
  }

  /** @internal runs a checked plan (also for the KV cache and the ONNX entry point). */
  runAttention(plan: AttentionPlan, q: Float32Array, k: Float32Array, v: Float32Array, wasm = this.live()): AttentionOutput {
    let result: AttentionResult;
    if (wasm) {
      result = wasm.attention(plan, q, k, v);
    } else {
      const out = plan.outBuffer ?? new Float32Array(sizeOf(plan.outDims));
      const logSumExp = plan.returnLogSumExp ? new Float32Array(plan.batch * plan.qHeads * plan.seqQ) : undefined;
      attentionJs(plan, q, k, v, out, logSumExp);
      result = { out, logSumExp };
    }
    return this.attentionOutput(plan, q, k, result);
  }

  /** @internal runAttention on the workers (the KV cache's attentionAsync). */
  async runAttentionAsync(plan: AttentionPlan, q: Float32Array, k: Float32Array, v: Float32Array): Promise<AttentionOutput> {
    const wasm = this.live();
    if (!wasm) return this.runAttention(plan, q, k, v, wasm);
    return this.attentionOutput(plan, q, k, await wasm.attentionAsync(plan, q, k, v));
  }

  private attentionOutput(plan: AttentionPlan, q: Float32Array, k: Float32Array, result: AttentionResult): AttentionOutput {
    const output: AttentionOutput = { data: result.out, dims: plan.outDims };
    if (result.logSumExp) output.logSumExp = { data: result.logSumExp, dims: [plan.batch, plan.qHeads, plan.seqQ] };
    if (plan.returnWeights) {
      output.weights = { data: attentionScores(plan, q, k, 3), dims: [plan.batch, plan.qHeads, plan.seqQ, plan.seqKV] };
    }
    return output;
  }

  /**
   * attention() on the worker threads: resolves with the same bits as the sync call, leaving the event
   * loop free while it runs. Calls queue and run one at a time; the arguments are validated (and a bad
   * call rejected) before anything runs, and inputs are copied in before the call returns its promise,
   * so the caller may reuse its arrays at once.
   */
  async attentionAsync(q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: AttentionOptions): Promise<AttentionOutput> {
    this.live();
    return this.runAttentionAsync(planAttention(q, k, v, options), q.data, k.data, v.data);
  }

  /** matmul() on the worker threads; see attentionAsync. */
  async matmulAsync(a: TensorLike<Float32Array>, b: TensorLike<Float32Array>, options?: MatmulOptions): Promise<Tensor> {
    const wasm = this.live();
    const plan = planMatmul(a, b, options);
    if (!wasm) return this.runMatmul(plan, a.data, b.data, wasm);
    return { data: await wasm.matmulAsync(plan, a.data, b.data), dims: plan.outDims };
  }

  /** [..., M, K] · [..., K, N] → [..., M, N] (b as [..., N, K] with transposeB), batch dims broadcast. */
  matmul(a: TensorLike<Float32Array>, b: TensorLike<Float32Array>, options?: MatmulOptions): Tensor {
    const wasm = this.live();
    return this.runMatmul(planMatmul(a, b, options), a.data, b.data, wasm);
  }

  private runMatmul(plan: MatmulPlan, a: Float32Array, b: Float32Array, wasm: WasmBackend | undefined): Tensor {
    if (wasm) return { data: wasm.matmul(plan, a, b), dims: plan.outDims };
    const data = plan.outBuffer ?? new Float32Array(plan.aOffsets.length * plan.m * plan.n);
    matmulJs(plan, a, b, data);
    return { data, dims: plan.outDims };
  }

  /** Softmax along the last axis of scale·x + mask (causal: column j dropped from row i when j > i). */
  softmax(x: TensorLike<Float32Array>, options?: SoftmaxOptions): Tensor {
    const wasm = this.live();
    const plan = planSoftmax(x, options);
    let data: Float32Array;
    if (wasm) {
      data = wasm.softmax(plan, x.data);
    } else {
      data = plan.outBuffer ?? new Float32Array(x.data.length);
      softmaxJs(plan, x.data, data);
    }
    return { data, dims: plan.outDims };
  }

  /**
   * A tensor whose `data` lives in the engine's WASM memory, zero-filled: fill it in place and pass
   * it to any op (as an input or as `out`) with no copy. The view stays valid while memory grows;
   * call `release()` when done (later use of the view in an op is refused). On the js backend it is
   * an ordinary array. `type`: 'float32' (default) or 'bool' (a Uint8Array, for masks).
   */
  tensor(dims: readonly number[], options?: { type?: 'float32' | 'bool' }): ResidentTensor {
    const wasm = this.live();
    const shape = checkDims(dims, 'dims');
    const type = checkOptionsObject(options, 'options').type ?? 'float32';
    if (type !== 'float32' && type !== 'bool') {
      throw new AttentionError('INVALID_OPTION', `options.type must be 'float32' or 'bool', got ${describe(type)}`, 'options.type');
    }
    const size = sizeOf(shape);
    if (!wasm) {
      return { data: type === 'bool' ? new Uint8Array(size) : new Float32Array(size), dims: shape, release: () => {} };
    }
    return { ...wasm.tensor(shape, type === 'bool'), dims: shape };
  }

  /** ONNX's Attention operator (opsets 23 and 24) with its exact rules; see onnx.ts. */
  onnxAttention(inputs: OnnxAttentionInputs, attributes?: OnnxAttentionAttributes): OnnxAttentionOutputs {
    this.live();
    return onnxAttention(this, inputs, attributes);
  }

  /**
   * The multi-head attention layer: projections by wq, wk, wv (+ biases), attention over the heads
   * (GQA with kvHeads, cross-attention with context, decoding with cache), and the output projection
   * wo. x [B, S, E] → [B, S, Eout]. See layer.ts.
   */
  multiHeadAttention(x: TensorLike<Float32Array>, weights: MultiHeadWeights, options: MultiHeadOptions): Tensor {
    this.live();
    return multiHeadAttention(this, x, weights, options);
  }

  /** A KV cache whose keys and values live in this engine's memory; see KVCache. */
  kvCache(options: KVCacheOptions): KVCache {
    this.live();
    return new KVCache(this, options);
  }

  /** Bytes of WASM memory reserved and in use (both 0 on the js backend). */
  stats(): { reservedBytes: number; usedBytes: number } {
    const wasm = this.live();
    return wasm ? wasm.heap.stats() : { reservedBytes: 0, usedBytes: 0 };
  }

  /** Frees the engine's memory; every later call throws an AttentionError with code DISPOSED. */
  dispose(): void {
    this.disposed = true;
    this.wasm?.dispose();
    this.wasm = undefined;
  }
}

/** Creates an engine synchronously (compiles the wasm build on first use in this process). */
export function createEngineSync(options?: EngineOptions): Engine {
  const { backend, threads, maxMemoryBytes } = checkEngineOptions(options);
  const wasm = backend === 'js' ? undefined : new WasmBackend(backend, maxMemoryBytes, threads);
  return new Engine(backend, threads, wasm);
}

/** Creates an engine on the fastest backend this runtime supports (see EngineOptions.backend). */
export async function createEngine(options?: EngineOptions): Promise<Engine> {
  await loadBuilds();
  const { backend, threads, maxMemoryBytes } = checkEngineOptions(options);
  if (backend === 'js') return new Engine(backend, threads, undefined);
  const module = await compileAsync(backend);
  return new Engine(backend, threads, new WasmBackend(backend, maxMemoryBytes, threads, module));
}

async function compileAsync(build: WasmBuild): Promise<WebAssembly.Module> {
  // compiledModule caches; compiling on a later tick keeps createEngine from blocking its caller's turn.
  await Promise.resolve();
  return compiledModule(build);
}
