// Attention backward on the wasm kernels: stages the forward's inputs (q and k rotated into packed
// copies when rope is on, as the forward does), out, dOut and each row's softmax stats [max, sum]
// (from the log-sum-exp L as [L, 1] where it can be trusted, see TRUSTED_LOG_SUM_EXP, else left for
// the items to compute with the forward kernel),
// runs the job (job.ts: one item per (batch, kv head), or, with fewer of those than threads and the
// stats given, items of dk, dv for key ranges and of dq for row ranges after D is computed here), and
// with rope turns dq and dk back by the opposite angles (f32_rope_rows with the sine negated) before
// reading them out.
import { type Encoded, type WasmCall, type WasmOp, operandArray } from '../../backend.js';
import { MASK_KIND } from '../../backends/kernels.js';
import { HEADER } from '../../job.js';
import type { HeadStrides, RopeTables } from '../attention/plan.js';
import { putStrides, stageScored } from '../attention/wasm.js';
import { BACKWARD_JOB, pairDelta } from './job.js';
import { type AttentionBackwardPlan, type AttentionGradients, trustedLogSumExp } from './plan.js';

const J = BACKWARD_JOB.at;

interface BackwardEncoded extends Encoded {
  dq: number;
  dk: number;
  dv: number;
}

/** x [B, H, rows, D] at `ptr` (its strides `at`) turned in place by the opposite angles of `tables`. */
function turnBack(call: WasmCall, ptr: number, at: HeadStrides, batch: number, heads: number, rows: number, headDim: number, dims: number, interleaved: boolean, tables: RopeTables, name: string): void {
  const half = dims / 2;
  const cos = call.stage(tables.cos, `${name} rope cos`);
  const sin = call.alloc(4 * tables.sin.length);
  const given = operandArray(tables.sin);
  const negative = call.f32;
  for (let i = 0; i < given.length; i++) negative[(sin >>> 2) + i] = -given[i];
  for (let b = 0; b < batch; b++) {
    const table = 4 * b * tables.batchStride * half;
    for (let h = 0; h < heads; h++) {
      const x = ptr + 4 * (b * at.batch + h * at.head);
      call.kernels.f32_rope_rows(x, at.row, x, at.row, rows, headDim, dims, cos + table, sin + table, half, interleaved ? 1 : 0);
    }
  }
}

export const attentionBackwardWasm: WasmOp<AttentionBackwardPlan, AttentionGradients> = {
  layout: BACKWARD_JOB,

  encode(plan: AttentionBackwardPlan, call: WasmCall): BackwardEncoded {
    const f = plan.forward;
    const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, mask } = f;
    const job = BACKWARD_JOB.create();
    const { q, k, qStrides, kStrides } = stageScored(f, call);
    job[J.q] = q;
    job[J.k] = k;
    job[J.v] = call.stage(f.v, 'v.data');
    job[J.out] = call.stage(plan.output, 'out.data');
    job[J.dOut] = call.stage(plan.gradOutput, 'dOut.data');
    job[J.mask] = mask ? call.stage(mask.operand, 'options.mask.data') : 0;
    putStrides(job, J.qB, qStrides);
    putStrides(job, J.kB, kStrides);
    putStrides(job, J.vB, f.strides.v);
    putStrides(job, J.oB, f.strides.out);
    // the gradients in the layout of q, k and v as given
    putStrides(job, J.dqB, f.strides.q);
    putStrides(job, J.dkB, f.strides.k);
    putStrides(job, J.dvB, f.strides.v);
    const rows = batch * qHeads * seqQ;
    job[J.stats] = call.alloc(8 * rows);
    const lsePtr = plan.logSumExp && call.stage(plan.logSumExp, 'options.logSumExp.data') >>> 2;
    if (lsePtr !== undefined && trustedLogSumExp(call.f32.subarray(lsePtr, lsePtr + rows))) {
      // [L, 1] per row: exp(t - L) / 1 is the weight; a row with L = -inf saw no key: [-inf, 0]
      const f32 = call.f32;
      const at = job[J.stats] >>> 2;
      for (let r = 0; r < rows; r++) {
        const lse = f32[lsePtr + r];
        f32[at + 2 * r] = lse;
        f32[at + 2 * r + 1] = lse === -Infinity ? 0 : 1;
      }
    } else {
      job[J.forwardOut] = call.alloc(4 * rows * valueDim);
    }
    job[J.delta] = call.alloc(4 * rows);
    // the items zero their own parts of the gradients; resident options.grads are written in place
    const { into } = plan;
    const dq = call.output(into.dq, rows * headDim, 'options.grads.dq');
    const dk = call.output(into.dk, batch * kvHeads * seqKV * headDim, 'options.grads.dk');
    const dv = call.output(into.dv, batch * kvHeads * seqKV * valueDim, 'options.grads.dv');
    job[J.dq] = dq;
    job[J.dk] = dk;
    job[J.dv] = dv;
    job[J.kvHeads] = kvHeads;
    job[J.group] = kvHeads === 0 ? 1 : qHeads / kvHeads;
    job[J.seqQ] = seqQ;
    job[J.seqKV] = seqKV;
    job[J.headDim] = headDim;
    job[J.valueDim] = valueDim;
    job[J.scale] = f.scale;
    job[J.cap] = f.softcap;
    job[J.maskKind] = mask ? MASK_KIND[mask.kind] : 0;
    job[J.maskBytes] = mask?.kind === 'bool' ? 1 : 4;
    if (mask) {
      job[J.mB] = mask.at.batch;
      job[J.mH] = mask.at.head;
      job[J.mRow] = mask.at.row;
    }
    job[J.offset] = f.offset;
    job[J.left] = f.left;
    job[J.right] = f.right;
    const pairs = batch * kvHeads;
    job[HEADER.items] = pairs;
    const kernels = call.kernels;
    const grain = kernels.f32_attention_backward_grain();
    const [chunkRows, blockKeys] = [grain & 0xffff, grain >>> 16];
    if (job[J.forwardOut] === 0 && pairs < call.threads && seqQ > 0 && seqKV > blockKeys) {
      // the split cut (job.ts): about 4 items of each kind per thread, in whole chunks and blocks
      const want = Math.ceil((4 * call.threads) / pairs);
      const keyBlocks = Math.ceil(seqKV / blockKeys);
      const rowChunks = Math.ceil(seqQ / chunkRows);
      job[J.keyStep] = blockKeys * Math.ceil(keyBlocks / Math.min(keyBlocks, want));
      job[J.keyItems] = Math.ceil(seqKV / job[J.keyStep]);
      job[J.rowStep] = chunkRows * Math.ceil(rowChunks / Math.min(rowChunks, want));
      job[J.rowItems] = Math.ceil(seqQ / job[J.rowStep]);
      job[HEADER.items] = pairs * (job[J.keyItems] + job[J.rowItems]);
      // D now: every item reads all of its pair's
      for (let p = 0; p < pairs; p++) pairDelta(kernels, job, Math.floor(p / kvHeads), p % kvHeads);
    }
    const scratchBytes = Math.max(
      kernels.f32_attention_backward_scratch_bytes(headDim, valueDim),
      job[J.forwardOut] === 0 ? 0 : kernels.f32_attention_scratch_bytes(headDim, valueDim),
    );
    return { job, scratchBytes, outPtr: dq, size: rows * headDim, dq, dk, dv };
  },

  finish(plan: AttentionBackwardPlan, call: WasmCall, encoded: Encoded): AttentionGradients {
    const { dq, dk, dv } = encoded as BackwardEncoded;
    const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim, rope } = plan.forward;
    const { strides } = plan.forward;
    if (rope) {
      turnBack(call, dq, strides.q, batch, qHeads, seqQ, headDim, rope.dims, rope.interleaved, rope.q, 'q');
      if (rope.k) turnBack(call, dk, strides.k, batch, kvHeads, seqKV, headDim, rope.dims, rope.interleaved, rope.k, 'k');
    }
    const { gradDims, into } = plan;
    return {
      dq: { data: call.collect(dq, batch * qHeads * seqQ * headDim, into.dq), dims: gradDims.q },
      dk: { data: call.collect(dk, batch * kvHeads * seqKV * headDim, into.dk), dims: gradDims.k },
      dv: { data: call.collect(dv, batch * kvHeads * seqKV * valueDim, into.dv), dims: gradDims.v },
    };
  },
};
