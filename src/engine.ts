// The public engine: reads and checks every call into an op's plan (src/ops/<op>/plan.ts), then
// hands the plan to its backend (src/backends/), the wasm kernels or the pure-JS path, which runs
// any op the same way. Both produce the same numbers within float32 rounding; the float64
// reference (src/reference.ts) is the oracle for both. Features built on the ops (KV cache, the
// multi-head layer, the ONNX entry point) get the backend, never the engine.
import type { Backend, BackendName, MemoryStats, WasmBuild } from './backend.js';
import { JsBackend } from './backends/js.js';
import { WasmBackend } from './backends/wasm.js';
import { WASM_BUILDS, bestBuild, buildSupported, buildsLoaded, compiledModule, loadBuilds, sharedMemorySupported } from './backends/wasm-module.js';
import { AttentionError } from './errors.js';
import { KVCache, type KVCacheOptions } from './features/kv-cache.js';
import { KVPool, type KVPoolOptions } from './features/kv-pool.js';
import { type MultiHeadGradients, type MultiHeadOptions, type MultiHeadSaved, type MultiHeadTrainOutput, type MultiHeadWeights, multiHeadAttention, multiHeadAttentionBackward } from './features/layer.js';
import { type OnnxAttentionAttributes, type OnnxAttentionInputs, type OnnxAttentionOutputs, type OnnxAttentionRequest, onnxAttention } from './features/onnx.js';
import type { ResidentTensor } from './memory/resident.js';
import { attentionOp } from './ops/attention/index.js';
import { type AttentionOptions, type AttentionOutput, planAttention } from './ops/attention/plan.js';
import { attentionBackwardOp } from './ops/attention-backward/index.js';
import { type AttentionBackwardOptions, type AttentionGradients, planAttentionBackward } from './ops/attention-backward/plan.js';
import { matmulOp } from './ops/matmul/index.js';
import { type MatmulOptions, planMatmul } from './ops/matmul/plan.js';
import { type PackWeightsOptions, type PackedWeights, makePackedWeights, packOp, packedLength, planPack, withStorage } from './ops/matmul/packed.js';
import { rotaryOp } from './ops/rope/index.js';
import { type RotaryOptions, planRotary } from './ops/rope/plan.js';
import { softmaxOp } from './ops/softmax/index.js';
import { type SoftmaxOptions, planSoftmax } from './ops/softmax/plan.js';
import { softmaxBackwardOp } from './ops/softmax-backward/index.js';
import { type SoftmaxBackwardOptions, planSoftmaxBackward } from './ops/softmax-backward/plan.js';
import { cores } from './platform.js';
import { type Tensor, type TensorLike, checkDims, describe, readOptions } from './tensor.js';

export type { BackendName, WasmBuild };

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
/** Most threads an engine runs (the pool's control block has a word per thread). */
const MAX_THREADS = 255;

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
  const opts = readOptions(options, 'options', ['backend', 'threads', 'maxMemoryBytes']) as EngineOptions;
  const requested = opts.threads ?? Math.min(4, cores());
  if (!Number.isInteger(requested) || requested < 1 || requested > MAX_THREADS) {
    throw new AttentionError('INVALID_OPTION', `options.threads must be an integer from 1 to ${MAX_THREADS}, got ${describe(opts.threads)}`, 'options.threads');
  }
  // worker threads need a shared memory (in a browser: a cross-origin-isolated page)
  const threads = sharedMemorySupported() ? requested : 1;
  const maxMemoryBytes = opts.maxMemoryBytes ?? MAX_WASM_BYTES;
  if (typeof maxMemoryBytes !== 'number' || !Number.isFinite(maxMemoryBytes) || maxMemoryBytes < 65536 * 32 || maxMemoryBytes > MAX_WASM_BYTES) {
    throw new AttentionError('INVALID_OPTION', `options.maxMemoryBytes must be between 2 MiB and 4 GiB, got ${describe(opts.maxMemoryBytes)}`, 'options.maxMemoryBytes');
  }
  return { backend: chooseBackend(opts.backend), threads, maxMemoryBytes };
}

/** Computes attention, matmul, softmax and rotary embeddings on one backend. Create with createEngine / createEngineSync. */
export class Engine {
  /** The backend every call of this engine runs on. */
  readonly backend: BackendName;
  /** Threads that large calls run on (see EngineOptions.threads). */
  readonly threads: number;
  /** @internal the backend itself */
  readonly runtime: Backend;

  /** @internal use createEngine or createEngineSync */
  constructor(runtime: Backend) {
    this.runtime = runtime;
    this.backend = runtime.name;
    this.threads = runtime.threads;
  }

  private live(): Backend {
    this.runtime.live();
    return this.runtime;
  }

  /**
   * Scaled dot-product attention: softmax(q·kᵀ·scale + mask) · v along the keys.
   * q [B, Hq, Sq, Dk], k [B, Hkv, Skv, Dk], v [B, Hkv, Skv, Dv] → [B, Hq, Sq, Dv]. Query head h reads
   * kv head floor(h / (Hq/Hkv)). A query row that sees no key gives zeros. With options.rope, q and k
   * are first rotated (RoPE) at their positions: keys at j, queries at Skv - Sq + i unless given.
   */
  attention(q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: AttentionOptions): AttentionOutput {
    const backend = this.live();
    return backend.run(attentionOp, planAttention(q, k, v, options, backend));
  }

  /**
   * attention() on the worker threads: resolves with the same bits as the sync call, leaving the event
   * loop free while it runs. Calls queue and run one at a time; the arguments are validated (and a bad
   * call rejected) before anything runs, and arrays are copied in before the call returns its promise,
   * so the caller may reuse them at once. Resident tensors are read when the call runs, and stay
   * allocated until it settles even if released meanwhile.
   */
  async attentionAsync(q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: AttentionOptions): Promise<AttentionOutput> {
    const backend = this.live();
    return backend.runAsync(attentionOp, planAttention(q, k, v, options, backend));
  }

  /**
   * Attention's backward pass: the gradients of sum(dOut ∘ attention(q, k, v, options)) with respect to
   * q, k and v, from the forward's output `out` and its gradient `dOut` ([B, Hq, Sq, Dv] both), with the
   * forward's options (scale, softcap, causal, window, mask, rope). Pass the forward's log-sum-exp
   * (attention with returnLogSumExp) as options.logSumExp to save a forward pass. FlashAttention-2's
   * algorithm: the weights are recomputed tile by tile, never the [Sq, Skv] matrix. dk and dv sum over
   * the query heads of each kv head (GQA); masks take no gradient; with rope, dq and dk are with respect
   * to the unrotated q and k. The same bits for any thread count.
   */
  attentionBackward(
    q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>,
    out: TensorLike<Float32Array>, dOut: TensorLike<Float32Array>, options?: AttentionBackwardOptions,
  ): AttentionGradients {
    const backend = this.live();
    return backend.run(attentionBackwardOp, planAttentionBackward(q, k, v, out, dOut, options, backend));
  }

  /** attentionBackward() on the worker threads; see attentionAsync. */
  async attentionBackwardAsync(
    q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>,
    out: TensorLike<Float32Array>, dOut: TensorLike<Float32Array>, options?: AttentionBackwardOptions,
  ): Promise<AttentionGradients> {
    const backend = this.live();
    return backend.runAsync(attentionBackwardOp, planAttentionBackward(q, k, v, out, dOut, options, backend));
  }

  /**
   * [..., M, K] · [..., K, N] → [..., M, N] (a as [..., K, M] with transposeA, b as [..., N, K] with transposeB), batch dims broadcast.
   * b may be packed weights (packWeights): then every matrix of a is multiplied by them, and
   * options.bias ([N]) and options.activation ('relu', 'gelu_tanh', 'silu') finish the result.
   */
  matmul(a: TensorLike<Float32Array>, b: TensorLike<Float32Array> | PackedWeights, options?: MatmulOptions): Tensor {
    const backend = this.live();
    return backend.run(matmulOp, planMatmul(a, b, options, backend));
  }

  /**
   * w [K, N] (or [N, K], as torch's Linear keeps its weight, with transposeB) packed once into the
   * engine's memory in the layout the matmul kernels read, so that matmul(x, packed) streams it as it
   * is on every call (a model's weights, multiplied on every token). Pass the handle as matmul's b
   * (with options.bias and options.activation if wanted); release() gives the memory back. The packed
   * copy is the engine's own: later changes to w do not reach it.
   */
  packWeights(w: TensorLike<Float32Array>, options?: PackWeightsOptions): PackedWeights {
    const backend = this.live();
    const plan = planPack(w, options, backend);
    const storage = backend.tensor([packedLength(plan.k, plan.n)], 'float32');
    try {
      backend.run(packOp, withStorage(plan, storage));
    } catch (error) {
      storage.release();
      throw error;
    }
    return makePackedWeights(storage, plan.k, plan.n);
  }

  /** matmul() on the worker threads; see attentionAsync. */
  async matmulAsync(a: TensorLike<Float32Array>, b: TensorLike<Float32Array> | PackedWeights, options?: MatmulOptions): Promise<Tensor> {
    const backend = this.live();
    return backend.runAsync(matmulOp, planMatmul(a, b, options, backend));
  }

  /** Softmax along the last axis of scale·x + mask (causal: column j dropped from row i when j > i). */
  softmax(x: TensorLike<Float32Array>, options?: SoftmaxOptions): Tensor {
    const backend = this.live();
    return backend.run(softmaxOp, planSoftmax(x, options, backend));
  }

  /**
   * Softmax's backward: from y = softmax(...) (this engine's softmax output) and dy, its gradient,
   * dx = scale · y ∘ (dy - rowsum(dy ∘ y)) along the last axis. Masked columns (y = 0) get 0.
   */
  softmaxBackward(y: TensorLike<Float32Array>, dy: TensorLike<Float32Array>, options?: SoftmaxBackwardOptions): Tensor {
    const backend = this.live();
    return backend.run(softmaxBackwardOp, planSoftmaxBackward(y, dy, options, backend));
  }

  /** softmax() on the worker threads; see attentionAsync. */
  async softmaxAsync(x: TensorLike<Float32Array>, options?: SoftmaxOptions): Promise<Tensor> {
    const backend = this.live();
    return backend.runAsync(softmaxOp, planSoftmax(x, options, backend));
  }

  /**
   * Rotary position embedding (RoPE, as ONNX RotaryEmbedding): x [B, H, S, D] (or [B, S, H·D] with
   * options.heads), the first `dims` elements of each head vector of token (b, s) rotated pairwise by
   * angles p·base^(-2i/dims), p its position; half-split pairs (i, i + dims/2) or interleaved (2i, 2i+1).
   */
  rotary(x: TensorLike<Float32Array>, options: RotaryOptions): Tensor {
    const backend = this.live();
    return backend.run(rotaryOp, planRotary(x, options, backend));
  }

  /** rotary() on the worker threads; see attentionAsync. */
  async rotaryAsync(x: TensorLike<Float32Array>, options: RotaryOptions): Promise<Tensor> {
    const backend = this.live();
    return backend.runAsync(rotaryOp, planRotary(x, options, backend));
  }

  /**
   * A tensor that lives in the engine's memory, zero-filled: fill its `data` in place and pass the
   * tensor (or its `data`) to any op, as an input or as `out`, with no copy. `data` is rebuilt
   * whenever memory has grown, so read it again after other calls instead of keeping it. Call
   * `release()` when done: later use of the tensor or of any view of it is refused. `type`:
   * 'float32' (default, a Float32Array) or 'bool' (a Uint8Array, for masks).
   */
  tensor(dims: readonly number[], options?: { type?: 'float32' | 'bool' }): ResidentTensor {
    const backend = this.live();
    const shape = checkDims(dims, 'dims');
    const type = readOptions(options, 'options', ['type']).type ?? 'float32';
    if (type !== 'float32' && type !== 'bool') {
      throw new AttentionError('INVALID_OPTION', `options.type must be 'float32' or 'bool', got ${describe(type)}`, 'options.type');
    }
    return backend.tensor(shape, type);
  }

  /**
   * ONNX's Attention operator (opsets 23-25) with its exact rules; see features/onnx.ts.
   * `request.outputs` names the outputs the node asks for (default: Y, plus the present outputs
   * when past inputs are given).
   */
  onnxAttention(inputs: OnnxAttentionInputs, attributes?: OnnxAttentionAttributes, request?: OnnxAttentionRequest): OnnxAttentionOutputs {
    return onnxAttention(this.live(), inputs, attributes, request);
  }

  /**
   * The multi-head attention layer: projections by wq, wk, wv (+ biases), attention over the heads
   * (GQA with kvHeads, cross-attention with context, decoding with cache), and the output projection
   * wo. x [B, S, E] → [B, S, Eout]. See features/layer.ts.
   */
  multiHeadAttention(x: TensorLike<Float32Array>, weights: MultiHeadWeights, options: MultiHeadOptions & { train: true }): MultiHeadTrainOutput;
  multiHeadAttention(x: TensorLike<Float32Array>, weights: MultiHeadWeights, options: MultiHeadOptions): Tensor;
  multiHeadAttention(x: TensorLike<Float32Array>, weights: MultiHeadWeights, options: MultiHeadOptions): Tensor | MultiHeadTrainOutput {
    return multiHeadAttention(this.live(), x, weights, options);
  }

  /**
   * The layer's backward: from dy [B, S, Eout] and the `saved` of a multiHeadAttention call with
   * train: true, the gradients of x (and of options.context), of every weight and of every bias the
   * forward had. See features/layer.ts.
   */
  multiHeadAttentionBackward(dy: TensorLike<Float32Array>, saved: MultiHeadSaved): MultiHeadGradients {
    return multiHeadAttentionBackward(this.live(), dy, saved);
  }

  /** A KV cache whose keys and values live in this engine's memory; see KVCache. */
  kvCache(options: KVCacheOptions): KVCache {
    return new KVCache(this.live(), options);
  }

  /**
   * A paged KV pool for serving many sequences at once: pages taken on demand, forks that share
   * pages, and one attention call per step over every sequence in it (pool.step, pool.stepAsync,
   * pool.batcher). See features/kv-pool.ts.
   */
  kvPool(options: KVPoolOptions): KVPool {
    return new KVPool(this.live(), options);
  }

  /**
   * Bytes of WASM memory reserved and in use (both 0 on the js backend), and `warnings` when
   * something runs other than asked (worker threads that could not start: calls then run on the
   * calling thread).
   */
  stats(): MemoryStats {
    return this.live().stats();
  }

  /** Frees the engine's memory; every later call throws an AttentionError with code DISPOSED. */
  dispose(): void {
    this.runtime.dispose();
  }
}

/** Creates an engine synchronously (compiles the wasm build on first use in this process). */
export function createEngineSync(options?: EngineOptions): Engine {
  const { backend, threads, maxMemoryBytes } = checkEngineOptions(options);
  return new Engine(backend === 'js' ? new JsBackend() : new WasmBackend(backend, maxMemoryBytes, threads));
}

/** Creates an engine on the fastest backend this runtime supports (see EngineOptions.backend). */
export async function createEngine(options?: EngineOptions): Promise<Engine> {
  await loadBuilds();
  const { backend, threads, maxMemoryBytes } = checkEngineOptions(options);
  if (backend === 'js') return new Engine(new JsBackend());
  const module = await compileAsync(backend);
  return new Engine(new WasmBackend(backend, maxMemoryBytes, threads, module));
}

async function compileAsync(build: WasmBuild): Promise<WebAssembly.Module> {
  // compiledModule caches; compiling on a later tick keeps createEngine from blocking its caller's turn.
  await Promise.resolve();
  return compiledModule(build);
}
