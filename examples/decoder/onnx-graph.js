// The decoder of model.js as an ONNX graph (opset 23), with the same seeded weights, for
// onnxruntime to run as the independent check of our logits.
//
// Inputs: input_ids and position_ids int64 [1, S]; per layer l, past_key_l and past_value_l
// [1, Hkv, P, D]. Outputs: logits [1, S, vocab]; present_key_l and present_value_l [1, Hkv, P + S, D].
// Per layer, on 3D activations [1, S, ·]:
//   RMSNormalization -> MatMul (Wq, Wk, Wv) -> RotaryEmbedding (q and k; num_heads, half-split,
//   cos/sin caches indexed by position_ids) -> Attention (q_num_heads, kv_num_heads, past_key and
//   past_value, is_causal: query i sees past + i keys) -> MatMul (Wo) -> Add
//   -> RMSNormalization -> MatMul (W1), MatMul (W3) -> Sigmoid, Mul, Mul (SwiGLU) -> MatMul (W2) -> Add
// then RMSNormalization and MatMul by the transposed embedding (Transpose of the Gather's table).
import { INT64, encodeModel } from '../../bench/peers/onnx-proto.js';
import { makeWeights, modelConfig } from './model.js';

/** The graph's bytes for `config` (see model.js); maxPositions bounds the RoPE caches (positions 0 .. maxPositions-1). */
export function buildOnnxModel(config = {}, { maxPositions = 4096 } = {}) {
  const c = modelConfig(config);
  const weights = makeWeights(c);
  const { width, heads, kvHeads, headDim, mlpWidth, vocab } = c;
  const nodes = [];
  const initializers = [];
  const constant = (name, dims, data) => {
    initializers.push({ name, dims, data });
    return name;
  };
  const add = (op, inputs, outputs, attrs) => nodes.push({ op, inputs, outputs, attrs });

  // RoPE caches [maxPositions, D/2]: cos and sin of p·base^(-2i/D), computed in float64
  const half = headDim / 2;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * c.ropeBase ** ((-2 * i) / headDim);
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  constant('cos_cache', [maxPositions, half], cos);
  constant('sin_cache', [maxPositions, half], sin);
  constant('embedding', [vocab, width], weights.embedding);

  const norm = (input, weight, output) => add('RMSNormalization', [input, weight], [output], { axis: -1, epsilon: { float: c.eps } });
  add('Gather', ['embedding', 'input_ids'], ['x0'], { axis: 0 });
  let x = 'x0';
  const inputs = [{ name: 'input_ids', dims: [1, 'seq'], elemType: INT64 }, { name: 'position_ids', dims: [1, 'seq'], elemType: INT64 }];
  const outputs = [{ name: 'logits', dims: [1, 'seq', vocab] }];
  weights.layers.forEach((w, l) => {
    const p = (name) => `l${l}_${name}`;
    constant(p('attn_norm'), [width], w.attnNorm);
    constant(p('wq'), [width, width], w.wq);
    constant(p('wk'), [width, kvHeads * headDim], w.wk);
    constant(p('wv'), [width, kvHeads * headDim], w.wv);
    constant(p('wo'), [width, width], w.wo);
    constant(p('mlp_norm'), [width], w.mlpNorm);
    constant(p('w1'), [width, mlpWidth], w.w1);
    constant(p('w3'), [width, mlpWidth], w.w3);
    constant(p('w2'), [mlpWidth, width], w.w2);
    inputs.push({ name: `past_key_${l}`, dims: [1, kvHeads, 'past', headDim] }, { name: `past_value_${l}`, dims: [1, kvHeads, 'past', headDim] });
    outputs.push({ name: `present_key_${l}`, dims: [1, kvHeads, 'total', headDim] }, { name: `present_value_${l}`, dims: [1, kvHeads, 'total', headDim] });

    norm(x, p('attn_norm'), p('a'));
    for (const name of ['q', 'k', 'v']) add('MatMul', [p('a'), p(`w${name}`)], [p(name)]);
    add('RotaryEmbedding', [p('q'), 'cos_cache', 'sin_cache', 'position_ids'], [p('q_rot')], { num_heads: heads, interleaved: 0 });
    add('RotaryEmbedding', [p('k'), 'cos_cache', 'sin_cache', 'position_ids'], [p('k_rot')], { num_heads: kvHeads, interleaved: 0 });
    add('Attention', [p('q_rot'), p('k_rot'), p('v'), '', `past_key_${l}`, `past_value_${l}`], [p('y'), `present_key_${l}`, `present_value_${l}`], { q_num_heads: heads, kv_num_heads: kvHeads, is_causal: 1 });
    add('MatMul', [p('y'), p('wo')], [p('o')]);
    add('Add', [x, p('o')], [p('x_attn')]);
    norm(p('x_attn'), p('mlp_norm'), p('m'));
    add('MatMul', [p('m'), p('w1')], [p('gate')]);
    add('MatMul', [p('m'), p('w3')], [p('up')]);
    add('Sigmoid', [p('gate')], [p('gate_sigmoid')]);
    add('Mul', [p('gate'), p('gate_sigmoid')], [p('silu')]);
    add('Mul', [p('silu'), p('up')], [p('hidden')]);
    add('MatMul', [p('hidden'), p('w2')], [p('down')]);
    add('Add', [p('x_attn'), p('down')], [p('x_out')]);
    x = p('x_out');
  });
  constant('final_norm', [width], weights.finalNorm);
  norm(x, 'final_norm', 'h');
  add('Transpose', ['embedding'], ['embedding_t'], { perm: [1, 0] });
  add('MatMul', ['h', 'embedding_t'], ['logits']);
  return encodeModel({ graph: { name: 'decoder', nodes, inputs, outputs, initializers }, opsets: { '': 23 }, irVersion: 11, producer: 'wasm-attention-decoder' });
}

/**
 * Greedy decoding with onnxruntime: feeds `prompt`, then `steps` times the argmax token, carrying the
 * present keys and values into the next run's past. `ort` is the onnxruntime-node module. Returns
 * the tokens and each run's logits (Float32Array [S, vocab]).
 */
export async function onnxGreedyDecode(ort, bytes, config, prompt, steps) {
  const c = modelConfig(config);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
  let past = {};
  for (let l = 0; l < c.layers; l++) {
    for (const kind of ['key', 'value']) past[`past_${kind}_${l}`] = new ort.Tensor('float32', new Float32Array(0), [1, c.kvHeads, 0, c.headDim]);
  }
  let length = 0;
  const tokens = [];
  const logits = [];
  let feed = prompt;
  try {
    for (let s = 0; s < steps; s++) {
      const ids = BigInt64Array.from(feed, (t) => BigInt(t));
      const positions = BigInt64Array.from(feed, (_, i) => BigInt(length + i));
      const result = await session.run({
        input_ids: new ort.Tensor('int64', ids, [1, feed.length]),
        position_ids: new ort.Tensor('int64', positions, [1, feed.length]),
        ...past,
      });
      length += feed.length;
      logits.push(Float32Array.from(result.logits.data));
      past = {};
      for (let l = 0; l < c.layers; l++) {
        past[`past_key_${l}`] = result[`present_key_${l}`];
        past[`past_value_${l}`] = result[`present_value_${l}`];
      }
      const row = logits.at(-1).subarray((feed.length - 1) * c.vocab);
      let best = 0;
      for (let i = 1; i < c.vocab; i++) if (row[i] > row[best]) best = i;
      tokens.push(best);
      feed = [best];
    }
  } finally {
    await session.release();
  }
  return { tokens, logits };
}
