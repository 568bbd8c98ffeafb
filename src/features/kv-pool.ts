// A paged KV pool: the keys and values of many sequences in fixed-size pages of the engine's memory
// (PagedAttention), taken on demand and shared between forks, with one attention call per step over
// all the sequences that take part (continuous batching).
//
// A page holds pageSize positions of every kv head, as float32, float16 or int8 (options.dtype; see
// src/ops/paged-attention/pages.ts for the element types and the layout: head-major, keys apart from
// values). Pages live in equal slabs (resident tensors of several pages each), reserved as they are
// first needed and kept for reuse until the pool is disposed.
// A sequence is a list of page ids and a length; each page has a reference count (forks share pages),
// and a page goes back to the free list when its count reaches 0 and no running step reads it.
//
// A step (pool.step) reads and checks every item first, then counts the pages it needs (new pages,
// and a copy of each shared, partly filled last page it will write: copy-on-write); if they do not
// fit, it refuses with CACHE_FULL and nothing changed. Then it writes each item's k (rotated by RoPE
// when asked) and v into its pages, rotates q, and runs one paged-attention call over all items
// (src/ops/paged-attention/). If that call fails, every sequence of the step is put back as it was.
import { type Backend, type Operand, operandArray } from '../backend.js';
import { AttentionError, human } from '../errors.js';
import type { ResidentTensor } from '../memory/resident.js';
import { MAX_HEAD_DIM } from '../ops/attention/plan.js';
import { pagedAttentionOp } from '../ops/paged-attention/index.js';
import {
  HALF_MAX, KV_DTYPES, type KVDtype, type PageLayout, type SlabViews, blockSizes, bytesPerToken, elementBytes, pageBytes, rowsAt, slabBytes, slabViews, storeRow, valueStride,
} from '../ops/paged-attention/pages.js';
import type { PagedAttentionPlan, PagedItem, PageStore } from '../ops/paged-attention/plan.js';
import { pagedFlops } from '../ops/paged-attention/plan.js';
import { rotateRows } from '../ops/rope/js.js';
import { type RopeOptions, type RopeSpec, angleTables, positionRange, readRope } from '../ops/rope/options.js';
import { type Tensor, type TensorLike, checkFinite, checkFloat32, checkInteger, describe, floatTensor, readOptions, readTensor } from '../tensor.js';
import { type BatcherOptions, StepBatcher } from './batcher.js';

export interface KVPoolOptions {
  kvHeads: number;
  headDim: number;
  /** Default: headDim. */
  valueDim?: number;
  /** Positions per page; default 16. */
  pageSize?: number;
  /**
   * What a page stores each key and value as: 'float32' (the default), 'float16' (IEEE half, round to
   * nearest even; values beyond ±65504 are refused) or 'int8' (symmetric, one float32 scale per
   * position and kv head for its keys and one for its values: absmax / 127).
   */
  dtype?: KVDtype;
  /** Capacity in positions (rounded up to whole pages). Give this or maxBytes. */
  maxTokens?: number;
  /** Capacity in bytes of pages. Give this or maxTokens. */
  maxBytes?: number;
}

/** One item of a step: q [Hq, n, Dk], k [Hkv, n, Dk], v [Hkv, n, Dv] for one sequence of the pool. */
export interface PoolStepItem {
  sequence: KVSequence;
  q: TensorLike<Float32Array>;
  k: TensorLike<Float32Array>;
  v: TensorLike<Float32Array>;
}

export interface PoolStepOptions {
  /** Default 1/sqrt(headDim). */
  scale?: number;
  /** c > 0: each scaled score s becomes c·tanh(s/c). */
  softcap?: number;
  /** A sliding window: query position p sees keys p - left .. p. */
  window?: { left?: number };
  /** Rotate q and k by their absolute positions (the sequence's length before the step, plus i). */
  rope?: RopeOptions;
}

export interface KVPoolStats {
  dtype: KVDtype;
  pageSize: number;
  /** Pages the pool may hold (its capacity). */
  pages: number;
  /** Pages held by sequences now. */
  pagesUsed: number;
  /** Live sequences. */
  sequences: number;
  /** Bytes of pages reserved in the engine's memory now. */
  bytes: number;
  /** Bytes one cached position takes (keys, values and int8 scales of every kv head; page padding not counted). */
  bytesPerToken: number;
}

/** Bytes of memory per slab of pages, about (a slab holds at least one page). */
const SLAB_BYTES = 8 * 2 ** 20;
/**
 * export() format: magic, then version, dtype (DTYPE_CODES), kvHeads, headDim, valueDim, length as u32
 * little-endian, then little-endian rows as the pages hold them: keys [kvHeads, length, headDim], values
 * [kvHeads, length, valueDim] (float32, float16 bit patterns or int8), then for int8 the key scales
 * [kvHeads, length] and the value scales [kvHeads, length] (float32).
 */
const EXPORT_MAGIC = 0x564b4157; // 'WAKV' read as a little-endian u32
const EXPORT_VERSION = 1;
const EXPORT_HEADER_BYTES = 32;
const DTYPE_CODES: Record<KVDtype, number> = { float32: 0, float16: 1, int8: 2 };

/** Rows as the pages hold them (elements of the pool's dtype, packed [kvHeads, n, width]) and their int8 scales [kvHeads, n]. */
interface StoredRows {
  k: Float32Array | Uint16Array | Int8Array;
  v: Float32Array | Uint16Array | Int8Array;
  kScales: Float32Array;
  vScales: Float32Array;
}

/** Keys and values of n new positions for one sequence, read once and checked. */
interface Entries {
  /** The caller's handle (none for an import). */
  sequence?: KVSequence;
  state: SequenceState;
  /** New keys and values as floats, stored through the pool's dtype (empty for an import). */
  k: Float32Array;
  v: Float32Array;
  /** Rows already in the page format (an import): copied as they are. */
  stored?: StoredRows;
  /** The new keys rotated by the step's RoPE at their positions, checked storable (rotateKeys). */
  rotated?: Float32Array;
  n: number;
  /** RoPE's cos and sin for the positions this entry's keys and queries take (built once per step). */
  tables?: { start: number; cos: Float32Array; sin: Float32Array };
}

/** Continuous batching over a pool; see pool.batcher(). */
export interface Batcher {
  /** pool.step for one sequence, run in a batch with whatever other calls are waiting; resolves to its output [Hq, n, Dv]. */
  step(sequence: KVSequence, q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: PoolStepOptions): Promise<Tensor>;
  /** Calls waiting for a step. */
  readonly waiting: number;
}

/** @internal a step's items read once and checked, with the step's options */
export interface StepRead {
  entries: Array<Entries & { sequence: KVSequence; q: Operand<Float32Array>; qHeads: number }>;
  scale: number;
  softcap: number;
  left: number;
  rope: RopeSpec | undefined;
}

/** What applying a step changed in one sequence, to put it back. */
interface Undo {
  state: SequenceState;
  pages: number[];
  length: number;
  /** Pages taken from the free list. */
  taken: number[];
  /** The shared page a copy-on-write replaced (its reference was dropped), or -1. */
  unshared: number;
}

/** A sequence's state, which only this module sees (a sequence cannot be forged or edited from outside). */
interface SequenceState {
  readonly pool: KVPool;
  /** Page ids in order. */
  pages: number[];
  length: number;
  /** Steps queued or running on the sequence (stepAsync, the batcher). */
  busy: number;
  disposed: boolean;
}

const states = new WeakMap<object, SequenceState>();
const MAKE = Symbol('KVSequence');

/** A sequence of the pool: its pages and length. Make one with pool.sequence(), fork() or pool.import(). */
export class KVSequence {
  /** @internal use pool.sequence(), sequence.fork() or pool.import() */
  constructor(token: symbol, state: SequenceState) {
    if (token !== MAKE) throw new AttentionError('INVALID_ARGUMENT', 'make sequences with pool.sequence(), sequence.fork() or pool.import()');
    states.set(this, state);
  }

  /** Positions held. */
  get length(): number {
    return states.get(this)!.length;
  }

  get disposed(): boolean {
    return states.get(this)!.disposed;
  }

  /** Stores k [Hkv, n, Dk] and v [Hkv, n, Dv] as given (no attention, no rotation), after the positions held. */
  append(k: TensorLike<Float32Array>, v: TensorLike<Float32Array>): void {
    states.get(this)!.pool.appendTo(this, k, v);
  }

  /** A new sequence holding the same positions: it shares this one's pages until either writes into a shared one. */
  fork(): KVSequence {
    return states.get(this)!.pool.forkOf(this);
  }

  /** The keys and values held, as bytes that pool.import() (of any pool with the same heads and dims) turns back into a sequence. */
  export(): Uint8Array {
    return states.get(this)!.pool.exportOf(this);
  }

  /** Gives the sequence's pages back (those no fork still holds). Later use throws DISPOSED. */
  dispose(): void {
    const state = states.get(this)!;
    if (state.disposed) return;
    state.disposed = true;
    state.pool.forget(state);
    state.pages = [];
    state.length = 0;
  }
}

export class KVPool {
  readonly kvHeads: number;
  readonly headDim: number;
  readonly valueDim: number;
  readonly pageSize: number;
  readonly dtype: KVDtype;
  /** Pages the pool may hold. */
  readonly maxPages: number;
  private readonly backend: Backend;
  private readonly slabPages: number;
  /** The pages' layout (see PageStore). */
  private readonly layout: PageLayout;
  private slabs: ResidentTensor[] = [];
  private readonly refs: Int32Array;
  /** Pages with a reference. */
  private used = 0;
  private free: number[] = [];
  /** Pages whose last reference went while a step was running: free once no step runs. */
  private pendingFree: number[] = [];
  private running = 0;
  /** A trim that had to wait for the running steps: the slabs to keep. */
  private trimPending: number | undefined;
  private readonly live = new Set<SequenceState>();
  private asyncTail: Promise<void> = Promise.resolve();
  private disposed = false;

  /** @internal use engine.kvPool */
  constructor(backend: Backend, options: KVPoolOptions) {
    const opts = readOptions(options, 'options', ['kvHeads', 'headDim', 'valueDim', 'pageSize', 'dtype', 'maxTokens', 'maxBytes']);
    const int = (name: keyof KVPoolOptions, min: number, fallback?: number): number => checkInteger(opts[name], `options.${name}`, min, fallback);
    this.kvHeads = int('kvHeads', 1);
    this.headDim = int('headDim', 1);
    this.valueDim = int('valueDim', 1, this.headDim);
    this.pageSize = int('pageSize', 1, 16);
    this.dtype = readDtype(opts.dtype);
    const onePage = pageBytes(this);
    if (opts.maxTokens === undefined && opts.maxBytes === undefined) {
      throw new AttentionError('INVALID_OPTION', 'options.maxTokens or options.maxBytes is required: the most the pool may hold', 'options.maxTokens');
    }
    if (opts.maxTokens !== undefined && opts.maxBytes !== undefined) {
      throw new AttentionError('INVALID_OPTION', 'give options.maxTokens or options.maxBytes, not both', 'options.maxBytes');
    }
    let maxPages = opts.maxTokens !== undefined ? Math.ceil(int('maxTokens', 1) / this.pageSize) : Math.floor(int('maxBytes', 1) / onePage);
    if (maxPages < 1) {
      throw new AttentionError('INVALID_OPTION', `options.maxBytes ${opts.maxBytes} holds no page of ${human(onePage)}`, 'options.maxBytes');
    }
    if (maxPages > 2 ** 24 || onePage > 2 ** 30) {
      throw new AttentionError('OUT_OF_MEMORY', `a pool of ${maxPages} pages of ${human(onePage)} is more than the engine's memory can address`, opts.maxTokens !== undefined ? 'options.maxTokens' : 'options.maxBytes');
    }
    // slabs of equal size (a head's offset inside a slab is then the same in all of them), about
    // SLAB_BYTES each: with maxTokens the last may have room past maxTokens; with maxBytes the pool holds
    // the whole number of pages per slab that keeps every slab, and so the pool, within maxBytes
    const slabCount = Math.ceil(maxPages / Math.max(1, Math.floor(SLAB_BYTES / onePage)));
    this.slabPages = opts.maxTokens !== undefined ? Math.ceil(maxPages / slabCount) : Math.floor(maxPages / slabCount);
    if (opts.maxTokens === undefined) maxPages = this.slabPages * slabCount;
    this.maxPages = maxPages;
    this.layout = { dtype: this.dtype, slabPages: this.slabPages, pageSize: this.pageSize, kvHeads: this.kvHeads, headDim: this.headDim, valueDim: this.valueDim };
    this.refs = new Int32Array(this.maxPages);
    this.backend = backend;
  }

  private check(): void {
    this.backend.live();
    if (this.disposed) throw new AttentionError('DISPOSED', 'this KV pool was disposed');
  }

  /** A new, empty sequence. */
  sequence(): KVSequence {
    this.check();
    return this.made([], 0);
  }

  /** A new sequence over these pages (their references already counted). */
  private made(pages: number[], length: number): KVSequence {
    const state: SequenceState = { pool: this, pages, length, busy: 0, disposed: false };
    this.live.add(state);
    return new KVSequence(MAKE, state);
  }

  stats(): KVPoolStats {
    const perToken = bytesPerToken(this);
    if (this.disposed) return { dtype: this.dtype, pageSize: this.pageSize, pages: this.maxPages, pagesUsed: 0, sequences: 0, bytes: 0, bytesPerToken: perToken };
    return {
      dtype: this.dtype,
      pageSize: this.pageSize,
      pages: this.maxPages,
      pagesUsed: this.used,
      sequences: this.live.size,
      bytes: this.slabs.reduce((sum, slab) => sum + 4 * slab.length, 0),
      bytesPerToken: perToken,
    };
  }

  /**
   * Appends each item's k and v to its sequence, then attends its q over the sequence's whole
   * history (causal, aligned bottom-right: query i of n sees keys up to length - n + i). Returns
   * each item's output [Hq, n, Dv], in item order.
   */
  step(items: readonly PoolStepItem[], options?: PoolStepOptions): Tensor[] {
    this.check();
    const read = this.readStep(items, options, false);
    for (const { state } of read.entries) this.notBusy(state);
    return this.runStep(read);
  }

  /** step() on the engine's worker threads. Steps of one pool run in call order. */
  async stepAsync(items: readonly PoolStepItem[], options?: PoolStepOptions): Promise<Tensor[]> {
    this.check();
    // inputs are copied now: the caller may reuse its arrays at once
    const read = this.readStep(items, options, true);
    this.hold(read, 1);
    try {
      return await this.queued(read);
    } finally {
      this.hold(read, -1);
    }
  }

  /** @internal counts a read step as pending on its sequences (+1) or no longer (-1): sync calls on them are refused meanwhile */
  hold(read: StepRead, by: 1 | -1): void {
    for (const { state } of read.entries) state.busy += by;
  }

  /** @internal runs a read step on the workers once the pool's earlier async steps are done */
  async queued(read: StepRead): Promise<Tensor[]> {
    const previous = this.asyncTail;
    let next!: () => void;
    this.asyncTail = new Promise<void>((resolve) => (next = resolve));
    try {
      await previous;
      this.check();
      return await this.runStep(read, true);
    } finally {
      next();
    }
  }

  /** A batcher: calls arriving while a step runs go into the next step together; see Batcher. */
  batcher(options?: BatcherOptions): Batcher {
    this.check();
    return new StepBatcher<KVSequence, StepRead>(this, options);
  }

  /** Makes a sequence from sequence.export()'s bytes. */
  import(bytes: Uint8Array | ArrayBuffer): KVSequence {
    this.check();
    const { stored, length } = this.readExport(bytes);
    const state: SequenceState = { pool: this, pages: [], length: 0, busy: 0, disposed: false };
    const entries: Entries = { state, k: new Float32Array(0), v: new Float32Array(0), stored, n: length };
    this.reserve([entries], 'bytes');
    this.apply([entries], undefined);
    this.live.add(state);
    return new KVSequence(MAKE, state);
  }

  /** Gives every page back to the engine; every sequence of the pool is disposed. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const state of this.live) {
      state.disposed = true;
      state.pages = [];
      state.length = 0;
    }
    this.live.clear();
    for (const slab of this.slabs) slab.release();
    this.slabs = [];
  }

  /** @internal sequence.append */
  appendTo(sequence: KVSequence, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>): void {
    this.check();
    const state = this.usable(sequence, 'sequence');
    this.notBusy(state);
    const entries = this.readEntries(sequence, state, readTensor(k, 'k'), readTensor(v, 'v'), false, 'k', 'v');
    this.reserve([entries], 'k');
    this.apply([entries], undefined);
  }

  /** @internal sequence.fork */
  forkOf(sequence: KVSequence): KVSequence {
    this.check();
    const state = this.usable(sequence, 'sequence');
    this.notBusy(state);
    for (const page of state.pages) this.refs[page]++;
    return this.made([...state.pages], state.length);
  }

  /** @internal sequence.export */
  exportOf(sequence: KVSequence): Uint8Array {
    this.check();
    const state = this.usable(sequence, 'sequence');
    this.notBusy(state);
    const { kvHeads, headDim, valueDim } = this;
    const length = state.length;
    const stored = this.readRows(state.pages, length);
    const bytes = new Uint8Array(exportBytes(this, length));
    const header = new DataView(bytes.buffer);
    [EXPORT_MAGIC, EXPORT_VERSION, DTYPE_CODES[this.dtype], kvHeads, headDim, valueDim, length].forEach((x, i) => header.setUint32(4 * i, x, true));
    let at = EXPORT_HEADER_BYTES;
    for (const part of exportParts(this.dtype, stored)) at = writeLittleEndian(bytes, at, part);
    return bytes;
  }

  /** @internal sequence.dispose: drops its reference to each of its pages */
  forget(state: SequenceState): void {
    this.live.delete(state);
    for (const page of state.pages) this.release(page);
  }

  private release(page: number): void {
    if (this.disposed) return;
    if (--this.refs[page] > 0) return;
    this.used--;
    if (this.running > 0) this.pendingFree.push(page);
    else this.free.push(page);
  }

  /** The state of a live sequence of this pool; refuses anything else. */
  private usable(sequence: unknown, name: string): SequenceState {
    const state = typeof sequence === 'object' && sequence !== null ? states.get(sequence) : undefined;
    if (state?.disposed) throw new AttentionError('DISPOSED', `${name} was disposed`, name);
    if (!state || state.pool !== this) {
      throw new AttentionError('INVALID_ARGUMENT', `${name} must be a live sequence of this pool (pool.sequence(), fork() or pool.import()), got ${describe(sequence)}`, name);
    }
    return state;
  }

  private notBusy(state: SequenceState): void {
    if (state.busy > 0) {
      throw new AttentionError('BUSY', 'this sequence has a stepAsync queued or running: await it first (or use the batcher, which keeps each sequence\'s steps in order)', 'sequence');
    }
  }

  /** @internal reads and checks every item and the options; copies the data when `copy` (async steps) */
  readStep(items: unknown, options: unknown, copy: boolean): StepRead {
    if (!Array.isArray(items)) throw new AttentionError('INVALID_ARGUMENT', `items must be an array of { sequence, q, k, v }, got ${describe(items)}`, 'items');
    if (Math.max(this.headDim, this.valueDim) > MAX_HEAD_DIM) {
      // the kernel's scratch (blocks of 128 keys of the head dim) is sized for attention's limit
      throw new AttentionError('UNSUPPORTED', `head dim ${this.headDim} / value dim ${this.valueDim}: attention supports at most ${MAX_HEAD_DIM} (append, fork, export and import work)`, 'items');
    }
    const opts = readOptions(options, 'options', ['scale', 'softcap', 'window', 'rope']);
    const scale = checkFloat32(opts.scale, 'options.scale', 1 / Math.sqrt(this.headDim));
    const softcap = checkFinite(opts.softcap, 'options.softcap', 0);
    if (opts.softcap !== undefined && !(Math.fround(softcap) > 0 && Number.isFinite(Math.fround(softcap)))) {
      throw new AttentionError('INVALID_OPTION', `options.softcap must be > 0 and within float32 range (leave it out to turn softcapping off), got ${softcap}`, 'options.softcap');
    }
    let left = -1;
    if (opts.window !== undefined) {
      const value = readOptions(opts.window, 'options.window', ['left']).left;
      if (value !== undefined) left = Math.min(checkInteger(value, 'options.window.left', 0), 2 ** 30);
    }
    const rope = readRope(opts.rope, this.headDim);
    const snapshot = readItems(items);
    const seen = new Set<SequenceState>();
    const entries = snapshot.map((raw, s) => {
      const name = `items[${s}]`;
      if (raw === null || typeof raw !== 'object') throw new AttentionError('INVALID_ARGUMENT', `${name} must be { sequence, q, k, v }, got ${describe(raw)}`, name);
      const item = asArgument(() => readOptions(raw, name, ['sequence', 'q', 'k', 'v']));
      const sequence = item.sequence as KVSequence;
      const state = this.usable(sequence, `${name}.sequence`);
      if (seen.has(state)) throw new AttentionError('INVALID_ARGUMENT', `${name}.sequence appears twice in one step; give it one item with all its new positions`, `${name}.sequence`);
      seen.add(state);
      const qRead = readTensor(item.q, `${name}.q`);
      const entries = this.readEntries(sequence, state, readTensor(item.k, `${name}.k`), readTensor(item.v, `${name}.v`), copy, `${name}.k`, `${name}.v`);
      const q = floatTensor(qRead, this.backend);
      if (q.dims.length !== 3) throw new AttentionError('INVALID_DIMS', `${name}.q must be [Hq, n, Dk], got dims [${q.dims}]`, `${name}.q.dims`);
      const [qHeads, n, headDim] = q.dims;
      if (qHeads < 1 || qHeads % this.kvHeads !== 0) {
        throw new AttentionError('SHAPE_MISMATCH', `${name}.q.dims[0] (query heads) is ${qHeads}, not a positive multiple of the pool's ${this.kvHeads} kv heads`, `${name}.q.dims[0]`);
      }
      if (n !== entries.n) throw new AttentionError('SHAPE_MISMATCH', `${name}.q has ${n} positions but k has ${entries.n}`, `${name}.q.dims[1]`);
      if (headDim !== this.headDim) throw new AttentionError('SHAPE_MISMATCH', `${name}.q.dims[2] (head dim) is ${headDim} but the pool holds ${this.headDim}`, `${name}.q.dims[2]`);
      const qOperand: Operand<Float32Array> = copy ? { array: operandArray(q.operand).slice(), offset: 0, length: q.operand.length } : q.operand;
      return { ...entries, sequence, q: qOperand, qHeads };
    });
    return { entries, scale, softcap, left, rope };
  }

  /** Checks one sequence's new keys [Hkv, n, Dk] and values [Hkv, n, Dv] (n >= 1). */
  private readEntries(sequence: KVSequence, state: SequenceState, kRead: ReturnType<typeof readTensor>, vRead: ReturnType<typeof readTensor>, copy: boolean, kName: string, vName: string): Entries {
    const k = floatTensor(kRead, this.backend);
    const v = floatTensor(vRead, this.backend);
    for (const [t, name, width] of [[k, kName, this.headDim], [v, vName, this.valueDim]] as const) {
      if (t.dims.length !== 3) throw new AttentionError('INVALID_DIMS', `${name} must be [Hkv, n, ${width}], got dims [${t.dims}]`, `${name}.dims`);
      if (t.dims[0] !== this.kvHeads) throw new AttentionError('SHAPE_MISMATCH', `${name}.dims[0] (kv heads) is ${t.dims[0]} but the pool holds ${this.kvHeads}`, `${name}.dims[0]`);
      if (t.dims[2] !== width) throw new AttentionError('SHAPE_MISMATCH', `${name}.dims[2] is ${t.dims[2]} but the pool holds ${width}`, `${name}.dims[2]`);
      if (t.dims[1] < 1) throw new AttentionError('SHAPE_MISMATCH', `${name} has no new position (dims [${t.dims}]); n must be >= 1`, `${name}.dims[1]`);
    }
    if (v.dims[1] !== k.dims[1]) throw new AttentionError('SHAPE_MISMATCH', `${vName} has ${v.dims[1]} positions but ${kName} has ${k.dims[1]}`, `${vName}.dims[1]`);
    // copied when the call is async, or when the data is a resident tensor: a view of the engine's
    // memory, which taking a new slab may grow (detaching it, without SharedArrayBuffer) before the rows are stored
    const data = (t: typeof k): Float32Array => (copy || t.operand.resident ? operandArray(t.operand).slice() : operandArray(t.operand));
    const [kData, vData] = [data(k), data(v)];
    checkStorable(kData, kName, this.dtype);
    checkStorable(vData, vName, this.dtype);
    return { sequence, state, k: kData, v: vData, n: k.dims[1] };
  }

  /**
   * Rotates each entry's new keys by RoPE at the positions they will take, and refuses them
   * (INVALID_TENSOR, before anything changes) when a page cannot hold the result: a rotation mixes two
   * elements, so finite keys within range can come out past float16's ±65504 or float32's range, which
   * checkStorable could not see before the positions were known. applyOne stores entry.rotated.
   */
  private rotateKeys(entries: readonly Entries[], rope: RopeSpec, name: (index: number) => string): void {
    entries.forEach((entry, index) => {
      if (entry.n === 0 || entry.stored) return;
      const k = rotated(entry.k, this.kvHeads, entry.n, this.headDim, tablesOf(entry, entry.state.length, rope), rope);
      checkStorable(k, name(index), this.dtype, ' rotated by RoPE at its position');
      entry.rotated = k;
    });
  }

  /** Pages the entries need beyond those they hold (a copy of a shared, partly filled last page counts). */
  private reserve(entries: readonly Entries[], argument: string): void {
    let needed = 0;
    // shared, partly filled last pages the step writes into, and how many of its items write each
    const writers = new Map<number, number>();
    for (const { state, n } of entries) {
      const held = state.pages.length;
      needed += Math.ceil((state.length + n) / this.pageSize) - held;
      const last = state.pages[held - 1];
      if (state.length % this.pageSize !== 0 && this.refs[last] > 1) writers.set(last, (writers.get(last) ?? 0) + 1);
    }
    // each writer copies the page while someone else still holds it: the last of all its holders writes in place
    for (const [page, count] of writers) needed += Math.min(count, this.refs[page] - 1);
    const open = this.free.length + Math.max(0, this.maxPages - this.slabs.length * this.slabPages);
    if (needed > open) {
      const what = argument === 'bytes' ? 'the import' : 'the step';
      throw new AttentionError('CACHE_FULL', `${what} needs ${needed} more pages of ${this.pageSize} positions; the pool has ${open} of its ${this.maxPages} free`, argument);
    }
    // reserve the slabs the new pages need now, so nothing below can fail for memory
    const slabsBefore = this.slabs.length;
    try {
      while (this.free.length < needed) this.growSlab();
    } catch (error) {
      while (this.slabs.length > slabsBefore) this.dropSlab();
      throw error;
    }
  }

  private growSlab(): void {
    const first = this.slabs.length * this.slabPages;
    const pages = Math.min(this.slabPages, this.maxPages - first);
    this.slabs.push(this.backend.tensor([slabBytes(this.layout) / 4], 'float32'));
    for (let p = first + pages - 1; p >= first; p--) this.free.push(p);
  }

  private dropSlab(): void {
    const slab = this.slabs.pop()!;
    const first = this.slabs.length * this.slabPages;
    this.free = this.free.filter((p) => p < first);
    this.pendingFree = this.pendingFree.filter((p) => p < first);
    slab.release();
  }

  /** Gives back the slabs past the first `keep` while the newest holds no page (once no step runs). */
  private trim(keep: number): void {
    if (this.running > 0) {
      this.trimPending = Math.min(this.trimPending ?? keep, keep);
      return;
    }
    while (this.slabs.length > keep) {
      const first = (this.slabs.length - 1) * this.slabPages;
      const last = Math.min(this.maxPages, first + this.slabPages);
      for (let p = first; p < last; p++) if (this.refs[p] > 0) return;
      this.dropSlab();
    }
  }

  private take(undo: Undo): number {
    const page = this.free.pop()!;
    this.refs[page] = 1;
    this.used++;
    undo.taken.push(page);
    return page;
  }

  /**
   * Writes each entry's keys (rotated when `rope`) and values after its sequence's positions,
   * taking pages and copying a shared last page first; returns how to put it all back.
   */
  private apply(entries: readonly Entries[], rope: RopeSpec | undefined): Undo[] {
    const undos: Undo[] = [];
    try {
      for (const entry of entries) this.applyOne(entry, rope, undos);
    } catch (error) {
      // nothing here should throw once the step was checked; if it does, no sequence keeps a part of it
      this.undo(undos);
      throw error;
    }
    return undos;
  }

  /** apply() for one entry; its undo goes into `undos` before anything changes. */
  private applyOne(entry: Entries, rope: RopeSpec | undefined, undos: Undo[]): void {
    {
      const { state, n } = entry;
      const undo: Undo = { state, pages: [...state.pages], length: state.length, taken: [], unshared: -1 };
      undos.push(undo);
      const last = state.pages.length - 1;
      if (state.length % this.pageSize !== 0 && this.refs[state.pages[last]] > 1) {
        const shared = state.pages[last];
        const copy = this.take(undo);
        this.copyPage(shared, copy);
        this.refs[shared]--;
        undo.unshared = shared;
        state.pages[last] = copy;
      }
      while (state.pages.length * this.pageSize < state.length + n) state.pages.push(this.take(undo));
      const k = entry.rotated ?? (rope ? rotated(entry.k, this.kvHeads, n, this.headDim, tablesOf(entry, state.length, rope), rope) : entry.k);
      this.writeRows(state.pages, state.length, n, entry.stored ?? { k, v: entry.v });
      state.length += n;
    }
  }

  private undo(undos: readonly Undo[]): void {
    for (const { state, pages, length, taken, unshared } of undos) {
      if (state.disposed) continue; // its dispose gave its pages back, taken ones included
      state.pages = pages;
      state.length = length;
      for (const page of taken) this.release(page);
      if (unshared >= 0) this.refs[unshared]++;
    }
  }

  /** The views (of `views`, this.views()) of the slab holding `page`, and the page's index in it. */
  private pageOf(page: number, views: SlabViews[]): { slab: SlabViews; index: number } {
    const slab = Math.floor(page / this.slabPages);
    return { slab: views[slab], index: page - slab * this.slabPages };
  }

  /** Views of every slab as memory is now: made once per call that copies rows, not per row. */
  private views(): SlabViews[] {
    return this.slabs.map((slab) => slabViews(slab.view() as Float32Array));
  }

  /** Copies page `from` into page `to`: every head's key and value blocks (rows and scales). */
  private copyPage(from: number, to: number): void {
    const views = this.views();
    const source = this.pageOf(from, views);
    const target = this.pageOf(to, views);
    const blocks = blockSizes(this.layout);
    for (let kvHead = 0; kvHead < this.kvHeads; kvHead++) {
      const a = rowsAt(this.layout, source.index, kvHead, 0);
      const b = rowsAt(this.layout, target.index, kvHead, 0);
      target.slab.bytes.set(source.slab.bytes.subarray(a.key, a.key + blocks.key), b.key);
      target.slab.bytes.set(source.slab.bytes.subarray(a.value, a.value + blocks.value), b.value);
    }
  }

  /**
   * Writes `count` positions after position `start` of a sequence into its pages: floats k [Hkv,
   * count, Dk] and v [Hkv, count, Dv] stored through the pool's dtype, or rows already in the page
   * format, copied as they are.
   */
  private writeRows(pages: readonly number[], start: number, count: number, rows: { k: Float32Array; v: Float32Array } | StoredRows): void {
    const { headDim, valueDim, dtype } = this;
    const stored = 'kScales' in rows;
    const bytes = elementBytes(dtype);
    const stride = valueStride(dtype);
    const views = this.views();
    for (let kvHead = 0; kvHead < this.kvHeads; kvHead++) {
      for (let t = 0; t < count; t++) {
        const position = start + t;
        const row = kvHead * count + t;
        const { slab, index } = this.pageOf(pages[Math.floor(position / this.pageSize)], views);
        const at = rowsAt(this.layout, index, kvHead, position % this.pageSize);
        if (stored) {
          copyElements(rows.k, row * headDim, headDim, slab, at.key, bytes, 1);
          copyElements(rows.v, row * valueDim, valueDim, slab, at.value, bytes, stride);
          if (dtype === 'int8') {
            slab.f32[at.keyScale >> 2] = rows.kScales[row];
            slab.f32[at.valueScale >> 2] = rows.vScales[row];
          }
        } else {
          storeRow(dtype, slab, at.key, at.keyScale, rows.k, row * headDim, headDim);
          storeRow(dtype, slab, at.value, at.valueScale, rows.v, row * valueDim, valueDim, stride);
        }
      }
    }
  }

  /** The first `length` positions of a sequence's pages, as the pages hold them. */
  private readRows(pages: readonly number[], length: number): StoredRows {
    const { kvHeads, headDim, valueDim, dtype } = this;
    const make = (n: number): StoredRows['k'] => (dtype === 'float32' ? new Float32Array(n) : dtype === 'float16' ? new Uint16Array(n) : new Int8Array(n));
    const scales = dtype === 'int8' ? kvHeads * length : 0;
    const rows: StoredRows = { k: make(kvHeads * length * headDim), v: make(kvHeads * length * valueDim), kScales: new Float32Array(scales), vScales: new Float32Array(scales) };
    const bytes = elementBytes(dtype);
    const stride = valueStride(dtype);
    const views = this.views();
    for (let kvHead = 0; kvHead < kvHeads; kvHead++) {
      for (let t = 0; t < length; t++) {
        const row = kvHead * length + t;
        const { slab, index } = this.pageOf(pages[Math.floor(t / this.pageSize)], views);
        const at = rowsAt(this.layout, index, kvHead, t % this.pageSize);
        readElements(slab, at.key, headDim, bytes, 1, rows.k, row * headDim);
        readElements(slab, at.value, valueDim, bytes, stride, rows.v, row * valueDim);
        if (dtype === 'int8') {
          rows.kScales[row] = slab.f32[at.keyScale >> 2];
          rows.vScales[row] = slab.f32[at.valueScale >> 2];
        }
      }
    }
    return rows;
  }

  /** Checks capacity, applies the step's writes, and runs its attention; puts everything back if that fails. */
  private runStep(read: StepRead, async: true): Promise<Tensor[]>;
  private runStep(read: StepRead, async?: false): Tensor[];
  private runStep(read: StepRead, async = false): Tensor[] | Promise<Tensor[]> {
    // a queued step's sequences may have been disposed while it waited
    for (const { state } of read.entries) if (state.disposed) throw new AttentionError('DISPOSED', 'a sequence of this step was disposed before the step ran', 'sequence');
    if (read.rope) this.rotateKeys(read.entries, read.rope, (s) => `items[${s}].k`);
    const slabsBefore = this.slabs.length;
    this.reserve(read.entries, 'items');
    const undo = this.apply(read.entries, read.rope);
    const items: PagedItem[] = read.entries.map((entry) => {
      const { state, n, qHeads } = entry;
      const q = read.rope ? rotatedOperand(entry.q, qHeads, n, this.headDim, tablesOf(entry, state.length - n, read.rope), read.rope) : entry.q;
      return { q, qHeads, n, length: state.length, pages: Int32Array.from(state.pages) };
    });
    return this.attend(items, read, undo, slabsBefore, async);
  }

  /**
   * Runs one paged-attention call over `items` (their keys already written, as `undo` says) and
   * settles the pool after it: pages freed meanwhile wait for the call; if it is refused or fails,
   * every sequence goes back as it was and no slab is kept for it.
   */
  private attend(items: PagedItem[], options: { scale: number; softcap: number; left: number }, undo: Undo[], slabsBefore: number, async: boolean): Tensor[] | Promise<Tensor[]> {
    const store: PageStore = { slabs: [...this.slabs], ...this.layout };
    const plan: PagedAttentionPlan = { flops: pagedFlops(store, items), store, items, scale: options.scale, softcap: options.softcap, left: options.left };
    this.running++;
    const settle = (): void => {
      if (--this.running > 0 || this.disposed) return;
      this.free.push(...this.pendingFree);
      this.pendingFree = [];
      const keep = this.trimPending;
      this.trimPending = undefined;
      if (keep !== undefined) this.trim(keep);
    };
    const fail = (error: unknown): never => {
      if (!this.disposed) this.undo(undo);
      settle();
      if (!this.disposed) this.trim(slabsBefore);
      throw error;
    };
    if (async) {
      return this.backend.runAsync(pagedAttentionOp, plan).then((outputs) => {
        settle();
        return outputs;
      }, fail);
    }
    let outputs: Tensor[];
    try {
      outputs = this.backend.run(pagedAttentionOp, plan);
    } catch (error) {
      return fail(error);
    }
    settle();
    return outputs;
  }

  /** Reads sequence.export()'s bytes, checked against this pool's dtype, heads and dims. */
  private readExport(bytes: unknown): { stored: StoredRows; length: number } {
    let view: Uint8Array;
    if (bytes instanceof Uint8Array) view = bytes;
    else if (bytes instanceof ArrayBuffer) view = new Uint8Array(bytes);
    else throw new AttentionError('INVALID_ARGUMENT', `bytes must be a Uint8Array or ArrayBuffer from sequence.export(), got ${describe(bytes)}`, 'bytes');
    const bad = (why: string): never => {
      throw new AttentionError('INVALID_ARGUMENT', `bytes are not an export this pool can import: ${why}`, 'bytes');
    };
    if (view.byteLength < EXPORT_HEADER_BYTES) bad(`${view.byteLength} bytes, shorter than the header`);
    // read once, into our own array: the caller's bytes may change under us (and a Buffer's slice is no copy)
    const copy = new Uint8Array(view.byteLength);
    copy.set(view);
    const header = new DataView(copy.buffer);
    const [magic, version, dtype, kvHeads, headDim, valueDim, length] = Array.from({ length: 7 }, (_, i) => header.getUint32(4 * i, true));
    if (magic !== EXPORT_MAGIC) bad('no WAKV header');
    if (version !== EXPORT_VERSION) bad(`format version ${version}, this pool reads ${EXPORT_VERSION}`);
    if (dtype !== DTYPE_CODES[this.dtype]) {
      const name = KV_DTYPES.find((d) => DTYPE_CODES[d] === dtype);
      bad(`its pages are ${name ?? `of unknown dtype code ${dtype}`}, this pool holds ${this.dtype}`);
    }
    if (kvHeads !== this.kvHeads || headDim !== this.headDim || valueDim !== this.valueDim) {
      bad(`kv heads ${kvHeads}, head dim ${headDim}, value dim ${valueDim}; the pool holds ${this.kvHeads}, ${this.headDim}, ${this.valueDim}`);
    }
    const expected = exportBytes(this, length);
    if (copy.byteLength !== expected) bad(`${copy.byteLength} bytes where length ${length} needs ${expected}`);
    const rows = kvHeads * length;
    const elements = (n: number): StoredRows['k'] => (this.dtype === 'float32' ? new Float32Array(n) : this.dtype === 'float16' ? new Uint16Array(n) : new Int8Array(n));
    const stored: StoredRows = { k: elements(rows * headDim), v: elements(rows * valueDim), kScales: new Float32Array(this.dtype === 'int8' ? rows : 0), vScales: new Float32Array(this.dtype === 'int8' ? rows : 0) };
    let at = EXPORT_HEADER_BYTES;
    for (const part of exportParts(this.dtype, stored)) at = readLittleEndian(copy, at, part);
    const why = unstorable(this.dtype, stored);
    if (why) bad(why);
    return { stored, length };
  }

  /**
   * @internal the call of a float16 or int8 KV cache, which keeps its batch in a pool of its own
   * (src/features/kv-cache.ts): appends rows[s] to sequences[s] (keys [Hkv, n, Dk], rotated at their
   * positions when `rope`, and values [Hkv, n, Dv]; n may be 0; the caller checked them storable),
   * then attends each query block q [Hq, m, Dk] (already rotated) over the whole history of
   * sequences[query.sequence] as a step does (query i of m sees keys up to length - m + i). All or
   * nothing: a refusal or a failed attention leaves every sequence as it was. Returns the blocks'
   * outputs [Hq, m, Dv] in order (a promise of them when `async`: on the worker threads).
   */
  cacheCall(
    sequences: readonly KVSequence[], rows: ReadonlyArray<{ k: Float32Array; v: Float32Array; n: number }>,
    queries: ReadonlyArray<{ sequence: number; q: Operand<Float32Array>; qHeads: number; n: number }>,
    options: { scale: number; softcap: number; left: number; rope: RopeSpec | undefined }, async: boolean,
  ): Tensor[] | Promise<Tensor[]> {
    this.check();
    // only the sequences that take rows are written (and so put back if the attention fails): an async
    // attention alone must not, when it fails, undo the appends made while it waited
    const states = sequences.map((sequence) => this.usable(sequence, 'sequence'));
    const entries: Entries[] = sequences.map((sequence, s) => ({ sequence, state: states[s], ...rows[s] })).filter((entry) => entry.n > 0);
    if (options.rope) this.rotateKeys(entries, options.rope, () => 'k');
    const slabsBefore = this.slabs.length;
    this.reserve(entries, 'k');
    const undo = this.apply(entries, options.rope);
    if (queries.length === 0) return async ? Promise.resolve([]) : [];
    const items: PagedItem[] = queries.map(({ sequence, q, qHeads, n }) => {
      const state = states[sequence];
      return { q, qHeads, n, length: state.length, pages: Int32Array.from(state.pages) };
    });
    return this.attend(items, options, undo, slabsBefore, async);
  }
}

/** options.dtype: one of KV_DTYPES, float32 when left out. */
function readDtype(value: unknown): KVDtype {
  if (value === undefined) return 'float32';
  if (!KV_DTYPES.includes(value as KVDtype)) {
    throw new AttentionError('INVALID_OPTION', `options.dtype must be one of ${KV_DTYPES.map((d) => `'${d}'`).join(', ')}, got ${describe(value)}`, 'options.dtype');
  }
  return value as KVDtype;
}

/** Bytes of an export of `length` positions. */
function exportBytes(layout: Omit<PageLayout, 'slabPages' | 'pageSize'>, length: number): number {
  const rows = layout.kvHeads * length;
  return EXPORT_HEADER_BYTES + rows * ((layout.headDim + layout.valueDim) * elementBytes(layout.dtype) + (layout.dtype === 'int8' ? 8 : 0));
}

/** The arrays of an export after its header, in order. */
const exportParts = (dtype: KVDtype, rows: StoredRows): StoredRows['k'][] => (dtype === 'int8' ? [rows.k, rows.v, rows.kScales, rows.vScales] : [rows.k, rows.v]);

/** Why imported rows could not have come from a pool of this dtype (undefined when they could): what the kernels count on. */
function unstorable(dtype: KVDtype, rows: StoredRows): string | undefined {
  const parts: Array<[string, StoredRows['k']]> = [['a key', rows.k], ['a value', rows.v]];
  for (const [what, data] of parts) {
    for (let i = 0; i < data.length; i++) {
      const x = data[i];
      if (dtype === 'float32' && (!Number.isFinite(x) || (x !== 0 && Math.abs(x) < 2 ** -126))) return `${what} is ${x}: float32 pages hold no NaN or infinite value and no subnormal`;
      if (dtype === 'float16' && (x & 0x7c00) === 0x7c00) return `${what} is a float16 infinity or NaN (0x${x.toString(16)})`;
      if (dtype === 'int8' && x === -128) return `${what} is -128 (int8 pages hold -127..127)`;
    }
  }
  // a pool writes scale +0 (a zero row) or f32(absmax / 127) for a finite absmax: normal, at most
  // MAX_INT8_SCALE (a larger one would make q·s infinite)
  for (const scales of [rows.kScales, rows.vScales]) {
    for (const s of scales) {
      if (!(Object.is(s, 0) || (s >= 2 ** -126 && s <= MAX_INT8_SCALE))) return `a scale is ${Object.is(s, -0) ? '-0' : s} (int8 scales are +0 or normal, positive and at most ${MAX_INT8_SCALE}, float32's largest / 127)`;
    }
  }
  return undefined;
}

/** The largest int8 scale a pool writes: float32's largest finite value over 127. */
const MAX_INT8_SCALE = Math.fround(3.4028234663852886e38 / 127);

/** The slab's elements as `bytes`-byte elements. */
const elementsOf = (slab: SlabViews, bytes: number): StoredRows['k'] => (bytes === 4 ? slab.f32 : bytes === 2 ? slab.u16 : slab.i8);

/** Copies `width` elements of `data` from `from` into a slab at byte `at`, `stride` elements apart (as the slab holds them). */
function copyElements(data: StoredRows['k'], from: number, width: number, slab: SlabViews, at: number, bytes: number, stride: number): void {
  const target = elementsOf(slab, bytes);
  if (stride === 1) target.set(data.subarray(from, from + width), at / bytes);
  else for (let d = 0; d < width; d++) target[at / bytes + d * stride] = data[from + d];
}

/** Reads `width` elements of a slab at byte `at`, `stride` elements apart, into `out` from `to`. */
function readElements(slab: SlabViews, at: number, width: number, bytes: number, stride: number, out: StoredRows['k'], to: number): void {
  const source = elementsOf(slab, bytes);
  if (stride === 1) out.set(source.subarray(at / bytes, at / bytes + width), to);
  else for (let d = 0; d < width; d++) out[to + d] = source[at / bytes + d * stride];
}

/** Each element of an items array, read once by index (not through its iterator); a throwing read is refused. */
function readItems(items: unknown[]): unknown[] {
  return asArgument(() => {
    const length = items.length;
    const snapshot: unknown[] = [];
    for (let i = 0; i < length; i++) {
      try {
        snapshot.push(items[i]);
      } catch (cause) {
        throw new AttentionError('INVALID_ARGUMENT', `items[${i}]: reading it threw (${String(cause)})`, `items[${i}]`);
      }
    }
    return snapshot;
  });
}

/** Runs `read`, turning an INVALID_OPTION refusal (readOptions' code) or any other throw into INVALID_ARGUMENT: items are arguments, not options. */
function asArgument<T>(read: () => T): T {
  try {
    return read();
  } catch (error) {
    if (error instanceof AttentionError && error.code !== 'INVALID_OPTION') throw error;
    const argument = error instanceof AttentionError ? error.argument : 'items';
    throw new AttentionError('INVALID_ARGUMENT', error instanceof Error ? error.message : `items: reading it threw (${String(error)})`, argument);
  }
}

/**
 * Refuses a NaN or infinite key or value (stored in a page, it would make every later query that sees
 * it NaN, and the kernels' blocks would carry it into rows of the same block that do not see it), and
 * for float16 pages one beyond ±65504 (it would become infinite).
 */
function checkStorable(data: Float32Array, name: string, dtype: KVDtype, how = ''): void {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      throw new AttentionError('INVALID_TENSOR', `${name}.data[${i}]${how} is ${data[i]}; keys and values stored in the pool must be finite`, `${name}.data`);
    }
    if (dtype === 'float16' && Math.abs(data[i]) > HALF_MAX) {
      throw new AttentionError('INVALID_TENSOR', `${name}.data[${i}]${how} is ${data[i]}, beyond float16's ±${HALF_MAX}: this pool's pages are float16 (use float32 or int8 pages for such values)`, `${name}.data`);
    }
  }
}

/** Whether this platform stores typed arrays little-endian (then an export's elements are copied as they are). */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/** `values` into `bytes` at `at`, little-endian; returns the byte after them. */
function writeLittleEndian(bytes: Uint8Array, at: number, values: StoredRows['k']): number {
  const size = values.BYTES_PER_ELEMENT;
  if (LITTLE_ENDIAN || size === 1) bytes.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength), at);
  else {
    const view = new DataView(bytes.buffer, bytes.byteOffset + at);
    values.forEach((x, i) => (size === 4 ? view.setFloat32(4 * i, x, true) : view.setUint16(2 * i, x, true)));
  }
  return at + values.byteLength;
}

/** Fills `values` from little-endian `bytes` at `at`; returns the byte after them. */
function readLittleEndian(bytes: Uint8Array, at: number, values: StoredRows['k']): number {
  const size = values.BYTES_PER_ELEMENT;
  if (LITTLE_ENDIAN || size === 1) new Uint8Array(values.buffer, values.byteOffset, values.byteLength).set(bytes.subarray(at, at + values.byteLength));
  else {
    const view = new DataView(bytes.buffer, bytes.byteOffset + at);
    for (let i = 0; i < values.length; i++) values[i] = size === 4 ? view.getFloat32(4 * i, true) : view.getUint16(2 * i, true);
  }
  return at + values.byteLength;
}

/** cos and sin of an entry's positions start .. start+n-1, built once for its k and its q. */
function tablesOf(entry: Entries, start: number, rope: RopeSpec): { cos: Float32Array; sin: Float32Array } {
  if (entry.tables?.start !== start) {
    const { cos, sin } = angleTables(positionRange(start, entry.n), rope.dims, rope.base);
    entry.tables = { start, cos, sin };
  }
  return entry.tables;
}

/** x [heads, n, headDim] rotated by the tables' positions (a new array). */
function rotated(x: Float32Array, heads: number, n: number, headDim: number, tables: { cos: Float32Array; sin: Float32Array }, rope: RopeSpec): Float32Array {
  const out = new Float32Array(x.length);
  for (let h = 0; h < heads; h++) rotateRows(x, h * n * headDim, headDim, out, h * n * headDim, headDim, n, headDim, rope.dims, tables.cos, tables.sin, 0, rope.interleaved);
  return out;
}

function rotatedOperand(q: Operand<Float32Array>, heads: number, n: number, headDim: number, tables: { cos: Float32Array; sin: Float32Array }, rope: RopeSpec): Operand<Float32Array> {
  const array = rotated(operandArray(q), heads, n, headDim, tables, rope);
  return { array, offset: 0, length: array.length };
}
