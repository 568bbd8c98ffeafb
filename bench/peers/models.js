// The ONNX graphs the onnxruntime peers run, built in memory with ./onnx-proto.js.
import { encodeModel } from './onnx-proto.js';

/** Float32 [Sq, Skv] mask: 0 where key j is visible to query i (j <= i + Skv - Sq), -inf above that diagonal. */
export function causalMask(seqQ, seqKV) {
  const mask = new Float32Array(seqQ * seqKV);
  const offset = seqKV - seqQ;
  for (let i = 0; i < seqQ; i++) mask.fill(-Infinity, i * seqKV + i + offset + 1, (i + 1) * seqKV);
  return mask;
}

const qkv = (s) => [
  { name: 'q', dims: [s.batch, s.heads, s.seqQ, s.headDim] },
  { name: 'k', dims: [s.batch, s.heads, s.seqKV, s.headDim] },
  { name: 'v', dims: [s.batch, s.heads, s.seqKV, s.headDim] },
];
const out = (s) => [{ name: 'y', dims: [s.batch, s.heads, s.seqQ, s.headDim] }];

/**
 * Unfused attention in plain ai.onnx opset 17 ops:
 * MatMul(q, Transpose(k)) → Mul(1/√D) → [Add(causal mask initializer)] → Softmax(axis -1) → MatMul(·, v).
 */
export function unfusedAttentionModel(s) {
  const nodes = [
    { op: 'Transpose', inputs: ['k'], outputs: ['kt'], attrs: { perm: [0, 1, 3, 2] } },
    { op: 'MatMul', inputs: ['q', 'kt'], outputs: ['scores'] },
    { op: 'Mul', inputs: ['scores', 'scale'], outputs: ['scaled'] },
  ];
  const initializers = [{ name: 'scale', dims: [], data: Float32Array.of(1 / Math.sqrt(s.headDim)) }];
  let logits = 'scaled';
  if (s.causal) {
    nodes.push({ op: 'Add', inputs: ['scaled', 'mask'], outputs: ['masked'] });
    initializers.push({ name: 'mask', dims: [s.seqQ, s.seqKV], data: causalMask(s.seqQ, s.seqKV) });
    logits = 'masked';
  }
  nodes.push(
    { op: 'Softmax', inputs: [logits], outputs: ['probs'], attrs: { axis: -1 } },
    { op: 'MatMul', inputs: ['probs', 'v'], outputs: ['y'] },
  );
  return encodeModel({ graph: { name: 'attention', nodes, initializers, inputs: qkv(s), outputs: out(s) }, opsets: { '': 17 } });
}

/** The ai.onnx opset-23 Attention op on 4-D [B, H, S, D] inputs (is_causal for causal shapes). */
export function fusedAttentionModel(s) {
  const nodes = [
    {
      op: 'Attention',
      inputs: ['q', 'k', 'v'],
      outputs: ['y'],
      attrs: { is_causal: s.causal ? 1 : 0, scale: { float: 1 / Math.sqrt(s.headDim) } },
    },
  ];
  return encodeModel({ graph: { name: 'attention23', nodes, inputs: qkv(s), outputs: out(s) }, opsets: { '': 23 }, irVersion: 10 });
}

/** One MatMul node: a [M, K] · b [K, N]. */
export function matmulModel({ m, n, k }) {
  return encodeModel({
    graph: {
      name: 'matmul',
      nodes: [{ op: 'MatMul', inputs: ['a', 'b'], outputs: ['c'] }],
      inputs: [
        { name: 'a', dims: [m, k] },
        { name: 'b', dims: [k, n] },
      ],
      outputs: [{ name: 'c', dims: [m, n] }],
    },
    opsets: { '': 17 },
  });
}
