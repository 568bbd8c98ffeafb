// A KV cache for decoding: keys [B, Hkv, maxSeq, D] and values [B, Hkv, maxSeq, Dv] kept in the
// engine's memory (WASM memory on the wasm backends), filled in place by append, and attended to in
// place by attention: the history is never copied. Each sequence of the batch has its own length,
// so a batch may hold sequences at different positions (ragged decoding).
import type { AttentionOutput, Engine, ResidentTensor } from './engine.js';
import { AttentionError } from './errors.js';
import { type AttentionLayout, type AttentionOptions, type AttentionPlan, type HeadStrides, batchSlice, packed, planAttentionOptions } from './plan.js';
import { type TensorLike, checkFloatTensor, checkOptionsObject, describe } from './tensor.js';

export interface KVCacheOptions {
  batch: number;
  kvHeads: number;
  headDim: number;
  /** Default: headDim. */
  valueDim?: number;
  /** Positions each sequence can hold; appending past it is refused (code CACHE_FULL). */
  maxSeq: number;
}

/** Options of cache.attention: those of engine.attention, with causal on by default. */
export type CacheAttentionOptions = Omit<AttentionOptions, 'out'> & { out?: Float32Array };

export class KVCache {
  readonly batch: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly valueDim: number;
  readonly maxSeq: number;
  private readonly engine: Engine;
  private keys: ResidentTensor | undefined;
  private values: ResidentTensor | undefined;
  private readonly seqLengths: Int32Array;

  /** @internal use engine.kvCache */
  constructor(engine: Engine, options: KVCacheOptions) {
    const opts = checkOptionsObject(options, 'options') as Partial<KVCacheOptions>;
    const int = (name: keyof KVCacheOptions, min: number, fallback?: number): number => {
      const value = opts[name] ?? fallback;
      if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
        throw new AttentionError('INVALID_OPTION', `options.${name} must be an integer >= ${min}, got ${describe(value)}`, `options.${name}`);
      }
      return value;
    };
    this.batch = int('batch', 1);
    this.kvHeads = int('kvHeads', 1);
    this.headDim = int('headDim', 1);
    this.valueDim = int('valueDim', 1, this.headDim);
    this.maxSeq = int('maxSeq', 1);
    this.engine = engine;
    this.keys = engine.tensor([this.batch, this.kvHeads, this.maxSeq, this.headDim]);
    try {
      this.values = engine.tensor([this.batch, this.kvHeads, this.maxSeq, this.valueDim]);
    } catch (error) {
      this.keys.release();
      throw error;
    }
    this.seqLengths = new Int32Array(this.batch);
  }

  private live(): [ResidentTensor, ResidentTensor] {
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

  /** Gives the cache's memory back to the engine; later calls throw. */
  dispose(): void {
    this.keys?.release();
    this.values?.release();
    this.keys = this.values = undefined;
  }

  /**
   * Appends n new positions to every sequence: k [B, Hkv, n, D] and v [B, Hkv, n, Dv] (or 3D
   * [B, n, Hkv·D] and [B, n, Hkv·Dv], as a projection gives them). With
   * `counts`, sequence b takes only its first counts[b] new positions (ragged prefill).
   */
  append(k: TensorLike<Float32Array>, v: TensorLike<Float32Array>, options?: { counts?: readonly number[] }): void {
    const [keys, values] = this.live();
    const kIn = this.entries(k, 'k', this.headDim);
    const vIn = this.entries(v, 'v', this.valueDim);
    const n = kIn.n;
    if (vIn.n !== n) throw new AttentionError('SHAPE_MISMATCH', `v has ${vIn.n} new positions but k has ${n}`, 'v.dims');
    const countsOption = checkOptionsObject(options, 'options').counts as unknown;
    const counts = countsOption === undefined ? new Array<number>(this.batch).fill(n) : (countsOption as number[]);
    if (!Array.isArray(counts) || counts.length !== this.batch || counts.some((c) => !Number.isInteger(c) || c < 0 || c > n)) {
      throw new AttentionError('INVALID_OPTION', `options.counts must be ${this.batch} integers in [0, ${n}], got ${describe(countsOption)}`, 'options.counts');
    }
    for (let b = 0; b < this.batch; b++) {
      if (this.seqLengths[b] + counts[b] > this.maxSeq) {
        throw new AttentionError('CACHE_FULL', `sequence ${b} holds ${this.seqLengths[b]} positions; ${counts[b]} more pass maxSeq ${this.maxSeq}`, 'k');
      }
    }
    for (const [input, store, width] of [[kIn, keys.data, this.headDim], [vIn, values.data, this.valueDim]] as const) {
      for (let b = 0; b < this.batch; b++) {
        for (let h = 0; h < this.kvHeads; h++) {
          const dst = ((b * this.kvHeads + h) * this.maxSeq + this.seqLengths[b]) * width;
          for (let t = 0; t < counts[b]; t++) {
            const src = b * input.strides.batch + h * input.strides.head + t * input.strides.row;
            store.set(input.data.subarray(src, src + width), dst + t * width);
          }
        }
      }
    }
    for (let b = 0; b < this.batch; b++) this.seqLengths[b] += counts[b];
  }

  /** Checks new entries, 4D [B, Hkv, n, width] or 3D [B, n, Hkv·width], and returns their strides. */
  private entries(t: TensorLike<Float32Array>, name: string, width: number): { data: Float32Array; n: number; strides: HeadStrides } {
    const dims = checkFloatTensor(t, name);
    const expected = dims.length === 3 ? [this.batch, dims[1], this.kvHeads * width] : [this.batch, this.kvHeads, dims[2], width];
    if (dims.length !== 3 && dims.length !== 4) throw new AttentionError('INVALID_DIMS', `${name} must be [B, Hkv, n, D] or [B, n, Hkv·D], got dims [${dims}]`, `${name}.dims`);
    dims.forEach((d, i) => {
      if (d !== expected[i]) throw new AttentionError('SHAPE_MISMATCH', `${name}.dims[${i}] is ${d} but the cache needs [${expected}]`, `${name}.dims[${i}]`);
    });
    const n = dims.length === 3 ? dims[1] : dims[2];
    const strides = dims.length === 3 ? { batch: n * this.kvHeads * width, head: width, row: this.kvHeads * width } : packed(this.kvHeads, n, width);
    return { data: t.data, n, strides };
  }

  /**
   * Attention of q [B, Hq, n, D] (or [B, n, Hq·D]: the result then is [B, n, Hq·Dv]), the newest
   * n positions of each sequence, over everything cached:
   * causal by default, aligned bottom-right (query i of the block sees keys up to length - n + i).
   * A mask broadcasts to [B, Hq, n, length] (length: the longest sequence).
   */
  attention(q: TensorLike<Float32Array>, options?: CacheAttentionOptions): AttentionOutput {
    const { plan, kData, vData, lengths } = this.plan(q, options);
    if (lengths.every((l) => l === plan.seqKV)) return this.engine.runAttention(plan, q.data, kData, vData);
    return this.ragged(plan, q.data, kData, vData, lengths);
  }

  /**
   * attention() on the engine's worker threads, leaving the event loop free (a ragged batch runs its
   * sequences one after another on the calling thread). Append this step's keys first; do not append
   * to the cache while the call runs.
   */
  async attentionAsync(q: TensorLike<Float32Array>, options?: CacheAttentionOptions): Promise<AttentionOutput> {
    const { plan, kData, vData, lengths } = this.plan(q, options);
    if (lengths.every((l) => l === plan.seqKV)) return this.engine.runAttentionAsync(plan, q.data, kData, vData);
    return this.ragged(plan, q.data, kData, vData, lengths);
  }

  private plan(q: TensorLike<Float32Array>, options: CacheAttentionOptions | undefined) {
    const [keys, values] = this.live();
    const qDims = checkFloatTensor(q, 'q');
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
    const given = checkOptionsObject(options, 'options');
    const opts = { ...given, causal: given.causal ?? true };
    const lengths = this.lengths;
    const length = this.length;
    for (let b = 0; b < batch; b++) {
      if (lengths[b] < n) throw new AttentionError('SHAPE_MISMATCH', `q has ${n} positions but sequence ${b} holds only ${lengths[b]}: append this step's keys first`, 'q.dims[2]');
    }
    const capacity = { batch: this.kvHeads * this.maxSeq, head: this.maxSeq, row: 1 };
    // [B, n, H·D] (3D) is read and written through strides, like [B, H, n, D]
    const strided = (heads: number, width: number): HeadStrides => (rows ? { batch: n * heads * width, head: width, row: heads * width } : packed(heads, n, width));
    const layout = (seqKV: number, batches: number): AttentionLayout => ({
      batch: batches, qHeads, kvHeads: this.kvHeads, seqQ: n, seqKV, headDim, valueDim: this.valueDim,
      q: strided(qHeads, headDim),
      k: { batch: capacity.batch * headDim, head: capacity.head * headDim, row: headDim },
      v: { batch: capacity.batch * this.valueDim, head: capacity.head * this.valueDim, row: this.valueDim },
      out: strided(qHeads, this.valueDim),
      outDims: rows ? [batches, n, qHeads * this.valueDim] : [batches, qHeads, n, this.valueDim],
      offset: seqKV - n,
    });
    const kData = keys.data as Float32Array;
    const vData = values.data as Float32Array;
    const plan = planAttentionOptions(layout(length, batch), opts, [[q.data, 'q.data']]);
    if (plan.outBuffer && (plan.outBuffer.buffer === kData.buffer || plan.outBuffer.buffer === vData.buffer)) {
      throw new AttentionError('INVALID_OPTION', 'options.out must not be a view of the cache', 'options.out');
    }
    return { plan, kData, vData, lengths };
  }

  /** Sequences at different lengths: one call per sequence, each over its own keys. */
  private ragged(plan: AttentionPlan, q: Float32Array, kData: Float32Array, vData: Float32Array, lengths: number[]): AttentionOutput {
    const out = plan.outBuffer ?? new Float32Array(plan.batch * plan.qHeads * plan.seqQ * plan.valueDim);
    const lse = plan.returnLogSumExp ? new Float32Array(plan.batch * plan.qHeads * plan.seqQ) : undefined;
    const weights = plan.returnWeights ? new Float32Array(plan.batch * plan.qHeads * plan.seqQ * plan.seqKV) : undefined;
    for (let b = 0; b < plan.batch; b++) {
      const one = batchSlice(plan, b, lengths[b], lengths[b] - plan.seqQ, q, kData, vData, out);
      const result = this.engine.runAttention(one.plan, one.q, one.k, one.v);
      lse?.set(result.logSumExp!.data, b * plan.qHeads * plan.seqQ);
      if (weights) {
        // this sequence's weights into the [.., length] rows, zero past its own length
        for (let r = 0; r < plan.qHeads * plan.seqQ; r++) {
          weights.set(result.weights!.data.subarray(r * lengths[b], (r + 1) * lengths[b]), (b * plan.qHeads * plan.seqQ + r) * plan.seqKV);
        }
      }
    }
    const output: AttentionOutput = { data: out, dims: plan.outDims };
    if (lse) output.logSumExp = { data: lse, dims: [plan.batch, plan.qHeads, plan.seqQ] };
    if (weights) output.weights = { data: weights, dims: [plan.batch, plan.qHeads, plan.seqQ, plan.seqKV] };
    return output;
  }
}
