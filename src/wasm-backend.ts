// Runs plans on the wasm kernels: stage the inputs into the engine's linear memory (no copy when a
// tensor already lives there), describe the call as a job of independent items (jobs.ts), run the
// items on this thread or on the pool (pool.ts), copy the result out, and free every temporary block
// before returning, so nothing of a call stays behind.
import { AttentionError } from './errors.js';
import { WasmHeap } from './heap.js';
import {
  ATTENTION_ROW_CHUNK, GEMM_M_CHUNK, GEMM_N_CHUNK, J, JOB_FIELDS, OP_ATTENTION, OP_GEMM, OP_SOFTMAX, SOFTMAX_ROW_CHUNK,
  SPLIT_KV_CHUNK, SPLIT_KV_MAX_ROWS, SPLIT_KV_MIN_KEYS, mergeSplitKV, runItem,
} from './jobs.js';
import type { AttentionPlan, HeadStrides, MatmulPlan, SoftmaxPlan } from './plan.js';
import { isNode } from './platform.js';
import { FLAGS_FIELD } from './pool-protocol.js';
import { WorkerPool } from './pool.js';
import { type Kernels, type WasmBuild, compiledModule, instantiateKernels, sharedMemorySupported } from './wasm-module.js';

const MASK_KIND = { bool: 1, float: 2 } as const;

/**
 * Calls of fewer floating-point operations than this run on the calling thread alone: below it,
 * waking the workers costs more than they save (measured: see the README's threads section).
 */
export const MIN_PARALLEL_FLOPS = 2e6;

/** Byte offset, in linear memory, of a typed array that already lives there; else -1. */
function residentAt(heap: WasmHeap, data: ArrayBufferView, name: string): number {
  if (!heap.isView(data)) return -1;
  if (!heap.isLiveResident(data)) {
    throw new AttentionError('INVALID_TENSOR', `${name} is a view of this engine's memory that is not a live tensor from engine.tensor() (released, or never one)`, name);
  }
  return data.byteOffset;
}

export interface AttentionResult {
  out: Float32Array;
  logSumExp: Float32Array | undefined;
}

/** Each tensor's strides sit in three consecutive job fields: batch, head, row. */
function putStrides(job: Float64Array, at: number, strides: HeadStrides): void {
  job[at] = strides.batch;
  job[at + 1] = strides.head;
  job[at + 2] = strides.row;
}

type Stage = (data: Float32Array | Uint8Array, name: string) => number;
type Alloc = (bytes: number) => number;

/** A call laid out in memory: its job, where its result is, and what finishing it takes. */
interface Prepared {
  job: Float64Array;
  /** Rows whose log-sum-exp was asked for (0: none). */
  statsRows: number;
  flops: number;
  /** Scratch bytes each thread running items needs. */
  scratchBytes: number;
  outPtr: number;
  size: number;
  into: Float32Array | undefined;
  splitKV: boolean;
}

export class WasmBackend {
  readonly build: WasmBuild;
  readonly heap: WasmHeap;
  readonly pool: WorkerPool | undefined;
  /** Set when a call's blocks must never be reused (see WorkerPool.runSync): they are left allocated. */
  private quarantine = false;
  /** Calls below this many flops skip the pool (the bench lowers it to measure the crossover). */
  minParallelFlops = MIN_PARALLEL_FLOPS;
  private readonly kernels: Kernels;

  constructor(build: WasmBuild, maxMemoryBytes: number, threads = 1, module: WebAssembly.Module = compiledModule(build)) {
    this.build = build;
    const maximum = Math.max(1, Math.floor(maxMemoryBytes / 65536));
    const memory = new WebAssembly.Memory({ initial: Math.min(maximum, 32), maximum, shared: sharedMemorySupported() });
    this.kernels = instantiateKernels(module, memory);
    this.heap = new WasmHeap(memory, this.kernels.heap_base(), maximum * 65536);
    this.pool = threads > 1 ? new WorkerPool(module, memory, threads) : undefined;
  }

  /** Runs `body` with functions that stage arrays into memory and allocate; frees what they allocated. */
  private withBlocks<T>(body: (stage: Stage, alloc: Alloc) => T): T {
    const { stage, alloc, owned } = this.blockTools();
    try {
      return body(stage, alloc);
    } finally {
      // a worker that stalled may still write into this call's blocks: those stay allocated for good
      if (!this.quarantine) for (const ptr of owned) this.heap.release(ptr);
      this.quarantine = false;
    }
  }

  private async withBlocksAsync<T>(body: (stage: Stage, alloc: Alloc) => Promise<T>): Promise<T> {
    const { stage, alloc, owned } = this.blockTools();
    try {
      return await body(stage, alloc);
    } finally {
      for (const ptr of owned) this.heap.release(ptr);
    }
  }

  private blockTools(): { stage: Stage; alloc: Alloc; owned: number[] } {
    const owned: number[] = [];
    const alloc = (bytes: number): number => {
      const ptr = this.heap.alloc(bytes);
      owned.push(ptr);
      return ptr;
    };
    const stage = (data: Float32Array | Uint8Array, name: string): number => {
      const at = residentAt(this.heap, data, name);
      if (at >= 0) return at;
      const ptr = alloc(data.byteLength);
      if (data instanceof Float32Array) this.heap.f32.set(data, ptr >>> 2);
      else this.heap.u8.set(data, ptr);
      return ptr;
    };
    return { stage, alloc, owned };
  }

  /** Scratch for each slot that may run items (slot 0 is the calling thread), and, on the pool, item flags. */
  private layout(p: Prepared, slots: number, alloc: Alloc): void {
    const { job } = p;
    const perSlot = Math.ceil(Math.max(p.scratchBytes, 64) / 64) * 64;
    job[J.scratch] = alloc(perSlot * slots);
    job[J.scratchBytes] = perSlot;
    if (slots > 1) {
      job[FLAGS_FIELD] = alloc(job[J.items]);
      this.heap.u8.fill(0, job[FLAGS_FIELD], job[FLAGS_FIELD] + job[J.items]);
    }
  }

  private runHere(p: Prepared, alloc: Alloc): void {
    this.layout(p, 1, alloc);
    const i32 = this.heap.i32;
    for (let item = 0; item < p.job[J.items]; item++) runItem(this.kernels, p.job, item, 0, i32);
  }

  private execute(p: Prepared, alloc: Alloc): void {
    if (p.job[J.items] > 0) {
      const pool = this.pool;
      // a sync call blocks in Atomics.wait, which a browser's main thread may not do
      if (pool && isNode && !pool.busy && p.flops >= this.minParallelFlops && p.job[J.items] > 1) {
        this.layout(p, 1 + pool.threads, alloc);
        try {
          this.quarantine = pool.runSync(this.kernels, p.job);
        } catch (error) {
          this.quarantine = true;
          throw error;
        }
      } else {
        this.runHere(p, alloc);
      }
    }
    this.finishJob(p);
  }

  private async executeAsync(p: Prepared, alloc: Alloc): Promise<void> {
    if (p.job[J.items] > 0) {
      if (this.pool) {
        this.layout(p, 1 + this.pool.threads, alloc);
        await this.pool.runAsync(p.job);
      } else {
        this.runHere(p, alloc);
      }
    }
    this.finishJob(p);
  }

  private finishJob(p: Prepared): void {
    if (p.splitKV) mergeSplitKV(p.job, this.heap.f32);
  }

  /** Copies the result out unless it already is `into`'s memory. */
  private collect(p: Prepared): Float32Array {
    const { outPtr, size, into } = p;
    if (into && this.heap.isView(into) && into.byteOffset === outPtr) return into;
    const view = this.heap.f32.subarray(outPtr >>> 2, (outPtr >>> 2) + size);
    if (into) {
      into.set(view);
      return into;
    }
    return view.slice();
  }

  private outputBlock(size: number, into: Float32Array | undefined, alloc: Alloc): number {
    const at = into ? residentAt(this.heap, into, 'options.out') : -1;
    return at >= 0 ? at : alloc(size * 4);
  }

  private prepareAttention(plan: AttentionPlan, q: Float32Array, k: Float32Array, v: Float32Array, stage: Stage, alloc: Alloc): Prepared {
    const job = new Float64Array(JOB_FIELDS);
    const size = plan.batch * plan.qHeads * plan.seqQ * plan.valueDim;
    const mask = plan.mask;
    job[J.op] = OP_ATTENTION;
    job[J.q] = stage(q, 'q.data');
    job[J.k] = stage(k, 'k.data');
    job[J.v] = stage(v, 'v.data');
    job[J.mask] = mask ? stage(mask.data, 'options.mask.data') : 0;
    const outPtr = this.outputBlock(size, plan.outBuffer, alloc);
    job[J.out] = outPtr;
    putStrides(job, J.qB, plan.q);
    putStrides(job, J.kB, plan.k);
    putStrides(job, J.vB, plan.v);
    putStrides(job, J.oB, plan.out);
    if (mask) putStrides(job, J.mB, mask.at);
    job[J.qHeads] = plan.qHeads;
    job[J.group] = plan.kvHeads === 0 ? 1 : plan.qHeads / plan.kvHeads;
    job[J.seqQ] = plan.seqQ;
    job[J.seqKV] = plan.seqKV;
    job[J.headDim] = plan.headDim;
    job[J.valueDim] = plan.valueDim;
    job[J.scale] = plan.scale;
    job[J.cap] = plan.softcap;
    job[J.maskKind] = mask ? MASK_KIND[mask.kind] : 0;
    job[J.maskBytes] = mask?.kind === 'bool' ? 1 : 4;
    job[J.offset] = plan.offset;
    job[J.left] = plan.left;
    job[J.right] = plan.right;
    job[J.rowChunk] = ATTENTION_ROW_CHUNK;
    job[J.rowChunks] = Math.ceil(plan.seqQ / ATTENTION_ROW_CHUNK);
    // Split-KV: decided by the shape alone, so every thread count computes the same bits.
    const splitKV = plan.seqQ <= SPLIT_KV_MAX_ROWS && plan.seqKV >= SPLIT_KV_MIN_KEYS && plan.valueDim > 0;
    job[J.kvChunk] = splitKV ? SPLIT_KV_CHUNK : plan.seqKV;
    job[J.kvChunks] = splitKV ? Math.ceil(plan.seqKV / SPLIT_KV_CHUNK) : 1;
    job[J.items] = plan.batch * plan.qHeads * job[J.rowChunks] * job[J.kvChunks];
    if (splitKV) {
      const slots = plan.batch * plan.qHeads * job[J.kvChunks] * plan.seqQ;
      job[J.partialOut] = alloc(slots * plan.valueDim * 4);
      job[J.partialStats] = alloc(slots * 8);
    }
    const statsRows = plan.returnLogSumExp ? plan.batch * plan.qHeads * plan.seqQ : 0;
    if (statsRows > 0) job[J.stats] = alloc(8 * statsRows);
    const flops = 2 * plan.batch * plan.qHeads * plan.seqQ * plan.seqKV * (plan.headDim + plan.valueDim);
    const scratchBytes = this.kernels.f32_attention_scratch_bytes(plan.headDim, plan.valueDim);
    return { job, statsRows, flops, scratchBytes, outPtr, size, into: plan.outBuffer, splitKV };
  }

  attention(plan: AttentionPlan, q: Float32Array, k: Float32Array, v: Float32Array): AttentionResult {
    return this.call((stage, alloc) => this.prepareAttention(plan, q, k, v, stage, alloc), (p) => ({ out: this.collect(p), logSumExp: this.logSumExp(p) }));
  }

  attentionAsync(plan: AttentionPlan, q: Float32Array, k: Float32Array, v: Float32Array): Promise<AttentionResult> {
    return this.callAsync((stage, alloc) => this.prepareAttention(plan, q, k, v, stage, alloc), (p) => ({ out: this.collect(p), logSumExp: this.logSumExp(p) }));
  }

  /** One op call: lay it out, run it here or on the pool, read its result, free its blocks. */
  private call<T>(prepare: (stage: Stage, alloc: Alloc) => Prepared, result: (p: Prepared) => T): T {
    return this.withBlocks((stage, alloc) => {
      const p = prepare(stage, alloc);
      this.execute(p, alloc);
      return result(p);
    });
  }

  /** call(), with the items on the workers and the calling thread free. */
  private callAsync<T>(prepare: (stage: Stage, alloc: Alloc) => Prepared, result: (p: Prepared) => T): Promise<T> {
    return this.withBlocksAsync(async (stage, alloc) => {
      const p = prepare(stage, alloc);
      await this.executeAsync(p, alloc);
      return result(p);
    });
  }

  /** log-sum-exp per row from the kernel's [max, sum] pairs. */
  private logSumExp(p: Prepared): Float32Array | undefined {
    if (p.statsRows === 0) return undefined;
    const f32 = this.heap.f32;
    const base = p.job[J.stats] >>> 2;
    const lse = new Float32Array(p.statsRows);
    for (let r = 0; r < p.statsRows; r++) {
      const sum = f32[base + 2 * r + 1];
      lse[r] = sum > 0 || Number.isNaN(sum) ? f32[base + 2 * r] + Math.log(sum) : -Infinity;
    }
    return lse;
  }

  private prepareMatmul(plan: MatmulPlan, a: Float32Array, b: Float32Array, stage: Stage, alloc: Alloc): Prepared {
    const { m, n, k } = plan;
    const matrices = plan.aOffsets.length;
    const job = new Float64Array(JOB_FIELDS);
    job[J.op] = OP_GEMM;
    job[J.gm] = m;
    job[J.gn] = n;
    job[J.gk] = k;
    job[J.ga] = stage(a, 'a.data');
    // the micro-kernel reads A in place: no subnormal may reach its multiplies (B is flushed as it is
    // packed); a staged copy is flushed, a resident tensor is used as it is
    if (!this.heap.isView(a)) this.kernels.f32_flush_subnormals(job[J.ga], a.length);
    job[J.gb] = stage(b, 'b.data');
    const size = matrices * m * n;
    const outPtr = this.outputBlock(size, plan.outBuffer, alloc);
    job[J.gc] = outPtr;
    job[J.gTransB] = plan.transposeB ? 1 : 0;
    job[J.gOffsets] = alloc(8 * matrices);
    const offsets = new Int32Array(2 * matrices);
    for (let i = 0; i < matrices; i++) {
      offsets[2 * i] = plan.aOffsets[i];
      offsets[2 * i + 1] = plan.bOffsets[i];
    }
    this.heap.i32.set(offsets, job[J.gOffsets] >>> 2);
    job[J.gMChunk] = GEMM_M_CHUNK;
    job[J.gNChunk] = GEMM_N_CHUNK;
    job[J.gMChunks] = Math.ceil(m / GEMM_M_CHUNK);
    job[J.gNChunks] = Math.ceil(n / GEMM_N_CHUNK);
    job[J.items] = matrices * job[J.gMChunks] * job[J.gNChunks];
    const scratchBytes = this.kernels.f32_gemm_scratch_bytes();
    return { job, statsRows: 0, flops: 2 * matrices * m * n * k, scratchBytes, outPtr, size, into: plan.outBuffer, splitKV: false };
  }

  matmul(plan: MatmulPlan, a: Float32Array, b: Float32Array): Float32Array {
    return this.call((stage, alloc) => this.prepareMatmul(plan, a, b, stage, alloc), (p) => this.collect(p));
  }

  matmulAsync(plan: MatmulPlan, a: Float32Array, b: Float32Array): Promise<Float32Array> {
    return this.callAsync((stage, alloc) => this.prepareMatmul(plan, a, b, stage, alloc), (p) => this.collect(p));
  }

  private prepareSoftmax(plan: SoftmaxPlan, x: Float32Array, stage: Stage, alloc: Alloc): Prepared {
    const { matrices, rows, cols, mask } = plan;
    const job = new Float64Array(JOB_FIELDS);
    job[J.op] = OP_SOFTMAX;
    job[J.sx] = stage(x, 'x.data');
    const size = matrices * rows * cols;
    const outPtr = this.outputBlock(size, plan.outBuffer, alloc);
    job[J.sOut] = outPtr;
    job[J.sRows] = rows;
    job[J.sCols] = cols;
    job[J.sScale] = plan.scale;
    job[J.sMask] = mask ? stage(mask.data, 'options.mask.data') : 0;
    job[J.sMaskKind] = mask ? MASK_KIND[mask.kind] : 0;
    job[J.sMaskBytes] = mask?.kind === 'bool' ? 1 : 4;
    job[J.sMaskRow] = plan.maskRowStride;
    job[J.sCausal] = plan.causal ? 1 : 0;
    if (mask) {
      job[J.sMaskOffsets] = alloc(4 * matrices);
      this.heap.i32.set(plan.maskOffsets, job[J.sMaskOffsets] >>> 2);
    }
    job[J.sRowChunk] = SOFTMAX_ROW_CHUNK;
    job[J.sRowChunks] = Math.ceil(rows / SOFTMAX_ROW_CHUNK);
    job[J.items] = matrices * job[J.sRowChunks];
    return { job, statsRows: 0, flops: 8 * size, scratchBytes: 0, outPtr, size, into: plan.outBuffer, splitKV: false };
  }

  softmax(plan: SoftmaxPlan, x: Float32Array): Float32Array {
    return this.call((stage, alloc) => this.prepareSoftmax(plan, x, stage, alloc), (p) => this.collect(p));
  }

  /** A tensor whose data is a view of this engine's memory: ops read and write it in place. */
  tensor(dims: number[], bool: boolean): { data: Float32Array | Uint8Array; release: () => void } {
    const size = dims.reduce((a, b) => a * b, 1);
    const bytes = bool ? size : size * 4;
    const ptr = this.heap.allocResident(bytes);
    const buffer = this.heap.u8.buffer;
    const data = bool ? new Uint8Array(buffer, ptr, size) : new Float32Array(buffer, ptr, size);
    data.fill(0);
    let released = false;
    return {
      data,
      release: () => {
        if (!released) {
          this.heap.release(ptr);
          this.heap.markReleased(data);
        }
        released = true;
      },
    };
  }

  /** Copies `bytes` inside linear memory with memory.copy (the bandwidth yardstick of the bench). */
  copyBytes(dst: number, src: number, bytes: number): void {
    this.kernels.copy_bytes(dst, src, bytes);
  }

  /** exp through the kernels' polynomial (for accuracy tests). */
  exp(x: number): number {
    return this.kernels.f32_exp(x);
  }

  dispose(): void {
    this.pool?.dispose();
  }
}
