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
import { type Backend, type Operand, operandArray } from '../backend.js';
import { AttentionError } from '../errors.js';
import type { ResidentTensor } from '../memory/resident.js';
import { attentionOp } from '../ops/attention/index.js';
import {
  type AttentionLayout, type AttentionOptions, type AttentionOptionsRead, type AttentionOutput, type AttentionPlan, type HeadStrides, type RopeRead,
  batchSlice, finishAttentionPlan, packed, readAttentionOptions,
} from '../ops/attention/plan.js';
import { rotateRows } from '../ops/rope/js.js';
import { type RopeOptions, type RopeSpec, angleTables, readRope } from '../ops/rope/options.js';
import { type Checked, type TensorLike, type TensorRead, checkInteger, describe, floatTensor, readOptions, readTensor } from '../tensor.js';

export interface KVCacheOptions {
  batch: number;
  kvHeads: number;
  headDim: number;
  /** Default: headDim. */
  valueDim?: number;
  /** Positions each sequence can hold; appending past it is refused (code CACHE_FULL). */
  maxSeq: number;
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
  counts: number[];
  /** Angle tables [B, n, dims/2] of the new keys' positions. */
  rope: { spec: RopeSpec; cos: Float32Array; sin: Float32Array; n: number } | undefined;
}

export class KVCache {
  readonly batch: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly valueDim: number;
  readonly maxSeq: number;
  private readonly backend: Backend;
  private keys: ResidentTensor | undefined;
  private values: ResidentTensor | undefined;
  private readonly seqLengths: Int32Array;
  readonly #made = true;

  /** @internal use engine.kvCache */
  constructor(backend: Backend, options: KVCacheOptions) {
    const opts = readOptions(options, 'options', ['batch', 'kvHeads', 'headDim', 'valueDim', 'maxSeq']);
    const int = (name: keyof KVCacheOptions, min: number, fallback?: number): number => checkInteger(opts[name], `options.${name}`, min, fallback);
    this.batch = int('batch', 1);
    this.kvHeads = int('kvHeads', 1);
    this.headDim = int('headDim', 1);
    this.valueDim = int('valueDim', 1, this.headDim);
    this.maxSeq = int('maxSeq', 1);
    const elements = this.batch * this.kvHeads * this.maxSeq * Math.max(this.headDim, this.valueDim);
    if (elements > 2 ** 30) {
      throw new AttentionError('OUT_OF_MEMORY', `a cache of batch ${this.batch}, ${this.kvHeads} kv heads, ${this.maxSeq} positions of ${this.headDim}/${this.valueDim} needs ${elements} floats each for keys and values; at most 2^30 fit`, 'options.maxSeq');
    }
    this.backend = backend;
    this.keys = backend.tensor([this.batch, this.kvHeads, this.maxSeq, this.headDim], 'float32');
    try {
      this.values = backend.tensor([this.batch, this.kvHeads, this.maxSeq, this.valueDim], 'float32');
    } catch (error) {
      this.keys.release();
      throw error;
    }
    this.seqLengths = new Int32Array(this.batch);
  }

  /** Whether `x` is a real KVCache (not merely an object with its prototype). */
  static is(x: unknown): x is KVCache {
    return typeof x === 'object' && x !== null && #made in x;
  }

  /** @internal whether this cache lives in `backend`'s memory */
  ownedBy(backend: Backend): boolean {
    return this.backend === backend;
  }

  private live(): [ResidentTensor, ResidentTensor] {
    this.backend.live();
    if (!this.keys || !this.values) throw new AttentionError('DISPOSED', 'this KV cache was disposed');
    return [this.keys, this.values];
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
    this.seqLengths.fill(0);
  }

  /** Gives the cache's memory back to the engine (after the calls still using it); later calls throw. */
  dispose(): void {
    this.keys?.release();
    this.values?.release();
    this.keys = this.values = undefined;
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
    this.write(plan);
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
    return { k, v, counts: counts ?? new Array<number>(this.batch).fill(n), rope: rope && this.keyTables(rope, n) };
  }

  /** The angle tables [B, n, dims/2] of n new keys per sequence, at lengths[b] + t. */
  private keyTables(spec: RopeSpec, n: number): AppendPlan['rope'] {
    const positions = new Float64Array(this.batch * n);
    for (let b = 0; b < this.batch; b++) for (let t = 0; t < n; t++) positions[b * n + t] = this.seqLengths[b] + t;
    return { spec, n, ...angleTables(positions, spec.dims, spec.base) };
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
    const [keys, values] = this.live();
    const { counts, rope } = plan;
    for (const [input, store, width] of [[plan.k, keys.data as Float32Array, this.headDim], [plan.v, values.data as Float32Array, this.valueDim]] as const) {
      for (let b = 0; b < this.batch; b++) {
        for (let h = 0; h < this.kvHeads; h++) {
          const dst = ((b * this.kvHeads + h) * this.maxSeq + this.seqLengths[b]) * width;
          if (rope && input === plan.k) {
            const { dims, interleaved } = rope.spec;
            const at = b * input.strides.batch + h * input.strides.head;
            rotateRows(input.data, at, input.strides.row, store, dst, width, counts[b], width, dims, rope.cos, rope.sin, b * rope.n * (dims / 2), interleaved);
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
   * A mask broadcasts to [B, Hq, n, length] (length: the longest sequence).
   */
  attention(q: TensorLike<Float32Array>, options?: CacheAttentionOptions): AttentionOutput {
    this.live();
    const qRead = readTensor(q, 'q');
    return this.run(this.planAttention(qRead, readAttentionOptions(options), this.lengths));
  }

  /**
   * attention() on the engine's worker threads, leaving the event loop free (a ragged batch runs its
   * sequences one after another on the calling thread). Append this step's keys first; the cache's
   * memory stays allocated until the call settles, even if the cache is disposed meanwhile.
   */
  async attentionAsync(q: TensorLike<Float32Array>, options?: CacheAttentionOptions): Promise<AttentionOutput> {
    this.live();
    const qRead = readTensor(q, 'q');
    const step = this.planAttention(qRead, readAttentionOptions(options), this.lengths);
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
    this.planChecked({ operand: q, dims }, options, this.lengths.map((l) => l + appended));
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
    const [keys, values] = this.live();
    const opts = { ...options, causal: options.causal ?? true };
    const { operand: q, dims: qDims } = qChecked;
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
    const length = Math.max(0, ...lengths);
    // [B, n, H·D] (3D) is read and written through strides, like [B, H, n, D]
    const strided = (heads: number, width: number): HeadStrides => (rows ? { batch: n * heads * width, head: width, row: heads * width } : packed(heads, n, width));
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
