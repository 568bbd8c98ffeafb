// The layer's training path: engine.multiHeadAttention with train: true and
// engine.multiHeadAttentionBackward. The float64 layer backward (referenceMultiHeadAttentionBackward)
// against central finite differences of the float64 layer; every backend against it (GQA, biases,
// causal, cross-attention, RoPE with softcap); the training forward gives the same y; refusals.
import { describe, expect, it } from 'vitest';
import { type MultiHeadOptions, createEngineSync } from '../src/index.js';
import { type ReferenceLayerOptions, type ReferenceLayerWeights, referenceMultiHeadAttention, referenceMultiHeadAttentionBackward } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, refused, relativeError, rng, tolerance } from './helpers.js';

type F32 = { data: Float32Array; dims: number[] };

interface LayerCase {
  batch: number;
  seq: number;
  seqKV?: number;
  embed: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  valueDim?: number;
  outWidth?: number;
  biases?: boolean;
  options?: Omit<MultiHeadOptions, 'heads' | 'kvHeads' | 'context' | 'cache' | 'train'>;
}

function make(c: LayerCase, seed: number) {
  const random = rng(seed);
  const Dv = c.valueDim ?? c.headDim;
  const out = c.outWidth ?? c.embed;
  const weights: Record<string, F32> = {
    wq: randomTensor(random, [c.embed, c.heads * c.headDim], 0.5),
    wk: randomTensor(random, [c.embed, c.kvHeads * c.headDim], 0.5),
    wv: randomTensor(random, [c.embed, c.kvHeads * Dv], 0.5),
    wo: randomTensor(random, [c.heads * Dv, out], 0.5),
  };
  if (c.biases) {
    weights.bq = randomTensor(random, [c.heads * c.headDim]);
    weights.bk = randomTensor(random, [c.kvHeads * c.headDim]);
    weights.bv = randomTensor(random, [c.kvHeads * Dv]);
    weights.bo = randomTensor(random, [out]);
  }
  const x = randomTensor(random, [c.batch, c.seq, c.embed]);
  const context = c.seqKV === undefined ? undefined : randomTensor(random, [c.batch, c.seqKV, c.embed]);
  const dy = randomTensor(random, [c.batch, c.seq, out]);
  return { weights, x, context, dy };
}

const NAMES = ['dx', 'dcontext', 'dwq', 'dwk', 'dwv', 'dwo', 'dbq', 'dbk', 'dbv', 'dbo'] as const;

describe('referenceMultiHeadAttentionBackward against finite differences of referenceMultiHeadAttention', () => {
  const cases: Array<[string, LayerCase]> = [
    ['GQA with biases, causal', { batch: 2, seq: 3, embed: 4, heads: 2, kvHeads: 1, headDim: 2, biases: true, options: { causal: true } }],
    ['cross-attention (context of 4 tokens), Dv 3, Eout 5', { batch: 1, seq: 2, seqKV: 4, embed: 3, heads: 2, kvHeads: 2, headDim: 2, valueDim: 3, outWidth: 5 }],
    ['RoPE and softcap', { batch: 1, seq: 4, embed: 4, heads: 2, kvHeads: 1, headDim: 4, biases: true, options: { rope: { base: 100 }, softcap: 2 } }],
  ];
  it.each(cases)('%s', (_, c) => {
    const { weights, x, context, dy } = make(c, 3);
    const w64 = Object.fromEntries(Object.entries(weights).map(([n, t]) => [n, { data: Float64Array.from(t.data), dims: t.dims }])) as unknown as ReferenceLayerWeights;
    const x64 = { data: Float64Array.from(x.data), dims: x.dims };
    const c64 = context && { data: Float64Array.from(context.data), dims: context.dims };
    const options: ReferenceLayerOptions = { heads: c.heads, kvHeads: c.kvHeads, context: c64, ...(c.options as ReferenceLayerOptions) };
    const loss = (): number => referenceMultiHeadAttention(x64, w64, options).data.reduce((sum, y, i) => sum + y * dy.data[i], 0);
    const grads = referenceMultiHeadAttentionBackward(x64, w64, dy, options);
    const targets: Array<[string, Float64Array]> = [['dx', x64.data], ['dwq', w64.wq.data as Float64Array], ['dwk', w64.wk.data as Float64Array], ['dwv', w64.wv.data as Float64Array], ['dwo', w64.wo.data as Float64Array]];
    if (c64) targets.push(['dcontext', c64.data]);
    if (c.biases) for (const b of ['bq', 'bk', 'bv', 'bo'] as const) targets.push([`d${b}`, w64[b]!.data as Float64Array]);
    for (const [name, data] of targets) {
      const numeric = Float64Array.from(data, (_, i) => {
        const keep = data[i];
        data[i] = keep + 1e-5;
        const up = loss();
        data[i] = keep - 1e-5;
        const down = loss();
        data[i] = keep;
        return (up - down) / 2e-5;
      });
      const analytic = grads[name as keyof typeof grads]!.data;
      expect(relativeError(analytic, numeric), name).toBeLessThanOrEqual(tolerance.finiteDifference);
    }
  });
});

describe.each(BACKENDS)('multiHeadAttentionBackward on %s', (backend) => {
  const cases: Array<[string, LayerCase]> = [
    ['GQA 4/2 heads, biases, causal, B2 S37 E24', { batch: 2, seq: 37, embed: 24, heads: 4, kvHeads: 2, headDim: 8, biases: true, options: { causal: true } }],
    ['cross-attention, Dv 5, Eout 7', { batch: 1, seq: 9, seqKV: 70, embed: 12, heads: 3, kvHeads: 3, headDim: 4, valueDim: 5, outWidth: 7 }],
    ['RoPE, softcap and a window', { batch: 1, seq: 30, embed: 16, heads: 2, kvHeads: 1, headDim: 8, options: { rope: { interleaved: true }, softcap: 3, window: { left: 7 } } }],
  ];
  it.each(cases)('%s: against the float64 layer backward; y the same as without train', (_, c) => {
    const engine = engineFor(backend);
    const { weights, x, context, dy } = make(c, 11);
    const options = { heads: c.heads, kvHeads: c.kvHeads, context, ...c.options };
    const trained = engine.multiHeadAttention(x, weights as never, { ...options, train: true });
    expect(trained.data).toEqual(engine.multiHeadAttention(x, weights as never, options).data);
    const grads = engine.multiHeadAttentionBackward(dy, trained.saved);
    const expected = referenceMultiHeadAttentionBackward(x, weights as unknown as ReferenceLayerWeights, dy, { ...options, context } as ReferenceLayerOptions);
    const maxScore = maxAbs(x.data) ** 2 * 4 * c.embed;
    const inner = Math.max(c.embed, c.batch * (c.seqKV ?? c.seq), c.heads * (c.valueDim ?? c.headDim));
    const bound = tolerance.attentionBackward(c.headDim, c.valueDim ?? c.headDim, c.seq * (c.heads / c.kvHeads), c.seqKV ?? c.seq, Math.min(maxScore, 20)) + tolerance.reduction(inner);
    for (const name of NAMES) {
      const want = expected[name];
      const got = grads[name];
      expect(got === undefined, name).toBe(want === undefined);
      if (!want || !got) continue;
      expect(got.dims, name).toEqual(want.dims);
      // a key bias shifts every score of a row by the same q·bk, which the softmax cancels: dbk is 0 up
      // to rounding, so its error is measured against the size of dwk (the same dk against the inputs)
      const size = name === 'dbk' ? maxAbs(expected.dwk.data) : maxAbs(want.data);
      expect(maxError(got.data, want.data) / size, name).toBeLessThanOrEqual(bound);
    }
  });

  it('refuses train with a cache, a dy of the wrong shape, and a saved that is not one, before anything runs', () => {
    const engine = engineFor(backend);
    const { weights, x, dy } = make({ batch: 1, seq: 3, embed: 8, heads: 2, kvHeads: 2, headDim: 4 }, 5);
    const cache = engine.kvCache({ batch: 1, kvHeads: 2, headDim: 4, maxSeq: 8 });
    const used = engine.stats().usedBytes;
    refused(() => engine.multiHeadAttention(x, weights as never, { heads: 2, cache, train: true }), 'INVALID_OPTION', 'options.train');
    expect(cache.length).toBe(0);
    refused(() => engine.multiHeadAttention(x, weights as never, { heads: 2, train: 1 as never }), 'INVALID_OPTION', 'options.train');
    const { saved } = engine.multiHeadAttention(x, weights as never, { heads: 2, train: true });
    refused(() => engine.multiHeadAttentionBackward({ data: new Float32Array(16), dims: [1, 2, 8] }, saved), 'SHAPE_MISMATCH', 'dy.dims[1]');
    refused(() => engine.multiHeadAttentionBackward(dy, {} as never), 'INVALID_OPTION', 'saved');
    const other = createEngineSync({ backend });
    try {
      refused(() => other.multiHeadAttentionBackward(dy, saved), 'INVALID_OPTION', 'saved');
    } finally {
      other.dispose();
    }
    expect(engine.stats().usedBytes).toBe(used);
    cache.dispose();
  });
});
