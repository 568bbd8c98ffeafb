// Packed weights: a [K, N] matrix laid out once, in the engine's memory, as the GEMM micro-kernels read
// it (panels of 8 columns, each K x 8 contiguous floats, zero past column N, subnormals as 0), so that
// every later matmul(x, packed) streams it as it is instead of packing it again. The weights of a model
// are multiplied this way on every token: a decode step's x·W is bound by reading W once.
//
// engine.packWeights(w) plans and runs the pack op below into a resident tensor that only the
// PackedWeights handle holds (nobody can pass it elsewhere or write it); release() gives it back, after
// the calls still using it settle (the resident tensor's pins).
import { type ArrayOf, type Encoded, type Op, type Operand, type OperandResolver, type OpPlan, type WasmCall, resultArray } from '../../backend.js';
import type { Kernels } from '../../backends/kernels.js';
import { AttentionError } from '../../errors.js';
import { HEADER, type ItemRunner, jobLayout } from '../../job.js';
import { ResidentTensor } from '../../memory/resident.js';
import { checkBoolean, checkResultSize, floatTensor, readOptions, readTensor } from '../../tensor.js';

/** Columns per panel (the micro-kernels' tile width). */
export const PANEL = 8;

/** Floats the packed form of a [k, n] matrix takes. */
export const packedLength = (k: number, n: number): number => Math.ceil(n / PANEL) * PANEL * k;

/** Options of `engine.packWeights`. */
export interface PackWeightsOptions {
  /** w is given as [N, K] (as torch's Linear stores its weight) and packed as its transpose. */
  transposeB?: boolean;
}

// Only this module makes handles and reads their insides: the constructor wants a token nobody else
// has, and the plan reads storage and shape through `internals`, never through properties a caller could
// redefine on the instance.
const MADE_HERE = Symbol('PackedWeights');
let internals: (w: PackedWeights) => { storage: ResidentTensor; k: number; n: number };

/** A [K, N] matrix packed for matmul, from `engine.packWeights`; pass it as matmul's b. */
export class PackedWeights {
  readonly #storage: ResidentTensor;
  readonly #k: number;
  readonly #n: number;

  /** @internal made by engine.packWeights only (anything else is refused) */
  constructor(token: symbol, storage: ResidentTensor, k: number, n: number) {
    if (token !== MADE_HERE) throw new AttentionError('INVALID_ARGUMENT', 'PackedWeights are made by engine.packWeights()', 'token');
    this.#storage = storage;
    this.#k = k;
    this.#n = n;
  }

  static {
    internals = (w) => ({ storage: w.#storage, k: w.#k, n: w.#n });
  }

  /** Whether `x` is a real PackedWeights (not merely an object with its prototype). */
  static is(x: unknown): x is PackedWeights {
    return typeof x === 'object' && x !== null && #storage in x;
  }

  /** [K, N]: the matrix the handle stands for, as matmul's b. */
  get dims(): [number, number] {
    return [this.#k, this.#n];
  }

  /** Whether release() was called. */
  get released(): boolean {
    return this.#storage.released;
  }

  /** Gives the memory back; calls still using the weights keep them until they settle. */
  release(): void {
    this.#storage.release();
  }
}

/** The handle for weights packed into `storage` (a resident float32 tensor of packedLength(k, n)). */
export const makePackedWeights = (storage: ResidentTensor, k: number, n: number): PackedWeights => new PackedWeights(MADE_HERE, storage, k, n);

/** The operand and shape of packed weights given as `name`, checked: this engine's, not released. */
export function packedOperand(w: PackedWeights, resolver: OperandResolver, name: string): { operand: Operand<Float32Array>; k: number; n: number } {
  const { storage, k, n } = internals(w);
  if (!resolver.owns(storage)) throw new AttentionError('INVALID_TENSOR', `${name} are packed weights of another engine; pack them with this engine's packWeights()`, name);
  if (storage.released) throw new AttentionError('INVALID_TENSOR', `${name} are packed weights that were released`, name);
  return { operand: { resident: storage, offset: 0, length: packedLength(k, n) }, k, n };
}

export interface PackPlan extends OpPlan {
  k: number;
  n: number;
  transposeB: boolean;
  w: Operand<Float32Array>;
  out: Operand<Float32Array> | undefined;
}

/** Reads w ([K, N], or [N, K] with transposeB) once; `out` (the packed storage) is given by the engine. */
export function planPack(w: unknown, options: unknown, resolver: OperandResolver): PackPlan {
  const read = readTensor(w, 'w');
  const opts = readOptions(options, 'options', ['transposeB']);
  const checked = floatTensor(read, resolver, 2);
  const transposeB = checkBoolean(opts.transposeB, 'options.transposeB');
  const [rows, cols] = checked.dims;
  const [k, n] = transposeB ? [cols, rows] : [rows, cols];
  if (k === 0 || n === 0) throw new AttentionError('INVALID_DIMS', `w must have K > 0 and N > 0, got dims [${checked.dims}]`, 'w.dims');
  checkResultSize(packedLength(k, n), `the packed weights of [${checked.dims}]`, 'w.dims');
  return { flops: 0, k, n, transposeB, w: checked.operand, out: undefined };
}

/** The plan with its storage: the engine makes the resident tensor once the plan has passed. */
export const withStorage = (plan: PackPlan, storage: ResidentTensor): PackPlan => ({ ...plan, out: { resident: storage, offset: 0, length: storage.length } });

/** packed[(p·K + r)·8 + j] = B(r, 8p + j), 0 past column N, subnormals as 0 (as f32_pack_panels). */
function packJs(plan: PackPlan, arrayOf: ArrayOf): Float32Array {
  const { k, n, transposeB } = plan;
  const w = arrayOf(plan.w);
  const out = arrayOf(plan.out!);
  for (let p = 0; p * PANEL < n; p++) {
    for (let r = 0; r < k; r++) {
      for (let j = 0; j < PANEL; j++) {
        const col = p * PANEL + j;
        const x = col < n ? (transposeB ? w[col * k + r] : w[r * n + col]) : 0;
        out[(p * k + r) * PANEL + j] = Math.abs(x) < 2 ** -126 ? 0 : x;
      }
    }
  }
  return resultArray(plan.out, out);
}

export const PACK_JOB = jobLayout(6, ['w', 'ld', 'transB', 'k', 'n', 'out'] as const);
const J = PACK_JOB.at;

/** The one item of a pack job: f32_pack_panels over the whole K. */
export const runPackItem: ItemRunner = (kernels: Kernels, job: Float64Array): void => {
  kernels.f32_pack_panels(job[J.w], job[J.ld], job[J.transB], job[J.k], job[J.n], job[J.out]);
};

export const packOp: Op<PackPlan, Float32Array> = {
  name: 'packWeights',
  inputs: (plan) => [plan.w],
  js: packJs,
  wasm: {
    layout: PACK_JOB,
    encode(plan: PackPlan, call: WasmCall): Encoded {
      const job = PACK_JOB.create();
      job[J.w] = call.stage(plan.w, 'w.data');
      job[J.ld] = plan.transposeB ? plan.k : plan.n;
      job[J.transB] = plan.transposeB ? 1 : 0;
      job[J.k] = plan.k;
      job[J.n] = plan.n;
      const size = packedLength(plan.k, plan.n);
      const outPtr = call.output(plan.out, size);
      job[J.out] = outPtr;
      job[HEADER.items] = 1;
      return { job, scratchBytes: 0, outPtr, size };
    },
    finish: (plan, call, encoded) => call.collect(encoded.outPtr, encoded.size, plan.out),
  },
};

