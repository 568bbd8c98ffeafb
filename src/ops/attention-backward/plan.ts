// Attention backward's plan: the forward call's arguments (checked as the forward checks them, into
// the forward's plan), the forward's output and its gradient, and the log-sum-exp of each query row.
//
//   q [B, Hq, Sq, Dk], k [B, Hkv, Skv, Dk], v [B, Hkv, Skv, Dv], out and dOut [B, Hq, Sq, Dv],
//   logSumExp [B, Hq, Sq]  ->  dq [B, Hq, Sq, Dk], dk [B, Hkv, Skv, Dk], dv [B, Hkv, Skv, Dv]
//
// The gradients of sum(dOut ∘ attention(q, k, v, options)); see ./reference.ts for the exact math.
// Nothing here touches a kernel: a refused call leaves no trace.
import type { Operand, OperandResolver, OpPlan } from '../../backend.js';
import { AttentionError } from '../../errors.js';
import { type Tensor, type TensorLike, type TensorRead, checkNoOverlap, checkOut, checkResultSize, describe, floatTensor, readTensor, sizeOf, typedArrayName } from '../../tensor.js';
import { type AttentionOptions, type AttentionPlan, attentionLayout, finishAttentionPlan, readAttentionOptions } from '../attention/plan.js';

/** Options of `engine.attentionBackward`: the forward call's, and the log-sum-exp it returned. */
export interface AttentionBackwardOptions extends Omit<AttentionOptions, 'returnWeights' | 'returnLogSumExp' | 'out'> {
  /**
   * The forward call's log-sum-exp per query row [B, Hq, Sq] (attention with returnLogSumExp). Left
   * out, the backward call computes it with one more forward pass.
   */
  logSumExp?: TensorLike<Float32Array>;
  /**
   * Write the gradients into these Float32Arrays (any of them) instead of new ones: a training loop
   * that keeps its gradient buffers saves the allocation (and, on a fresh array, the page faults).
   */
  grads?: { dq?: Float32Array; dk?: Float32Array; dv?: Float32Array };
}

/** What attentionBackward returns: the gradient of each input. */
export interface AttentionGradients {
  /** [B, Hq, Sq, Dk] */
  dq: Tensor;
  /** [B, Hkv, Skv, Dk]: summed over the query heads that read each kv head. */
  dk: Tensor;
  /** [B, Hkv, Skv, Dv]: the same. */
  dv: Tensor;
}

export const ATTENTION_BACKWARD_OPTION_KEYS = ['scale', 'softcap', 'causal', 'mask', 'window', 'rope', 'logSumExp', 'grads'] as const;

/** Where the caller asked each gradient to go (undefined: a new array). */
export interface GradientOutputs {
  readonly dq?: Operand<Float32Array>;
  readonly dk?: Operand<Float32Array>;
  readonly dv?: Operand<Float32Array>;
}

/** A checked backward call. */
export interface AttentionBackwardPlan extends OpPlan {
  /** The forward call (layout, scalars, mask, window, rope), nothing returned besides its output. */
  readonly forward: AttentionPlan;
  /** The forward's output, at the forward's output strides (forward.strides.out). */
  readonly output: Operand<Float32Array>;
  /** Its gradient, the same layout. */
  readonly gradOutput: Operand<Float32Array>;
  /** dq, dk and dv come out in the layout (strides) and dims of q, k and v. */
  readonly gradDims: { readonly q: number[]; readonly k: number[]; readonly v: number[] };
  /** options.grads, checked. */
  readonly into: GradientOutputs;
  /** [B, Hq, Sq] as given; undefined (or not trusted, see TRUSTED_LOG_SUM_EXP): the call computes each row's stats. */
  readonly logSumExp: Operand<Float32Array> | undefined;
}

/**
 * A given log-sum-exp L is used as it is only where |L| < this (or L = -inf, a row that saw no key):
 * there float32 keeps log(sum) to 2^-11 or better. Past it (a row whose scores a huge additive mask such
 * as -1e9 or float32's lowest pushed down, where L rounds to the max and loses log(sum) entirely, or a
 * NaN or infinite L) the call computes every row's softmax stats itself, as when L is left out.
 */
export const TRUSTED_LOG_SUM_EXP = 4096;

/** Whether every value of a given log-sum-exp can be used as it is (see TRUSTED_LOG_SUM_EXP). */
export function trustedLogSumExp(lse: ArrayLike<number>): boolean {
  for (let i = 0; i < lse.length; i++) {
    const x = lse[i];
    if (!(Math.abs(x) < TRUSTED_LOG_SUM_EXP) && x !== -Infinity) return false;
  }
  return true;
}

/** One more tensor of the backward call, checked against the dims it must have. */
function exactly(read: TensorRead, dims: readonly number[], resolver: OperandResolver, meaning: string): Operand<Float32Array> {
  const checked = floatTensor(read, resolver, dims.length);
  checked.dims.forEach((d, i) => {
    if (d !== dims[i]) {
      throw new AttentionError('SHAPE_MISMATCH', `${read.name}.dims[${i}] is ${d} but ${meaning} is [${dims}]`, `${read.name}.dims[${i}]`);
    }
  });
  return checked.operand;
}

/** Checks a backward call; see the file header. */
export function planAttentionBackward(q: unknown, k: unknown, v: unknown, out: unknown, dOut: unknown, options: unknown, resolver: OperandResolver): AttentionBackwardPlan {
  // every read first (user code may run here), then every check
  const qRead = readTensor(q, 'q');
  const kRead = readTensor(k, 'k');
  const vRead = readTensor(v, 'v');
  const outRead = readTensor(out, 'out');
  const dOutRead = readTensor(dOut, 'dOut');
  const opts = readAttentionOptions(options, 'options', ATTENTION_BACKWARD_OPTION_KEYS);
  const forward = finishAttentionPlan(attentionLayout(qRead, kRead, vRead, resolver), opts, resolver);
  const { batch, qHeads, kvHeads, seqQ, seqKV, headDim, valueDim } = forward;
  const output = exactly(outRead, forward.outDims, resolver, "the forward's output [B, Hq, Sq, Dv]");
  const gradOutput = exactly(dOutRead, forward.outDims, resolver, "the forward's output [B, Hq, Sq, Dv]");
  const logSumExp = opts.logSumExp && exactly(opts.logSumExp, [batch, qHeads, seqQ], resolver, 'one per query row [B, Hq, Sq]');
  checkResultSize(sizeOf([batch, qHeads, seqQ, headDim]), `dq [${batch}, ${qHeads}, ${seqQ}, ${headDim}]`, 'q.dims');
  checkResultSize(sizeOf([batch, kvHeads, seqKV, Math.max(headDim, valueDim)]), `dk and dv [${batch}, ${kvHeads}, ${seqKV}, ${headDim} / ${valueDim}]`, 'k.dims');
  const into = checkGradientOutputs(opts.grads as Record<string, unknown> | undefined, { dq: sizeOf([batch, qHeads, seqQ, headDim]), dk: sizeOf([batch, kvHeads, seqKV, headDim]), dv: sizeOf([batch, kvHeads, seqKV, valueDim]) }, [
    [forward.q, 'q.data'], [forward.k, 'k.data'], [forward.v, 'v.data'], [forward.mask?.operand, 'options.mask.data'], [output, 'out.data'], [gradOutput, 'dOut.data'], [logSumExp, 'options.logSumExp.data'],
  ], resolver);
  return backwardPlanOf(forward, output, gradOutput, logSumExp, { q: [batch, qHeads, seqQ, headDim], k: [batch, kvHeads, seqKV, headDim], v: [batch, kvHeads, seqKV, valueDim] }, into);
}

/** options.grads as read: each a Float32Array of its gradient's size, apart from every input and from each other. */
function checkGradientOutputs(
  given: Record<string, unknown> | undefined, sizes: Record<'dq' | 'dk' | 'dv', number>, inputs: ReadonlyArray<readonly [Operand | undefined, string]>, resolver: OperandResolver,
): GradientOutputs {
  if (!given) return {};
  const into: Record<string, Operand<Float32Array>> = {};
  const taken: Array<readonly [Operand | undefined, string]> = [...inputs];
  for (const name of ['dq', 'dk', 'dv'] as const) {
    const value = given[name];
    if (value === undefined) continue;
    if (typedArrayName(value) !== 'Float32Array') {
      throw new AttentionError('INVALID_DTYPE', `options.grads.${name} must be a Float32Array, got ${describe(value)}`, `options.grads.${name}`);
    }
    const operand = checkOut(value, sizes[name], resolver, `options.grads.${name}`)!;
    checkNoOverlap(operand, taken, false, `options.grads.${name}`);
    taken.push([operand, `options.grads.${name}`]);
    into[name] = operand;
  }
  return into;
}

/** The plan of a backward call over a checked forward plan (any strides: the layer's [B, S, H·D] too). */
export function backwardPlanOf(
  forward: AttentionPlan, output: Operand<Float32Array>, gradOutput: Operand<Float32Array>, logSumExp: Operand<Float32Array> | undefined, gradDims: AttentionBackwardPlan['gradDims'],
  into: GradientOutputs = {},
): AttentionBackwardPlan {
  const { batch, qHeads, seqQ, seqKV, headDim, valueDim } = forward;
  // five products of a row and a key (the scores again, dOut·v, P·dOut, dS·k, dSᵀ·q) against the forward's two
  const flops = 2 * batch * qHeads * seqQ * seqKV * (3 * headDim + 2 * valueDim);
  return { flops, forward, output, gradOutput, logSumExp, gradDims, into };
}
