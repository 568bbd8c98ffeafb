// The allocator over the engine's WebAssembly.Memory. TypeScript owns every byte above the module's
// static data: ops allocate their inputs, outputs and scratch here and free them when they return,
// so space is reused across calls and memory grows only when a call needs more than has ever been
// free at once. Blocks are 64-byte aligned (a cache line; v128 loads need 16). Free blocks are kept
// sorted by address and merged with their neighbours, first fit.
import { AttentionError, human } from '../errors.js';
import { BlockTable } from './block-table.js';

const ALIGN = 64;
/**
 * Test aid: with WASM_ATTENTION_GUARDS=1 in the environment (the test suite sets it), every block
 * gets GUARD bytes of a known pattern before it and after its last requested byte, checked when the
 * block is freed: a kernel that writes outside a buffer it was handed fails loudly.
 */
const GUARD = 64;
const GUARD_BYTE = 0xa5;
const guardsOn = (): boolean => typeof process !== 'undefined' && process.env?.WASM_ATTENTION_GUARDS === '1';
const PAGE = 65536;
const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;


export interface HeapStats {
  /** Bytes of linear memory (all of it, static data included). */
  reservedBytes: number;
  /** Bytes in live allocations. */
  usedBytes: number;
}

export class WasmHeap {
  readonly memory: WebAssembly.Memory;
  private readonly maxBytes: number;
  /** Free blocks [start, end), sorted by start, never adjacent. */
  private free: Array<[number, number]> = [];
  /** Live blocks: the address handed out -> [block start, block size, bytes requested]. */
  private readonly blocks = new BlockTable();
  private readonly guards = guardsOn();
  private used = 0;
  private f32View: Float32Array;
  private u8View: Uint8Array;
  private i32View: Int32Array;
  /** Every buffer object memory has had (a shared memory's buffer is replaced, not detached, on growth). */
  private readonly buffers = new WeakSet<ArrayBufferLike>();

  constructor(memory: WebAssembly.Memory, heapBase: number, maxBytes: number) {
    this.memory = memory;
    this.maxBytes = maxBytes;
    const start = alignUp(heapBase, ALIGN);
    const end = memory.buffer.byteLength;
    if (end > start) this.free.push([start, end]);
    this.f32View = new Float32Array(memory.buffer);
    this.u8View = new Uint8Array(memory.buffer);
    this.i32View = new Int32Array(memory.buffer);
    this.buffers.add(memory.buffer);
  }

  // Only this allocator grows memory (the kernels never do), so the views are re-created right there.

  /** A Float32Array over all of memory, re-created after growth. */
  get f32(): Float32Array {
    return this.f32View;
  }

  /** A Uint8Array over all of memory, re-created after growth. */
  get u8(): Uint8Array {
    return this.u8View;
  }

  /** An Int32Array over all of memory, re-created after growth. */
  get i32(): Int32Array {
    return this.i32View;
  }

  private refreshViews(): void {
    this.f32View = new Float32Array(this.memory.buffer);
    this.u8View = new Uint8Array(this.memory.buffer);
    this.i32View = new Int32Array(this.memory.buffer);
    this.buffers.add(this.memory.buffer);
  }

  /** Whether `buffer` is (or was, before growth) this memory's buffer. */
  isBuffer(buffer: ArrayBufferLike): boolean {
    return this.buffers.has(buffer);
  }

  stats(): HeapStats {
    return { reservedBytes: this.memory.buffer.byteLength, usedBytes: this.used };
  }

  /**
   * Refuses, before anything is allocated or grown, a call whose blocks (at least `bytes` in all)
   * cannot fit next to what is in use, however memory is laid out.
   */
  checkFits(bytes: number): void {
    if (this.used + bytes > this.maxBytes) {
      throw new AttentionError('OUT_OF_MEMORY', `this call needs at least ${human(bytes)} of WASM memory; ${human(this.used)} are in use and the engine may grow to ${human(this.maxBytes)}`);
    }
  }

  /** Allocates `bytes` (64-byte aligned, at least 64), growing memory if needed; returns the address. */
  alloc(bytes: number): number {
    const guard = this.guards ? GUARD : 0;
    const size = alignUp(Math.max(bytes, 1), ALIGN) + 2 * guard;
    for (let i = 0; i < this.free.length; i++) {
      const [start, end] = this.free[i];
      if (end - start >= size) return this.take(i, size, bytes, guard);
    }
    this.grow(size);
    return this.alloc(bytes);
  }

  private take(index: number, size: number, bytes: number, guard: number): number {
    const block = this.free[index];
    const start = block[0];
    if (block[1] - start === size) this.free.splice(index, 1);
    else block[0] = start + size;
    const ptr = start + guard;
    this.blocks.set(ptr, start, size, bytes);
    this.used += size;
    if (guard) {
      this.u8View.fill(GUARD_BYTE, start, ptr);
      this.u8View.fill(GUARD_BYTE, ptr + bytes, start + size);
    }
    return ptr;
  }

  private checkGuards(ptr: number, start: number, size: number, bytes: number): void {
    const u8 = this.u8View;
    for (const [from, to] of [[start, ptr], [ptr + bytes, start + size]]) {
      for (let i = from; i < to; i++) {
        if (u8[i] !== GUARD_BYTE) {
          throw new Error(`wasm-attention: memory at ${i} beside the block [${ptr}, ${ptr + bytes}) was overwritten (guard check)`);
        }
      }
    }
  }

  /** Grows memory so that a free block of `size` bytes exists at its end. */
  private grow(size: number): void {
    const end = this.memory.buffer.byteLength;
    const last = this.free[this.free.length - 1];
    const tailFree = last && last[1] === end ? last[1] - last[0] : 0;
    const pages = Math.ceil((size - tailFree) / PAGE);
    if (end + pages * PAGE > this.maxBytes) {
      throw new AttentionError('OUT_OF_MEMORY', `this call needs ${human(size)} more of WASM memory; the engine has ${human(end)} and may grow to ${human(this.maxBytes)}`);
    }
    try {
      this.memory.grow(pages);
    } catch (cause) {
      throw new AttentionError('OUT_OF_MEMORY', `WASM memory could not grow from ${end} to ${end + pages * PAGE} bytes: ${String(cause)}`);
    }
    this.refreshViews();
    const newEnd = this.memory.buffer.byteLength;
    if (tailFree > 0) last[1] = newEnd;
    else this.free.push([end, newEnd]);
  }

  /** Frees a block returned by alloc. */
  release(handed: number): void {
    const slot = this.blocks.find(handed);
    if (slot < 0) throw new Error(`wasm-attention internal error: release of unknown block ${handed}`);
    const ptr = this.blocks.start(slot);
    const size = this.blocks.size(slot);
    if (this.guards) this.checkGuards(handed, ptr, size, this.blocks.bytes(slot));
    this.blocks.remove(slot);
    this.used -= size;
    let lo = 0;
    let hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.free[mid][0] < ptr) lo = mid + 1;
      else hi = mid;
    }
    const end = ptr + size;
    const prev = this.free[lo - 1];
    const next = this.free[lo];
    if (prev && prev[1] === ptr) {
      prev[1] = next && next[0] === end ? this.free.splice(lo, 1)[0][1] : end;
    } else if (next && next[0] === end) {
      next[0] = ptr;
    } else {
      this.free.splice(lo, 0, [ptr, end]);
    }
  }
}
