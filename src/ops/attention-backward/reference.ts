// Attention's backward pass in float64: the oracle for every fast backward path. Plain loops straight
// from the chain rule, float64 throughout; it checks nothing (give it valid inputs).
//
// The forward (referenceAttention): s = scale · q_i·k_j, t = softcap(s) + mask (or -inf where causal,
// the window or a bool mask hides j), P = softmax_j(t), out_i = sum_j P_ij v_j. Given dOut:
//   dv_j  = sum_i P_ij dOut_i                                  (summed over the q heads of its kv head)
//   dP_ij = dOut_i · v_j,   D_i = sum_j P_ij dP_ij = dOut_i · out_i
//   dt_ij = P_ij (dP_ij - D_i)                                  (softmax's backward)
//   ds_ij = dt_ij · (1 - tanh²(s_ij / softcap))                 (softcap's; 1 without softcap)
//   dq_i  = scale · sum_j ds_ij k_j,   dk_j = scale · sum_i ds_ij q_i   (dk summed as dv)
// Masks take no gradient; a row that sees no key has P = 0 and gives nothing. With rope the products
// use the rotated q and k, and dq, dk are rotated back (RoPE is a rotation: its transpose turns by the
// opposite angle).
import type { TensorLike } from '../../tensor.js';
import { type ReferenceAttentionOptions, referenceAttention } from '../attention/reference.js';
import type { ReferenceTensor } from '../reference-math.js';
import { referenceRotary } from '../rope/reference.js';

export interface ReferenceAttentionGradients {
  /** [B, Hq, Sq, D] */
  dq: ReferenceTensor;
  /** [B, Hkv, Skv, D] */
  dk: ReferenceTensor;
  /** [B, Hkv, Skv, Dv] */
  dv: ReferenceTensor;
}

type Numbers = TensorLike<ArrayLike<number>>;

/** The gradients of sum(dOut ∘ attention(q, k, v, options)) with respect to q, k and v, in float64. */
export function referenceAttentionBackward(q: Numbers, k: Numbers, v: Numbers, dOut: Numbers, options: ReferenceAttentionOptions = {}): ReferenceAttentionGradients {
  const [B, Hq, Sq, D] = q.dims;
  const [, Hkv, Skv] = k.dims;
  const Dv = v.dims[3];
  const group = Hq / Hkv;
  const scale = options.scale ?? (D > 0 ? 1 / Math.sqrt(D) : 1);
  const softcap = options.softcap ?? 0;
  // the forward on rotated q and k, so that P and out are those the products saw
  const positions = (given: Numbers | undefined, start: number, count: number): Numbers => given ?? { data: Array.from({ length: count }, (_, i) => start + i), dims: [count] };
  const rope = options.rope;
  const qPositions = rope && positions(rope.qPositions, Skv - Sq, Sq);
  const kPositions = rope && positions(rope.kPositions, 0, Skv);
  const turn = (x: Numbers, at: Numbers, sign: 1 | -1): ReferenceTensor => referenceRotary(x, {
    positions: { data: Array.from(at.data, (p) => sign * Number(p)), dims: at.dims }, base: rope!.base, dims: rope!.dims, interleaved: rope!.interleaved,
  });
  const qr: Numbers = rope ? turn(q, qPositions!, 1) : q;
  const kr: Numbers = rope ? turn(k, kPositions!, 1) : k;
  const forward = referenceAttention(qr, kr, v, { ...options, rope: undefined });
  const P = forward.weights;
  const out = forward.data;
  const dq = new Float64Array(B * Hq * Sq * D);
  const dk = new Float64Array(B * Hkv * Skv * D);
  const dv = new Float64Array(B * Hkv * Skv * Dv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const g = Math.floor(h / group);
      for (let i = 0; i < Sq; i++) {
        const row = (b * Hq + h) * Sq + i;
        let rowDot = 0; // D_i
        for (let d = 0; d < Dv; d++) rowDot += Number(dOut.data[row * Dv + d]) * out[row * Dv + d];
        for (let j = 0; j < Skv; j++) {
          const p = P[row * Skv + j];
          if (p === 0) continue;
          const kvRow = (b * Hkv + g) * Skv + j;
          let dp = 0;
          for (let d = 0; d < Dv; d++) {
            const g0 = Number(dOut.data[row * Dv + d]);
            dp += g0 * Number(v.data[kvRow * Dv + d]);
            dv[kvRow * Dv + d] += p * g0;
          }
          let ds = p * (dp - rowDot);
          if (softcap) {
            let s = 0;
            for (let d = 0; d < D; d++) s += Number(qr.data[row * D + d]) * Number(kr.data[kvRow * D + d]);
            const th = Math.tanh((s * scale) / softcap);
            ds *= 1 - th * th;
          }
          for (let d = 0; d < D; d++) {
            dq[row * D + d] += scale * ds * Number(kr.data[kvRow * D + d]);
            dk[kvRow * D + d] += scale * ds * Number(qr.data[row * D + d]);
          }
        }
      }
    }
  }
  const dqTensor = { data: dq, dims: [B, Hq, Sq, D] };
  const dkTensor = { data: dk, dims: [B, Hkv, Skv, D] };
  return {
    dq: rope ? turn(dqTensor, qPositions!, -1) : dqTensor,
    dk: rope ? turn(dkTensor, kPositions!, -1) : dkTensor,
    dv: { data: dv, dims: [B, Hkv, Skv, Dv] },
  };
}
