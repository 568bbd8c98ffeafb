// The wasm backend: runs any op's plan on the kernels. A call stages its operands into the engine's
// linear memory (in place when they are resident tensors, which it pins until the call settles),
// has the op lay itself out as a job (the op's wasm.ts), runs the items on this thread or on the
// pool (../pool/), lets the op read its result, and frees every temporary block, so nothing of a
// call stays behind. Blocks that a retired crew of workers might still write are freed only once
// those workers have exited.
import { type Backend, type MemoryStats, type Op, type OpPlan, type Operand, type WasmBuild, type WasmCall, operandArray } from '../backend.js';
import { AttentionError } from '../errors.js';
import { WasmHeap } from '../memory/heap.js';
import { type ResidentOwner, ResidentTensor, type ResidentType } from '../memory/resident.js';
import { cores } from '../platform.js';
import { lengthOf } from '../tensor.js';
import { type Settled, WorkerPool } from '../pool/pool.js';
import { runJob, runJobAsync } from '../pool/schedule.js';
import type { Kernels } from './kernels.js';
import { compiledModule, instantiateKernels, sharedMemorySupported } from './wasm-module.js';

/** One call's blocks and pins, and the WasmCall the op sees. */
class Call implements WasmCall {
  private readonly owned: number[] = [];
  private readonly pinned: ResidentTensor[] = [];
  /** Copies of array operands taken when an async call was made, staged when it runs. */
  snapshots: Map<Operand, Float32Array | Uint8Array> | undefined;
  constructor(private readonly backend: WasmBackend) {}

  get threads(): number {
    return this.backend.threads;
  }

  get f32(): Float32Array {
    return this.backend.heap.f32;
  }

  get i32(): Int32Array {
    return this.backend.heap.i32;
  }

  get u8(): Uint8Array {
    return this.backend.heap.u8;
  }

  get kernels(): Kernels {
    return this.backend.kernels;
  }

  alloc(bytes: number): number {
    const ptr = this.backend.heap.alloc(bytes);
    this.owned.push(ptr);
    return ptr;
  }

  /** Keeps `tensor` allocated until the call is closed. */
  pin(tensor: ResidentTensor): void {
    tensor.pin();
    this.pinned.push(tensor);
  }

  /** The address of a resident operand, pinned for the call. */
  private residentAt(operand: Operand, name: string): number {
    const tensor = operand.resident!;
    if (tensor.released && !this.pinned.includes(tensor)) throw new AttentionError('INVALID_TENSOR', `${name} belongs to a tensor that was released`, name);
    this.pin(tensor);
    return tensor.ptr + operand.offset * (tensor.type === 'bool' ? 1 : 4);
  }

  stage(operand: Operand, name: string): number {
    if (operand.resident) return this.residentAt(operand, name);
    const data = this.snapshots?.get(operand) ?? operand.array;
    const ptr = this.alloc(data.byteLength);
    if (data instanceof Float32Array) this.f32.set(data, ptr >>> 2);
    else this.u8.set(data, ptr);
    return ptr;
  }

  output(out: Operand<Float32Array> | undefined, elements: number, name = 'options.out'): number {
    return out?.resident ? this.residentAt(out, name) : this.alloc(elements * 4);
  }

  collect(ptr: number, elements: number, out: Operand<Float32Array> | undefined): Float32Array {
    if (out?.resident) return operandArray<Float32Array>(out);
    const view = this.f32.subarray(ptr >>> 2, (ptr >>> 2) + elements);
    if (out) {
      // an async call's out may have been detached or resized by the caller while the call ran
      if (lengthOf(out.array) !== out.length) {
        throw new AttentionError('INVALID_TENSOR', 'options.out was detached or resized while the call ran; its result is lost', 'options.out');
      }
      out.array.set(view);
      return out.user && lengthOf(out.user) === out.length ? out.user : out.array;
    }
    return view.slice();
  }

  /** Frees the call's blocks and unpins its tensors, now or once `settled` resolves. */
  close(settled: Settled): void {
    const release = (): void => {
      for (const ptr of this.owned) this.backend.heap.release(ptr);
      for (const tensor of this.pinned) tensor.unpin();
    };
    if (settled) void settled.then(release);
    else release();
  }
}

export class WasmBackend implements Backend, ResidentOwner {
  readonly name: WasmBuild;
  readonly threads: number;
  readonly heap: WasmHeap;
  readonly pool: WorkerPool | undefined;
  readonly kernels: Kernels;
  private disposed = false;
  /** Async calls made and not settled, and the promise the next one waits for. */
  private asyncPending = 0;
  private asyncTail: Promise<void> = Promise.resolve();
  /** Every view handed out by a resident tensor of this backend. */
  private readonly views = new WeakMap<ArrayBufferView, ResidentTensor>();

  constructor(build: WasmBuild, maxMemoryBytes: number, threads = 1, module: WebAssembly.Module = compiledModule(build)) {
    this.name = build;
    const maximum = Math.max(1, Math.floor(maxMemoryBytes / 65536));
    const memory = new WebAssembly.Memory({ initial: Math.min(maximum, 32), maximum, shared: sharedMemorySupported() });
    this.kernels = instantiateKernels(module, memory);
    this.heap = new WasmHeap(memory, this.kernels.heap_base(), maximum * 65536);
    this.pool = threads > 1 ? new WorkerPool(module, memory, threads) : undefined;
    this.threads = threads;
  }

  live(): void {
    if (this.disposed) throw new AttentionError('DISPOSED', 'this engine was disposed');
  }

  /** The bytes a call will stage at the least (its array inputs and its output): checked before any growth. */
  private checkFits<P extends OpPlan, R>(op: Op<P, R>, plan: P): void {
    let bytes = plan.out?.resident ? 0 : 4 * (plan.out?.length ?? 0);
    for (const operand of op.inputs(plan)) if (operand?.array) bytes += operand.array.byteLength;
    this.heap.checkFits(bytes);
  }

  run<P extends OpPlan, R>(op: Op<P, R>, plan: P): R {
    this.live();
    this.checkFits(op, plan);
    const call = new Call(this);
    let settled: Settled;
    try {
      const encoded = op.wasm.encode(plan, call);
      settled = runJob(this.pool, this.kernels, encoded.job, encoded.scratchBytes, plan, call);
      return op.wasm.finish(plan, call, encoded);
    } catch (error) {
      settled ??= (error as { settled?: Settled }).settled;
      throw error;
    } finally {
      call.close(settled);
    }
  }

  /**
   * run() with the items on the workers. Async calls take turns: a call stages its inputs into WASM
   * memory only when its turn comes, so a burst of calls needs the memory of the running call, not of
   * all of them. A call that has to wait copies its array inputs (in JS memory) when it is made, so
   * the caller may reuse them at once, and pins its resident tensors until it settles.
   */
  async runAsync<P extends OpPlan, R>(op: Op<P, R>, plan: P): Promise<R> {
    this.live();
    this.checkFits(op, plan);
    const call = new Call(this);
    const wait = this.asyncPending > 0;
    for (const operand of [...op.inputs(plan), plan.out]) {
      if (operand?.resident) call.pin(operand.resident);
      else if (operand?.array && wait && operand !== plan.out) (call.snapshots ??= new Map()).set(operand, operand.array.slice());
    }
    this.asyncPending++;
    const previous = this.asyncTail;
    let next!: () => void;
    this.asyncTail = new Promise<void>((resolve) => (next = resolve));
    try {
      if (wait) {
        await previous;
        this.live();
      }
      const encoded = op.wasm.encode(plan, call);
      await runJobAsync(this.pool, this.kernels, encoded.job, encoded.scratchBytes, call);
      return op.wasm.finish(plan, call, encoded);
    } finally {
      call.close(undefined);
      this.asyncPending--;
      next();
    }
  }

  residentOf(view: ArrayBufferView, buffer: ArrayBufferLike, name: string): ResidentTensor | undefined {
    const tensor = this.views.get(view);
    if (tensor && !tensor.released) return tensor;
    if (tensor || this.heap.isBuffer(buffer)) {
      throw new AttentionError(
        'INVALID_TENSOR',
        `${name} is a view of this engine's memory that is not the data of a live tensor from engine.tensor() (released, or a part of one: pass the tensor itself)`,
        name,
      );
    }
    return undefined;
  }

  owns(tensor: ResidentTensor): boolean {
    return tensor.ownedBy(this);
  }

  // ResidentOwner
  buffer(): ArrayBufferLike {
    return this.heap.memory.buffer;
  }

  register(view: ArrayBufferView, tensor: ResidentTensor): void {
    this.views.set(view, tensor);
  }

  free(tensor: ResidentTensor): void {
    if (!this.disposed) this.heap.release(tensor.ptr);
  }

  tensor(dims: readonly number[], type: ResidentType): ResidentTensor {
    this.live();
    const size = dims.reduce((a, b) => a * b, 1);
    const bytes = type === 'bool' ? size : size * 4;
    const ptr = this.heap.alloc(bytes);
    this.heap.u8.fill(0, ptr, ptr + bytes);
    return new ResidentTensor(this, ptr, dims, type);
  }

  stats(): MemoryStats {
    const stats: MemoryStats = this.heap.stats();
    const warnings: string[] = [];
    if (this.pool?.degraded) warnings.push(this.pool.degraded);
    if (this.threads > cores()) warnings.push(`threads ${this.threads} on ${cores()} cores: the threads share cores, which is slower than one thread per core`);
    if (warnings.length > 0) stats.warnings = warnings;
    return stats;
  }

  /** Copies `bytes` inside linear memory with memory.copy (the bandwidth yardstick of the bench). */
  copyBytes(dst: number, src: number, bytes: number): void {
    this.kernels.copy_bytes(dst, src, bytes);
  }

  /** GFLOP/s of the build's multiply-add in a register-only loop (assembly/ceiling-probe.ts), the best of
   * both forms and of `samples` timed runs of `iterations` each, after a warm-up that lets V8 tier up. */
  flopCeiling(iterations = 4e6, samples = 5): number {
    const flops = this.kernels.f32_ceiling_flops_per_iteration();
    let best = 0;
    for (const form of [0, 1]) {
      for (let i = 0; i < 200; i++) this.kernels.f32_ceiling_probe(1000, form, 1e-3);
      for (let i = 0; i < samples; i++) {
        const t0 = performance.now();
        this.kernels.f32_ceiling_probe(iterations, form, 1e-3);
        best = Math.max(best, (iterations * flops) / (performance.now() - t0) / 1e6);
      }
    }
    return best;
  }

  /** exp through the kernels' polynomial (for accuracy tests). */
  exp(x: number): number {
    return this.kernels.f32_exp(x);
  }

  dispose(): void {
    this.disposed = true;
    this.pool?.dispose();
  }
}
