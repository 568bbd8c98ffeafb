// Runs plans on the wasm kernels: stage the inputs into the engine's linear memory (no copy when a
// tensor already lives there), call one kernel per (batch, head) or per matrix, copy the result out,
// and free every temporary block before returning, so nothing of a call stays behind.
import { AttentionError } from './errors.js';
import { WasmHeap } from './heap.js';
import type { AttentionPlan, MatmulPlan, SoftmaxPlan } from './plan.js';
import type { MaskView } from './tensor.js';
import { type Kernels, type WasmBuild, compiledModule, instantiateKernels } from './wasm-module.js';

const MASK_KIND = { bool: 1, float: 2 } as const;

/** Byte offset, in linear memory, of a typed array that already lives there; else -1. */
function residentAt(heap: WasmHeap, data: ArrayBufferView, name: string): number {
  if (!heap.isView(data)) return -1;
  if (!heap.isLiveResident(data)) {
    throw new AttentionError('INVALID_TENSOR', `${name} is a view of this engine's memory that is not a live tensor from engine.tensor() (released, or never one)`, name);
  }
  return data.byteOffset;
}

const overlaps = (a: ArrayBufferView, b: ArrayBufferView): boolean =>
  a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;

export class WasmBackend {
  readonly build: WasmBuild;
  readonly heap: WasmHeap;
  private readonly kernels: Kernels;

  constructor(build: WasmBuild, maxMemoryBytes: number, module: WebAssembly.Module = compiledModule(build)) {
    this.build = build;
    const maximum = Math.max(1, Math.floor(maxMemoryBytes / 65536));
    const memory = new WebAssembly.Memory({ initial: Math.min(maximum, 32), maximum, shared: true });
    this.kernels = instantiateKernels(module, memory);
    this.heap = new WasmHeap(memory, this.kernels.heap_base(), maximum * 65536);
  }

  /** Runs `body` with a function that stages arrays into memory; frees whatever it allocated. */
  private withBlocks<T>(body: (stage: (data: Float32Array | Uint8Array, name: string) => number, alloc: (bytes: number) => number) => T): T {
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
    try {
      return body(stage, alloc);
    } finally {
      for (const ptr of owned) this.heap.release(ptr);
    }
  }

  /** Copies `size` floats at `ptr` into `into` (or a new array) unless `into` already is that memory. */
  private collect(ptr: number, size: number, into: Float32Array | undefined): Float32Array {
    if (into && this.heap.isView(into) && into.byteOffset === ptr) return into;
    const view = this.heap.f32.subarray(ptr >>> 2, (ptr >>> 2) + size);
    if (into) {
      into.set(view);
      return into;
    }
    return view.slice();
  }

  private outputBlock(size: number, into: Float32Array | undefined, alloc: (bytes: number) => number): number {
    const at = into ? residentAt(this.heap, into, 'options.out') : -1;
    return at >= 0 ? at : alloc(size * 4);
  }

  attention(plan: AttentionPlan, q: Float32Array, k: Float32Array, v: Float32Array): Float32Array {
    const size = plan.batch * plan.qHeads * plan.seqQ * plan.valueDim;
    return this.withBlocks((stage, alloc) => {
      const qPtr = stage(q, 'q.data');
      const kPtr = stage(k, 'k.data');
      const vPtr = stage(v, 'v.data');
      const mask = plan.mask;
      const maskPtr = mask ? stage(mask.data, 'options.mask.data') : 0;
      const maskBytes = mask?.kind === 'bool' ? 1 : 4;
      const outPtr = this.outputBlock(size, plan.outBuffer, alloc);
      const scratch = alloc(this.kernels.f32_attention_scratch_bytes(plan.headDim, plan.valueDim));
      const group = plan.kvHeads === 0 ? 1 : plan.qHeads / plan.kvHeads;
      for (let b = 0; b < plan.batch; b++) {
        for (let h = 0; h < plan.qHeads; h++) {
          const kvHead = Math.floor(h / group);
          this.kernels.f32_attention(
            qPtr + 4 * (b * plan.q.batch + h * plan.q.head), plan.q.row,
            kPtr + 4 * (b * plan.k.batch + kvHead * plan.k.head), plan.k.row,
            vPtr + 4 * (b * plan.v.batch + kvHead * plan.v.head), plan.v.row,
            outPtr + 4 * (b * plan.out.batch + h * plan.out.head), plan.out.row,
            plan.seqQ, plan.seqKV, plan.headDim, plan.valueDim,
            plan.scale, plan.softcap,
            mask ? maskPtr + maskBytes * (b * mask.at.batch + h * mask.at.head) : 0, mask ? MASK_KIND[mask.kind] : 0, mask ? mask.at.row : 0,
            plan.offset, plan.left, plan.right, 0, scratch,
          );
        }
      }
      return this.collect(outPtr, size, plan.outBuffer);
    });
  }

  matmul(plan: MatmulPlan, a: Float32Array, b: Float32Array): Float32Array {
    const { m, n, k } = plan;
    const size = plan.aOffsets.length * m * n;
    return this.withBlocks((stage, alloc) => {
      const aPtr = stage(a, 'a.data');
      const bPtr = stage(b, 'b.data');
      const outPtr = this.outputBlock(size, plan.outBuffer, alloc);
      const scratch = alloc(this.kernels.f32_gemm_scratch_bytes());
      for (let index = 0; index < plan.aOffsets.length; index++) {
        this.kernels.f32_gemm(
          m, n, k, aPtr + 4 * plan.aOffsets[index], k, bPtr + 4 * plan.bOffsets[index], plan.transposeB ? k : n,
          plan.transposeB ? 1 : 0, outPtr + 4 * index * m * n, n, scratch,
        );
      }
      return this.collect(outPtr, size, plan.outBuffer);
    });
  }

  softmax(plan: SoftmaxPlan, x: Float32Array): Float32Array {
    const { matrices, rows, cols } = plan;
    const size = matrices * rows * cols;
    return this.withBlocks((stage, alloc) => {
      const xPtr = stage(x, 'x.data');
      const outPtr = this.outputBlock(size, plan.outBuffer, alloc);
      const mask: MaskView | undefined = plan.mask;
      const maskPtr = mask ? stage(mask.data, 'options.mask.data') : 0;
      const maskBytes = mask?.kind === 'bool' ? 1 : 4;
      for (let index = 0; index < matrices; index++) {
        const offset = 4 * index * rows * cols;
        this.kernels.f32_softmax_rows(
          xPtr + offset, cols, outPtr + offset, cols, rows, cols, plan.scale, 0,
          mask ? maskPtr + maskBytes * plan.maskOffsets[index] : 0, mask ? MASK_KIND[mask.kind] : 0, plan.maskRowStride,
          plan.causal ? 1 : 0, 0,
        );
      }
      return this.collect(outPtr, size, plan.outBuffer);
    });
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
        if (!released) this.heap.release(ptr);
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
}
