// A KV cache for decoding: keys [B, Hkv, maxSeq, D] and values [B, Hkv, maxSeq, Dv] kept as
// resident tensors in the backend's memory, filled in place by append, and attended to in place by
// attention: the history is never copied. Each sequence of the batch has its own length, so a batch
// may hold sequences at different positions (ragged decoding).
//
// Every call is planned whole before anything changes: an append checks its shapes, counts and the
// capacity first; a layer step (append, then attend) also checks the attention options against the
// lengths it will have, so a refused call leaves the cache as it was.
//
// RoPE (the rope option): append rotates each new key at its sequence's absolute position (the
// sequence's length before the append, plus t) before storing it, so the cache holds rotated keys;
// attention rotates each query block at length_b - n + i. Use the same rope on both.
//
// dtype float16 or int8: the keys and values live in the KV pool's quantized pages instead (a pool of
// the cache's own, one pool sequence per batch row; see kv-pool.ts and
// src/ops/paged-attention/pages.ts), and attention is the paged-attention op, which dequantizes in
// the kernel's registers: no float32 copy of the history is ever made. One page format and one kernel
// serve the pool and the cache. The paged op computes causal attention with scale, softcap and a left
// window over ragged sequences, so a quantized cache runs those (causal: false as one query block per
// position over all of its sequence's keys) and refuses what it cannot do (UNSUPPORTED) before anything
// changes: a mask, returnWeights, returnLogSumExp, out, a window with causal: false.
import { type Backend, type Operand, operandArray } from '../backend.js';
import { AttentionError } from '../errors.js';
import type { ResidentTensor } from '../memory/resident.js';
import { attentionOp } from '../ops/attention/index.js';
import {
  type AttentionLayout, type AttentionOptions, type AttentionOptionsRead, type AttentionOutput, type AttentionPlan, type HeadStrides, type RopeRead,
  MAX_HEAD_DIM, batchSlice, finishAttentionPlan, packed, readAttentionOptions, sliceOperand, windowSide,
} from '../ops/attention/plan.js';
import { HALF_MAX, KV_DTYPES, type KVDtype } from '../ops/paged-attention/pages.js';
import { rotateRows } from '../ops/rope/js.js';
import { type RopeOptions, type RopeSpec, angleTables, positionRange, readRope } from '../ops/rope/options.js';
import {
  type Checked, type Tensor, type TensorLike, type TensorRead, checkBoolean, checkFinite, checkFloat32, checkInteger, describe, floatTensor, readOptions, readTensor,
} from '../tensor.js';
import { KVPool, type KVSequence } from './kv-pool.js';

export interface KVCacheOptions {
  batch: number;
  kvHeads: number;
  headDim: number;
  /** Default: headDim. */
  valueDim?: number;
  /** Positions each sequence can hold; appending past it is refused (code CACHE_FULL). */
  maxSeq: number;
  /**
   * What the cache stores keys and values as. 'float32' (the default): resident [B, Hkv, maxSeq, D]
   * tensors, reserved whole when the cache is made, and attention with every option. 'float16' (IEEE
   * half, round to nearest even; a value beyond ±65504 is refused) or 'int8' (symmetric, one float32
   * scale per position and kv head, keys and values apart: absmax / 127): the KV pool's pages (see
   * engine.kvPool), about half or a quarter of the memory, taken in pages of 16 positions as the
   * sequences grow; attention reads them in place with the paged kernel, dequantizing in registers.
   * A quantized cache's attention takes causal, scale, softcap, window (a left window; none with
   * causal: false) and rope, and refuses mask, returnWeights, returnLogSumExp and out (UNSUPPORTED).
   */
  dtype?: KVDtype;
}

/**
 * Options of cache.attention: those of engine.attention, with causal on by default; `rope` takes no
 * positions (query i of sequence b stands at length_b - n + i).
 */
export type CacheAttentionOptions = Omit<AttentionOptions, 'rope'> & { rope?: RopeOptions };

/** Options of cache.append. */
export interface CacheAppendOptions {
  /** Sequence b takes only its first counts[b] new positions (ragged prefill). */
  counts?: readonly number[];
  /** Rotate each new key (RoPE) at its absolute position, the sequence's length before the append plus t. */
  rope?: RopeOptions;
}

/** New entries checked: their data and strides, how many of them each sequence takes, the keys' rotation. */
interface AppendPlan {
  k: { data: Float32Array; strides: HeadStrides };
  v: { data: Float32Array; strides: HeadStrides };
  /** New positions given per sequence (k.dims[2], or dims[1] in 3D). */
  n: number;
  counts: number[];
  rope: RopeSpec | undefined;
}

/** New rows of one sequence of a quantized cache: keys [Hkv, n, D] and values [Hkv, n, Dv], packed. */
type PagedRows = Array<{ k: Float32Array; v: Float32Array; n: number }>;

/** Attention over a quantized cache's pages, checked (the paged op's scalars, and where q and the output lie). */
interface PagedStep {
  q: Operand<Float32Array>;
  qHeads: number;
  n: number;
  /** Element strides of q [B, Hq, n, D] and of the output [B, Hq, n, Dv] (a 3D q: [B, n, Hq·D] and [B, n, Hq·Dv]). */
  strides: { q: HeadStrides; out: HeadStrides };
  outDims: number[];
  lengths: number[];
  causal: boolean;
  scale: number;
  softcap: number;
  /** Keys before a query's position it sees; -1: all. */
  left: number;
  rope: RopeSpec | undefined;
}

const EMPTY = new Float32Array(0);

export class KVCache {
  readonly batch: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly valueDim: number;
  readonly maxSeq: number;
  readonly dtype: KVDtype;
  private readonly backend: Backend;
  /** A float32 cache's keys [B, Hkv, maxSeq, D] and values [B, Hkv, maxSeq, Dv]. */
  private keys: ResidentTensor | undefined;
  private values: ResidentTensor | undefined;
  /** A float16 or int8 cache's pages: a pool of the cache's own, and one pool sequence per batch row. */
  private readonly paged: { pool: KVPool; sequences: KVSequence[] } | undefined;
  private readonly seqLengths: Int32Array;
  private disposed = false;
  readonly #made = true;

  /** @internal use engine.kvCache */
  constructor(backend: Backend, options: KVCacheOptions) {
    const opts = readOptions(options, 'options', ['batch', 'kvHeads', 'headDim', 'valueDim', 'maxSeq', 'dtype']);
    const int = (name: keyof KVCacheOptions, min: number, fallback?: number): number => checkInteger(opts[name], `options.${name}`, min, fallback);
    this.batch = int('batch', 1);
    this.kvHeads = int('kvHeads', 1);
    this.headDim = int('headDim', 1);
    this.valueDim = int('valueDim', 1, this.headDim);
    this.maxSeq = int('maxSeq', 1);
    this.dtype = readDtype(opts.dtype);
    const elements = this.batch * this.kvHeads * this.maxSeq * Math.max(this.headDim, this.valueDim);
    if (elements > 2 ** 30) {
      throw new AttentionError('OUT_OF_MEMORY', `a cache of batch ${this.batch}, ${this.kvHeads} kv heads, ${this.maxSeq} positions of ${this.headDim}/${this.valueDim} needs ${elements} floats each for keys and values; at most 2^30 fit`, 'options.maxSeq');
    }
    this.backend = backend;
    this.seqLengths = new Int32Array(this.batch);
    if (this.dtype !== 'float32') {
      // pages of 16 positions (one page for a shorter cache), room for every sequence's own whole
      // pages: a sequence within maxSeq always finds its pages free. The pool takes no memory yet.
      const pageSize = Math.min(16, this.maxSeq);
      const maxTokens = this.batch * Math.ceil(this.maxSeq / pageSize) * pageSize;
      const { kvHeads, headDim, valueDim, dtype } = this;
      const pool = new KVPool(backend, { kvHeads, headDim, valueDim, dtype, pageSize, maxTokens });
      this.paged = { pool, sequences: Array.from({ length: this.batch }, () => pool.sequence()) };
      return;
    }
    this.keys = backend.tensor([this.batch, this.kvHeads, this.maxSeq, this.headDim], 'float32');
    try {
      this.values = backend.tensor([this.batch, this.kvHeads, this.maxSeq, this.valueDim], 'float32');
    } catch (error) {
      this.keys.release();
      throw error;
    }
  }

  /** Whether `x` is a real KVCache (not merely an object with its prototype). */
  static is(x: unknown): x is KVCache {
    return typeof x === 'object' && x !== null && #made in x;
  }

  /** @internal whether this cache lives in `backend`'s memory */
  ownedBy(backend: Backend): boolean {
    return this.backend === backend;
  }

  private live(): void {
    this.backend.live();
    if (this.disposed) throw new AttentionError('DISPOSED', 'this KV cache was disposed');
  }

  /** A float32 cache's resident keys and values. */
  private resident(): [ResidentTensor, ResidentTensor] {
    this.live();
    return [this.keys!, this.values!];
  }

  /** The length of the longest sequence (all of them, when the batch is not ragged). */
  get length(): number {
    return Math.max(0, ...this.seqLengths);
  }

  /** The length of each sequence of the batch. */
  get lengths(): number[] {
    return Array.from(this.seqLengths);
  }

  /** Forgets every entry (the memory stays reserved for reuse). */
  reset(): void {
    this.live();
    if (this.paged) {
      const { pool, sequences } = this.paged;
      for (const sequence of sequences) sequence.dispose();
      this.paged.sequences = sequences.map(() => pool.sequence());
    }
    this.seqLengths.fill(0);
  }

  /** Gives the cache's memory back to the engine (after the calls still using it); later calls throw. */
  dispose(): void {
    this.disposed = true;
    this.keys?.release();
    this.values?.release();
    this.keys = this.values = undefined;
    this.paged?.pool.dispose();
  }

  /**
   * Appends n new positions to every sequence: k [B, Hkv, n, D] and v [B, Hkv, n, Dv] (or 3D
   * [B, n, Hkv·D] and [B, n, Hkv·Dv], as a projection gives them). With
   * `counts`, sequence b takes only its first counts[b] new positions (ragged prefill). With `rope`,
   * new key t of sequence b is stored rotated at position lengths[b] + t.
   */
  append(k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: CacheAppendOptions): void {
    this.live();
    const kRead = readTensor(k, 'k');
    const vRead = readTensor(v, 'v');
    const opts = readOptions(options, 'options', ['counts', 'rope']);
    const rope = readRope(opts.rope, this.headDim, 'options.rope');
    const plan = this.planAppend(kRead, vRead, opts.counts, rope);
    this.checkRoom(plan.counts);
    if (this.paged) this.pagedCall(this.pagedRows(plan), rope, undefined);
    else this.write(plan);
  }

  /** Checks new entries, the counts and the rope (read once each) into an append plan; changes nothing. */
  private planAppend(kRead: TensorRead, vRead: TensorRead, countsOption: unknown, rope: RopeSpec | undefined): AppendPlan {
    const counts = countsOption === undefined ? undefined : readCounts(countsOption, this.batch);
    const k = this.entries(kRead, this.headDim);
    const v = this.entries(vRead, this.valueDim);
    if (v.n !== k.n) throw new AttentionError('SHAPE_MISMATCH', `v has ${v.n} new positions but k has ${k.n}`, 'v.dims');
    const n = k.n;
    if (counts?.some((c) => c > n)) {
      throw new AttentionError('INVALID_OPTION', `options.counts must be ${this.batch} integers in [0, ${n}], got [${counts}]`, 'options.counts');
    }
    return { k, v, n, counts: counts ?? new Array<number>(this.batch).fill(n), rope };
  }

  /** The angle tables [B, n, dims/2] of n new keys per sequence, at lengths[b] + t. */
  private keyTables(spec: RopeSpec, n: number): { cos: Float32Array; sin: Float32Array } {
    const positions = new Float64Array(this.batch * n);
    for (let b = 0; b < this.batch; b++) for (let t = 0; t < n; t++) positions[b * n + t] = this.seqLengths[b] + t;
    return angleTables(positions, spec.dims, spec.base);
  }

  private checkRoom(counts: readonly number[]): void {
    for (let b = 0; b < this.batch; b++) {
      if (this.seqLengths[b] + counts[b] > this.maxSeq) {
        throw new AttentionError('CACHE_FULL', `sequence ${b} holds ${this.seqLengths[b]} positions; ${counts[b]} more pass maxSeq ${this.maxSeq}`, 'k');
      }
    }
  }

  /** Copies a checked append into place and advances the lengths. */
  private write(plan: AppendPlan): void {
    const [keys, values] = this.resident();
    const { counts, n } = plan;
    const tables = plan.rope && this.keyTables(plan.rope, n);
    for (const [input, store, width] of [[plan.k, keys.data as Float32Array, this.headDim], [plan.v, values.data as Float32Array, this.valueDim]] as const) {
      for (let b = 0; b < this.batch; b++) {
        for (let h = 0; h < this.kvHeads; h++) {
          const dst = ((b * this.kvHeads + h) * this.maxSeq + this.seqLengths[b]) * width;
          if (plan.rope && tables && input === plan.k) {
            const { dims, interleaved } = plan.rope;
            const at = b * input.strides.batch + h * input.strides.head;
            rotateRows(input.data, at, input.strides.row, store, dst, width, counts[b], width, dims, tables.cos, tables.sin, b * n * (dims / 2), interleaved);
          } else {
            for (let t = 0; t < counts[b]; t++) {
              const src = b * input.strides.batch + h * input.strides.head + t * input.strides.row;
              store.set(input.data.subarray(src, src + width), dst + t * width);
            }
          }
        }
      }
    }
    for (let b = 0; b < this.batch; b++) this.seqLengths[b] += counts[b];
  }

  /** Checks new entries, 4D [B, Hkv, n, width] or 3D [B, n, Hkv·width], and returns their strides. */
  private entries(read: TensorRead, width: number): { data: Float32Array; n: number; strides: HeadStrides } {
    const { operand, dims } = floatTensor(read, this.backend);
    const name = read.name;
    if (dims.length !== 3 && dims.length !== 4) throw new AttentionError('INVALID_DIMS', `${name} must be [B, Hkv, n, D] or [B, n, Hkv·D], got dims [${dims}]`, `${name}.dims`);
    const expected = dims.length === 3 ? [this.batch, dims[1], this.kvHeads * width] : [this.batch, this.kvHeads, dims[2], width];
    dims.forEach((d, i) => {
      if (d !== expected[i]) throw new AttentionError('SHAPE_MISMATCH', `${name}.dims[${i}] is ${d} but the cache needs [${expected}]`, `${name}.dims[${i}]`);
    });
    const n = dims.length === 3 ? dims[1] : dims[2];
    const strides = dims.length === 3 ? { batch: n * this.kvHeads * width, head: width, row: this.kvHeads * width } : packed(this.kvHeads, n, width);
    return { data: operandArray(operand), n, strides };
  }

  /**
   * Attention of q [B, Hq, n, D] (or [B, n, Hq·D]: the result then is [B, n, Hq·Dv]), the newest
   * n positions of each sequence, over everything cached:
   * causal by default, aligned bottom-right (query i of the block sees keys up to length - n + i).
   * A mask broadcasts to [B, Hq, n, length] (length: the longest sequence). A float16 or int8
   * cache takes causal, scale, softcap, window and rope only (see KVCacheOptions.dtype).
   */
  attention(q: TensorLike<Float32Array>, options?: CacheAttentionOptions): AttentionOutput {
    this.live();
    const qRead = readTensor(q, 'q');
    const opts = readAttentionOptions(options);
    if (this.paged) {
      const step = this.planPaged(floatTensor(qRead, this.backend), opts, this.lengths);
      return this.assemble(step, this.pagedCall(undefined, undefined, step));
    }
    return this.run(this.planAttention(qRead, opts, this.lengths));
  }

  /**
   * attention() on the engine's worker threads, leaving the event loop free (a ragged batch of a
   * float32 cache runs its sequences one after another on the calling thread; a float16 or int8
   * cache runs them in one call). Append this step's keys first; the cache's
   * memory stays allocated until the call settles, even if the cache is disposed meanwhile.
   */
  async attentionAsync(q: TensorLike<Float32Array>, options?: CacheAttentionOptions): Promise<AttentionOutput> {
    this.live();
    const qRead = readTensor(q, 'q');
    const opts = readAttentionOptions(options);
    if (this.paged) {
      const step = this.planPaged(floatTensor(qRead, this.backend), opts, this.lengths);
      const { pool, sequences } = this.paged;
      const outputs = await (pool.cacheCall(sequences, this.noRows(), this.queries(step), { ...kernelScalars(step), rope: undefined }, true) as Promise<Tensor[]>);
      return this.assemble(step, outputs);
    }
    const step = this.planAttention(qRead, opts, this.lengths);
    if (step.lengths.every((l) => l === step.plan.seqKV)) return this.backend.runAsync(attentionOp, step.plan);
    return this.run(step);
  }

  /**
   * @internal one decoding step of a layer: append k and v, then attend q over everything cached.
   * Both are checked before either happens; if the attention fails, the append is undone.
   */
  step(q: TensorLike<Float32Array>, k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options: AttentionOptionsRead): AttentionOutput {
    this.live();
    const qRead = readTensor(q, 'q');
    const append = this.planAppend(readTensor(k, 'k'), readTensor(v, 'v'), undefined, this.readRope(options.rope));
    this.checkRoom(append.counts);
    const before = this.lengths;
    if (this.paged) {
      // the pool appends and attends in one call, and puts the appends back if the attention fails
      const step = this.planPaged(floatTensor(qRead, this.backend), options, before.map((l, b) => l + append.counts[b]));
      return this.assemble(step, this.pagedCall(this.pagedRows(append), append.rope, step));
    }
    const step = this.planAttention(qRead, options, before.map((l, b) => l + append.counts[b]));
    this.write(append);
    try {
      return this.run(step);
    } catch (error) {
      this.seqLengths.set(before);
      throw error;
    }
  }

  /**
   * @internal checks, before a layer computes its projections, that appending `appended` positions
   * fits and that attention of n query rows with qHeads heads over the result holds its options:
   * what step() will check again.
   */
  checkStep(appended: number, n: number, qHeads: number, options: AttentionOptionsRead): void {
    this.live();
    this.checkRoom(new Array<number>(this.batch).fill(appended));
    this.readRope(options.rope);
    // q stands in by its shape: the plan reads no data, and no `out` is given to overlap it
    const dims = [this.batch, n, qHeads * this.headDim];
    const q: Operand<Float32Array> = { array: new Float32Array(0), offset: 0, length: dims[0] * dims[1] * dims[2] };
    const lengths = this.lengths.map((l) => l + appended);
    if (this.paged) this.planPaged({ operand: q, dims }, options, lengths);
    else this.planChecked({ operand: q, dims }, options, lengths);
  }

  /** A read rope option checked for the keys: no positions of its own (the cache places them). */
  private readRope(read: RopeRead | undefined): RopeSpec | undefined {
    if (!read) return undefined;
    for (const given of ['qPositions', 'kPositions'] as const) {
      if (read[given]) throw new AttentionError('INVALID_OPTION', `options.rope.${given} is not taken with a KV cache: it places its tokens itself (sequence b's newest n at length_b - n + i)`, `options.rope.${given}`);
    }
    return readRope({ base: read.base, dims: read.dims, interleaved: read.interleaved }, this.headDim, 'options.rope');
  }

  /** Plans attention over sequences of the given lengths (the cache's own, or after an append). */
  private planAttention(qRead: TensorRead, options: AttentionOptionsRead, lengths: number[]): { plan: AttentionPlan; lengths: number[] } {
    return this.planChecked(floatTensor(qRead, this.backend), options, lengths);
  }

  /** planAttention with q already checked as a float32 tensor. */
  private planChecked(qChecked: Checked<Float32Array>, options: AttentionOptionsRead, lengths: number[]): { plan: AttentionPlan; lengths: number[] } {
    const [keys, values] = this.resident();
    const opts = { ...options, causal: options.causal ?? true };
    const { operand: q } = qChecked;
    const { rows, batch, qHeads, n, headDim, strided } = this.queryShape(qChecked.dims, lengths);
    const length = Math.max(0, ...lengths);
    const whole = (t: ResidentTensor): Operand<Float32Array> => ({ resident: t, offset: 0, length: t.length });
    const layout: AttentionLayout = {
      batch, qHeads, kvHeads: this.kvHeads, seqQ: n, seqKV: length, headDim, valueDim: this.valueDim,
      q, k: whole(keys), v: whole(values),
      strides: {
        q: strided(qHeads, headDim),
        k: { batch: this.kvHeads * this.maxSeq * headDim, head: this.maxSeq * headDim, row: headDim },
        v: { batch: this.kvHeads * this.maxSeq * this.valueDim, head: this.maxSeq * this.valueDim, row: this.valueDim },
        out: strided(qHeads, this.valueDim),
      },
      outDims: rows ? [batch, n, qHeads * this.valueDim] : [batch, qHeads, n, this.valueDim],
      offset: length - n,
    };
    if (opts.rope) {
      // query i of sequence b at lengths[b] - n + i; the keys were rotated when appended
      const positions = new Float64Array(batch * n);
      for (let b = 0; b < batch; b++) for (let i = 0; i < n; i++) positions[b * n + i] = lengths[b] - n + i;
      layout.ropePositions = { q: { values: positions, perBatch: true }, k: undefined };
    }
    return { plan: finishAttentionPlan(layout, opts, this.backend), lengths };
  }

  /**
   * Checks q's dims, [B, Hq, n, D] or [B, n, Hq·D], against the cache and the sequences' lengths;
   * `strided` gives the element strides of a tensor laid out as q is ([B, n, H·D] is read and
   * written through strides, like [B, H, n, D]).
   */
  private queryShape(qDims: readonly number[], lengths: readonly number[]) {
    if (qDims.length !== 3 && qDims.length !== 4) throw new AttentionError('INVALID_DIMS', `q must be [B, Hq, n, D] or [B, n, Hq·D], got dims [${qDims}]`, 'q.dims');
    if (qDims.length === 3 && qDims[2] % this.headDim !== 0) {
      throw new AttentionError('SHAPE_MISMATCH', `q.dims[2] is ${qDims[2]}, not a multiple of the cache's head dim ${this.headDim}`, 'q.dims[2]');
    }
    const rows = qDims.length === 3;
    const [batch, qHeads, n, headDim] = rows ? [qDims[0], qDims[2] / this.headDim, qDims[1], this.headDim] : qDims;
    if (batch !== this.batch) throw new AttentionError('SHAPE_MISMATCH', `q.dims[0] (batch) is ${batch} but the cache holds ${this.batch}`, 'q.dims[0]');
    if (headDim !== this.headDim) throw new AttentionError('SHAPE_MISMATCH', `q.dims[3] (head dim) is ${headDim} but the cache holds ${this.headDim}`, 'q.dims[3]');
    if (qHeads % this.kvHeads !== 0) {
      throw new AttentionError('SHAPE_MISMATCH', `q.dims[1] (query heads) is ${qHeads}, not a multiple of the cache's ${this.kvHeads} kv heads`, 'q.dims[1]');
    }
    for (let b = 0; b < batch; b++) {
      if (lengths[b] < n) throw new AttentionError('SHAPE_MISMATCH', `q has ${n} positions but sequence ${b} holds only ${lengths[b]}: append this step's keys first`, 'q.dims[2]');
    }
    const strided = (heads: number, width: number): HeadStrides => (rows ? { batch: n * heads * width, head: width, row: heads * width } : packed(heads, n, width));
    return { rows, batch, qHeads, n, headDim, strided };
  }

  /**
   * A quantized cache's attention of q (checked as a float32 tensor) over sequences of the given
   * lengths, planned for the paged op; refuses the options it cannot run (UNSUPPORTED) and checks the
   * rest as engine.attention does. Reads no data of q.
   */
  private planPaged(qChecked: Checked<Float32Array>, options: AttentionOptionsRead, lengths: number[]): PagedStep {
    this.live();
    const { rows, batch, qHeads, n, headDim, strided } = this.queryShape(qChecked.dims, lengths);
    const unsupported = (name: string, why = ''): never => {
      throw new AttentionError('UNSUPPORTED', `options.${name}${why} is not supported by a ${this.dtype} KV cache (its attention runs on the paged kernel): use dtype 'float32' for it`, `options.${name}`);
    };
    if (options.mask !== undefined) unsupported('mask');
    if (checkBoolean(options.returnWeights, 'options.returnWeights')) unsupported('returnWeights');
    if (checkBoolean(options.returnLogSumExp, 'options.returnLogSumExp')) unsupported('returnLogSumExp');
    if (options.out !== undefined) unsupported('out');
    if (Math.max(headDim, this.valueDim) > MAX_HEAD_DIM) {
      throw new AttentionError('UNSUPPORTED', `head dim ${headDim} / value dim ${this.valueDim}: at most ${MAX_HEAD_DIM} is supported`, 'q.dims');
    }
    const scale = checkFloat32(options.scale, 'options.scale', 1 / Math.sqrt(headDim));
    const softcap = checkFinite(options.softcap, 'options.softcap', 0);
    if (options.softcap !== undefined && !(Math.fround(softcap) > 0 && Number.isFinite(Math.fround(softcap)))) {
      throw new AttentionError('INVALID_OPTION', `options.softcap must be > 0 and within float32 range (leave it out to turn softcapping off), got ${softcap}`, 'options.softcap');
    }
    const causal = checkBoolean(options.causal ?? true, 'options.causal');
    let left = -1;
    if (options.window !== undefined) {
      // as engine.attention: a side wider than the whole sequence is none; causal caps right at 0
      const length = Math.max(0, ...lengths);
      const span = n + length + Math.abs(length - n);
      left = windowSide(options.window.left, 'left', span);
      const right = windowSide(options.window.right, 'right', span);
      if (!causal && (left >= 0 || right >= 0)) unsupported('window', ' with causal: false');
    }
    const rope = this.readRope(options.rope);
    return {
      q: qChecked.operand, qHeads, n, strides: { q: strided(qHeads, headDim), out: strided(qHeads, this.valueDim) },
      outDims: rows ? [batch, n, qHeads * this.valueDim] : [batch, qHeads, n, this.valueDim],
      lengths, causal, scale, softcap, left, rope,
    };
  }

  /**
   * A planned step's query blocks for the pool, q [Hq, m, D] each, rotated at their positions:
   * causal, sequence b's n queries as one block (a view of q when it is [B, Hq, n, D] and not
   * rotated); otherwise each query alone (m = 1), which then sees every key of its sequence.
   */
  private queries(step: PagedStep): Array<{ sequence: number; q: Operand<Float32Array>; qHeads: number; n: number }> {
    const { qHeads, n, strides, rope, lengths } = step;
    const headDim = this.headDim;
    const source = operandArray(step.q);
    const view = strides.q.head === n * headDim && step.causal && !rope;
    const blocks: Array<{ sequence: number; q: Operand<Float32Array>; qHeads: number; n: number }> = [];
    for (let b = 0; b < this.batch; b++) {
      for (const [first, m] of blockSpans(n, step.causal)) {
        if (view) {
          blocks.push({ sequence: b, q: sliceOperand(step.q, b * strides.q.batch, strides.q.batch), qHeads, n });
          continue;
        }
        const q = new Float32Array(qHeads * m * headDim);
        const tables = rope && angleTables(positionRange(lengths[b] - n + first, m), rope.dims, rope.base);
        for (let h = 0; h < qHeads; h++) {
          const from = b * strides.q.batch + h * strides.q.head + first * strides.q.row;
          if (rope && tables) rotateRows(source, from, strides.q.row, q, h * m * headDim, headDim, m, headDim, rope.dims, tables.cos, tables.sin, 0, rope.interleaved);
          else for (let i = 0; i < m; i++) q.set(source.subarray(from + i * strides.q.row, from + i * strides.q.row + headDim), (h * m + i) * headDim);
        }
        blocks.push({ sequence: b, q: { array: q, offset: 0, length: q.length }, qHeads, n: m });
      }
    }
    return blocks;
  }

  /** The outputs of a step's query blocks ([Hq, m, Dv] each, in queries' order) laid out as the step's output. */
  private assemble(step: PagedStep, outputs: readonly Tensor[]): AttentionOutput {
    const { qHeads, n, strides, outDims } = step;
    const valueDim = this.valueDim;
    const data = new Float32Array(this.batch * qHeads * n * valueDim);
    let block = 0;
    for (let b = 0; b < this.batch; b++) {
      for (const [first, m] of blockSpans(n, step.causal)) {
        const result = outputs[block++].data;
        for (let h = 0; h < qHeads; h++) {
          for (let i = 0; i < m; i++) {
            const from = (h * m + i) * valueDim;
            data.set(result.subarray(from, from + valueDim), b * strides.out.batch + h * strides.out.head + (first + i) * strides.out.row);
          }
        }
      }
    }
    return { data, dims: outDims };
  }

  /**
   * A checked append's new rows per sequence for the pool (sequence b's first counts[b], packed
   * [Hkv, n, width]); refuses, before anything changes, a value the pages cannot hold: NaN or
   * infinite (stored, it would reach every later query), beyond ±65504 in float16.
   */
  private pagedRows(plan: AppendPlan): PagedRows {
    const gather = (input: AppendPlan['k'], name: string, b: number, n: number, width: number): Float32Array => {
      const rows = new Float32Array(this.kvHeads * n * width);
      for (let h = 0; h < this.kvHeads; h++) {
        for (let t = 0; t < n; t++) {
          const from = b * input.strides.batch + h * input.strides.head + t * input.strides.row;
          for (let d = 0; d < width; d++) {
            const x = input.data[from + d];
            if (!Number.isFinite(x) || (this.dtype === 'float16' && Math.abs(x) > HALF_MAX)) {
              const why = Number.isFinite(x) ? `, beyond float16's ±${HALF_MAX}: this cache's pages are float16 (use dtype 'float32' or 'int8' for such values)` : `; keys and values stored in a ${this.dtype} cache must be finite`;
              throw new AttentionError('INVALID_TENSOR', `${name}.data[${from + d}] is ${x}${why}`, `${name}.data`);
            }
            rows[(h * n + t) * width + d] = x;
          }
        }
      }
      return rows;
    };
    return plan.counts.map((n, b) => ({ k: gather(plan.k, 'k', b, n, this.headDim), v: gather(plan.v, 'v', b, n, this.valueDim), n }));
  }

  /** No new rows for any sequence (an attention alone). */
  private noRows(): PagedRows {
    return this.paged!.sequences.map(() => ({ k: EMPTY, v: EMPTY, n: 0 }));
  }

  /**
   * One call of a quantized cache's pool: appends `rows` (keys rotated by `rope`) and runs the step's
   * attention, if any, all or nothing; the cache then takes the sequences' lengths.
   */
  private pagedCall(rows: PagedRows | undefined, rope: RopeSpec | undefined, step: PagedStep | undefined): Tensor[] {
    const { pool, sequences } = this.paged!;
    const scalars = step ? kernelScalars(step) : { scale: 1, softcap: 0, left: -1 };
    const outputs = pool.cacheCall(sequences, rows ?? this.noRows(), step ? this.queries(step) : [], { ...scalars, rope }, false) as Tensor[];
    sequences.forEach((sequence, b) => (this.seqLengths[b] = sequence.length));
    return outputs;
  }

  /** Runs a planned step: one call, or one per sequence when their lengths differ. */
  private run({ plan, lengths }: { plan: AttentionPlan; lengths: number[] }): AttentionOutput {
    if (lengths.every((l) => l === plan.seqKV)) return this.backend.run(attentionOp, plan);
    const out: Operand<Float32Array> = plan.out ?? { array: new Float32Array(plan.batch * plan.qHeads * plan.seqQ * plan.valueDim), offset: 0, length: plan.batch * plan.qHeads * plan.seqQ * plan.valueDim };
    const rowsPerBatch = plan.qHeads * plan.seqQ;
    const lse = plan.returnLogSumExp ? new Float32Array(plan.batch * rowsPerBatch) : undefined;
    const weights = plan.returnWeights ? new Float32Array(plan.batch * rowsPerBatch * plan.seqKV) : undefined;
    let data: Float32Array | undefined;
    for (let b = 0; b < plan.batch; b++) {
      const result = this.backend.run(attentionOp, batchSlice(plan, b, lengths[b], lengths[b] - plan.seqQ, out));
      if (b === 0 && !out.resident) data = out.user ?? out.array;
      lse?.set(result.logSumExp!.data, b * rowsPerBatch);
      if (weights) {
        // this sequence's weights into the [.., length] rows, zero past its own length
        for (let r = 0; r < rowsPerBatch; r++) {
          weights.set(result.weights!.data.subarray(r * lengths[b], (r + 1) * lengths[b]), (b * rowsPerBatch + r) * plan.seqKV);
        }
      }
    }
    const output: AttentionOutput = { data: data ?? operandArray(out), dims: plan.outDims };
    if (lse) output.logSumExp = { data: lse, dims: [plan.batch, plan.qHeads, plan.seqQ] };
    if (weights) output.weights = { data: weights, dims: [plan.batch, plan.qHeads, plan.seqQ, plan.seqKV] };
    return output;
  }
}

/** The scalars of a planned step that the paged kernel takes. */
const kernelScalars = (step: PagedStep): { scale: number; softcap: number; left: number } => ({ scale: step.scale, softcap: step.softcap, left: step.left });

/** A step's query blocks of one sequence as [first, count]: all n together when causal, else one by one. */
function blockSpans(n: number, causal: boolean): Array<[number, number]> {
  if (causal) return n > 0 ? [[0, n]] : [];
  return Array.from({ length: n }, (_, i): [number, number] => [i, 1]);
}

/** options.dtype: one of KV_DTYPES, float32 when left out. */
function readDtype(value: unknown): KVDtype {
  if (value === undefined) return 'float32';
  if (!KV_DTYPES.includes(value as KVDtype)) {
    throw new AttentionError('INVALID_OPTION', `options.dtype must be one of ${KV_DTYPES.map((d) => `'${d}'`).join(', ')}, got ${describe(value)}`, 'options.dtype');
  }
  return value as KVDtype;
}

/** options.counts read once into a snapshot: `batch` integers >= 0 (holes and non-integers refused). */
function readCounts(value: unknown, batch: number): number[] {
  const refuse = (): never => {
    throw new AttentionError('INVALID_OPTION', `options.counts must be an array of ${batch} integers >= 0, got ${describe(value)}`, 'options.counts');
  };
  if (!Array.isArray(value)) return refuse();
  const snapshot: unknown[] = [];
  for (let i = 0; i < batch; i++) snapshot.push(Object.prototype.hasOwnProperty.call(value, i) ? value[i] : undefined);
  if (value.length !== batch) return refuse();
  const counts: number[] = [];
  for (const c of snapshot) {
    if (typeof c !== 'number' || !Number.isSafeInteger(c) || c < 0) return refuse();
    counts.push(c);
  }
  return counts;
}
