// Attention on the wasm kernels: lays a plan out as a job (job.ts) in WASM memory, and reads the
// result back: the output, the log-sum-exp from the kernel's per-row [max, sum], the weights the
// kernel wrote. Split-KV is decided by the shape alone, so every thread count computes the same bits.
// With rope, q and k are staged, then rotated by f32_rope_rows into packed temporary blocks that the
// job reads instead: a staged resident operand is the caller's tensor itself, never rotated in place.
import type { Encoded, WasmCall, WasmOp } from '../../backend.js';
import { MASK_KIND } from '../../backends/kernels.js';
import { HEADER } from '../../job.js';
import { ATTENTION_BLOCKS_PER_ITEM, ATTENTION_JOB, SPLIT_KV_CHUNK, SPLIT_KV_MAX_ROWS, SPLIT_KV_MIN_KEYS, mergeSplitKV } from './job.js';
import { type AttentionOutput, type AttentionPlan, type AttentionRope, type HeadStrides, type RopeTables, packed } from './plan.js';

const J = ATTENTION_JOB.at;

/** Each tensor's strides sit in three consecutive job fields: batch, head, row. */
export function putStrides(job: Float64Array, at: number, strides: HeadStrides): void {
  job[at] = strides.batch;
  job[at + 1] = strides.head;
  job[at + 2] = strides.row;
}

/** What encode laid out beyond the job: where the result is. */
interface AttentionEncoded extends Encoded {
  splitKV: boolean;
}

/**
 * The staged x [B, H, rows, D] at `at` (its strides) rotated by the kernel, head by head, into a new
 * packed block; returns the block's address.
 */
function rotatedCopy(
  call: WasmCall, at: number, strides: HeadStrides, batch: number, heads: number, rows: number, headDim: number,
  rope: AttentionRope, tables: RopeTables, name: string,
): number {
  const copy = call.alloc(4 * batch * heads * rows * headDim);
  const cos = call.stage(tables.cos, `${name} rope cos`);
  const sin = call.stage(tables.sin, `${name} rope sin`);
  const half = rope.dims / 2;
  for (let b = 0; b < batch; b++) {
    const table = 4 * b * tables.batchStride * half;
    for (let h = 0; h < heads; h++) {
      call.kernels.f32_rope_rows(
        at + 4 * (b * strides.batch + h * strides.head), strides.row, copy + 4 * (b * heads + h) * rows * headDim, headDim,
        rows, headDim, rope.dims, cos + table, sin + table, half, rope.interleaved ? 1 : 0,
      );
    }
  }
  return copy;
}

/** q and k staged as the scores read them: in place, or with rope rotated into packed blocks (and their strides). */
export function stageScored(plan: AttentionPlan, call: WasmCall): { q: number; k: number; qStrides: HeadStrides; kStrides: HeadStrides } {
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, strides, rope } = plan;
  const q = call.stage(plan.q, 'q.data');
  const k = call.stage(plan.k, 'k.data');
  if (!rope) return { q, k, qStrides: strides.q, kStrides: strides.k };
  const qRotated = rotatedCopy(call, q, strides.q, batch, qHeads, seqQ, headDim, rope, rope.q, 'q');
  if (!rope.k) return { q: qRotated, k, qStrides: packed(qHeads, seqQ, headDim), kStrides: strides.k };
  const kRotated = rotatedCopy(call, k, strides.k, batch, kvHeads, seqKV, headDim, rope, rope.k, 'k');
  return { q: qRotated, k: kRotated, qStrides: packed(qHeads, seqQ, headDim), kStrides: packed(kvHeads, seqKV, headDim) };
}

export const attentionWasm: WasmOp<AttentionPlan, AttentionOutput> = {
  layout: ATTENTION_JOB,

  encode(plan: AttentionPlan, call: WasmCall): AttentionEncoded {
    const job = ATTENTION_JOB.create();
    const size = plan.batch * plan.qHeads * plan.seqQ * plan.valueDim;
    const mask = plan.mask;
    const { q, k, qStrides, kStrides } = stageScored(plan, call);
    job[J.q] = q;
    job[J.k] = k;
    job[J.v] = call.stage(plan.v, 'v.data');
    job[J.mask] = mask ? call.stage(mask.operand, 'options.mask.data') : 0;
    const outPtr = call.output(plan.out, size);
    job[J.out] = outPtr;
    putStrides(job, J.qB, qStrides);
    putStrides(job, J.kB, kStrides);
    putStrides(job, J.vB, plan.strides.v);
    putStrides(job, J.oB, plan.strides.out);
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
    const rowChunk = ATTENTION_BLOCKS_PER_ITEM * call.kernels.f32_attention_block_rows();
    job[J.rowChunk] = rowChunk;
    job[J.rowChunks] = Math.ceil(plan.seqQ / rowChunk);
    // weights need each row's final max and sum inside one item: no split-KV then
    const splitKV = plan.seqQ <= SPLIT_KV_MAX_ROWS && plan.seqKV >= SPLIT_KV_MIN_KEYS && plan.valueDim > 0 && !plan.returnWeights;
    job[J.kvChunk] = splitKV ? SPLIT_KV_CHUNK : plan.seqKV;
    job[J.kvChunks] = splitKV ? Math.ceil(plan.seqKV / SPLIT_KV_CHUNK) : 1;
    // nothing to compute when the output is empty and nothing else was asked for
    const empty = plan.valueDim === 0 && !plan.returnLogSumExp && !plan.returnWeights;
    job[HEADER.items] = empty ? 0 : plan.batch * plan.qHeads * job[J.rowChunks] * job[J.kvChunks];
    if (splitKV) {
      const slots = plan.batch * plan.qHeads * job[J.kvChunks] * plan.seqQ;
      job[J.partialOut] = call.alloc(slots * plan.valueDim * 4);
      job[J.partialStats] = call.alloc(slots * 8);
    }
    const rows = plan.batch * plan.qHeads * plan.seqQ;
    if (plan.returnLogSumExp) job[J.stats] = call.alloc(8 * rows);
    if (plan.returnWeights) {
      job[J.weights] = call.alloc(4 * rows * plan.seqKV);
      // rows of a fully hidden query chunk are never visited by the kernel: start from zeros
      call.u8.fill(0, job[J.weights], job[J.weights] + 4 * rows * plan.seqKV);
    }
    const scratchBytes = call.kernels.f32_attention_scratch_bytes(plan.headDim, plan.valueDim);
    return { job, scratchBytes, outPtr, size, splitKV };
  },

  finish(plan: AttentionPlan, call: WasmCall, encoded: Encoded): AttentionOutput {
    const { job, outPtr, size, splitKV } = encoded as AttentionEncoded;
    if (splitKV) mergeSplitKV(job, call.kernels);
    const output: AttentionOutput = { data: call.collect(outPtr, size, plan.out), dims: plan.outDims };
    const rows = plan.batch * plan.qHeads * plan.seqQ;
    if (plan.returnLogSumExp) {
      // log-sum-exp per row from the kernel's [max, sum] pairs
      const f32 = call.f32;
      const base = job[J.stats] >>> 2;
      const lse = new Float32Array(rows);
      for (let r = 0; r < rows; r++) {
        const sum = f32[base + 2 * r + 1];
        lse[r] = sum > 0 || Number.isNaN(sum) ? f32[base + 2 * r] + Math.log(sum) : -Infinity;
      }
      output.logSumExp = { data: lse, dims: [plan.batch, plan.qHeads, plan.seqQ] };
    }
    if (plan.returnWeights) {
      output.weights = { data: call.collect(job[J.weights], rows * plan.seqKV, undefined), dims: [plan.batch, plan.qHeads, plan.seqQ, plan.seqKV] };
    }
    return output;
  },
};
