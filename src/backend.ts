// The contract between ops and the backends that run them. An op (src/ops/<name>/) is a plan
// function, which validates a call into a frozen plan, plus an `Op` object with the op's two
// implementations: `js` (plain TypeScript) and `wasm` (how the call is laid out as a job for the
// kernels). A backend runs any op from its plan; the engine and the features (KV cache, layer,
// ONNX entry point) only ever call `backend.run(op, plan)`, so adding an op adds a folder, not a
// branch anywhere else.
import type { Kernels } from './backends/kernels.js';
import type { JobLayout } from './job.js';
import type { ResidentTensor } from './memory/resident.js';

export type WasmBuild = 'wasm-relaxed-simd' | 'wasm-simd';
export type BackendName = WasmBuild | 'js';

/**
 * A tensor's data as a plan holds it, read once from the caller's object: either an ordinary typed
 * array (`array`), or `length` elements at element `offset` of a resident tensor's block.
 */
export type Operand<T extends Float32Array | Uint8Array = Float32Array | Uint8Array> =
  | { readonly array: T; readonly resident?: undefined; readonly offset: 0; readonly length: number; readonly user?: T }
  | { readonly array?: undefined; readonly resident: ResidentTensor; readonly offset: number; readonly length: number; readonly user?: undefined };

/**
 * The array a result is returned in: for an `out` the caller passed as an array, that very array
 * (`user`: the plan computes through its own plain view of it), else `computed`.
 */
export const resultArray = <T extends Float32Array | Uint8Array>(out: Operand<T> | undefined, computed: T): T => out?.user ?? computed;

/**
 * The array behind an operand as memory is now: the plain array itself, or a view of the resident
 * tensor's part (valid while a call pins the tensor, released or not).
 */
export function operandArray<T extends Float32Array | Uint8Array>(operand: Operand<T>): T {
  if (operand.array) return operand.array;
  const data = operand.resident!.view() as T;
  return (operand.offset === 0 && operand.length === data.length ? data : data.subarray(operand.offset, operand.offset + operand.length)) as T;
}

/** What a backend gives the plan functions: how to tell its own memory from ordinary arrays. */
export interface OperandResolver {
  /**
   * The live resident tensor whose data `view` (over `buffer`) is, or undefined for an ordinary
   * array; refuses (INVALID_TENSOR, naming `name`) any other view of this backend's memory: a
   * released tensor's, or a subarray.
   */
  residentOf(view: ArrayBufferView, buffer: ArrayBufferLike, name: string): ResidentTensor | undefined;
  /** Whether this backend made `tensor` (another engine's tensor lives in another memory). */
  owns(tensor: ResidentTensor): boolean;
}

/** A plan: what an op's plan function returns and its implementations run. */
export interface OpPlan {
  /** Floating-point operations of the call (decides whether it is worth the thread pool). */
  readonly flops: number;
  /** Bytes the call streams from memory, where that and not its flops bounds its time (x·W with few
   * rows: every weight read once for one to 16 multiply-adds); the pool weighs them too. */
  readonly streamedBytes?: number;
  /** Where the caller asked the result to go. */
  readonly out?: Operand<Float32Array>;
}

/** A call being laid out in WASM memory: the wasm backend hands one to `WasmOp.encode`. */
export interface WasmCall {
  /** The address of an operand's data in WASM memory: a resident one in place, an array copied in. */
  stage(operand: Operand, name: string): number;
  /** A temporary block of `bytes`, freed when the call ends. */
  alloc(bytes: number): number;
  /** Where the result goes: `out` in place when it is resident, else a temporary block (`name`, for errors: options.out unless said). */
  output(out: Operand<Float32Array> | undefined, elements: number, name?: string): number;
  /** The `elements` floats at `ptr`, into `out` (when given) or a new array. */
  collect(ptr: number, elements: number, out: Operand<Float32Array> | undefined): Float32Array;
  /** Threads the call may run on (an op may cut work finer for several, where its bits do not depend on the cut). */
  readonly threads: number;
  /** Views of all of WASM memory (valid until the next allocation). */
  readonly f32: Float32Array;
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  readonly kernels: Kernels;
}

/** A call laid out as a job of independent items (see job.ts). */
export interface Encoded {
  readonly job: Float64Array;
  /** Scratch bytes each thread that runs items needs. */
  readonly scratchBytes: number;
  /** Where the op's result is (WasmCall.output's address), and its elements. */
  readonly outPtr: number;
  readonly size: number;
}

/** How an op runs on the wasm kernels: its job layout, the encoder, and what follows the items. */
export interface WasmOp<P extends OpPlan, R> {
  readonly layout: JobLayout<string>;
  encode(plan: P, call: WasmCall): Encoded;
  /** After every item ran: reductions across items, then the result read out of memory. */
  finish(plan: P, call: WasmCall, encoded: Encoded): R;
}

/** What the js implementation gets: the current array behind an operand. */
export type ArrayOf = <T extends Float32Array | Uint8Array>(operand: Operand<T>) => T;

/** One op: a name, its inputs, and its implementation on each backend. */
export interface Op<P extends OpPlan, R> {
  readonly name: string;
  /** The operands the op reads (not `out`): what an async call snapshots while it waits its turn. */
  inputs(plan: P): ReadonlyArray<Operand | undefined>;
  js(plan: P, arrayOf: ArrayOf): R;
  readonly wasm: WasmOp<P, R>;
}

/** Bytes of memory a backend holds. */
export interface MemoryStats {
  reservedBytes: number;
  usedBytes: number;
  /** What runs other than asked (workers that could not start), when anything does. */
  warnings?: string[];
}

/** A backend: runs any op's plan, owns resident memory. */
export interface Backend extends OperandResolver {
  readonly name: BackendName;
  readonly threads: number;
  run<P extends OpPlan, R>(op: Op<P, R>, plan: P): R;
  /** run() off the calling thread where the backend can (the wasm pool); same bits. */
  runAsync<P extends OpPlan, R>(op: Op<P, R>, plan: P): Promise<R>;
  /** A zero-filled tensor in this backend's memory. */
  tensor(dims: readonly number[], type: 'float32' | 'bool'): ResidentTensor;
  stats(): MemoryStats;
  /** Throws DISPOSED once the backend is disposed. */
  live(): void;
  dispose(): void;
}
