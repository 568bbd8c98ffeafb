// Every op at the edges of the blocks it is cut into, on every backend against the float64 reference.
// Today's cuts (a size one below, at and one above each, and at a multiple):
//   attention: blocks of 128 keys and 8·MR query rows (40 in the simd build, 48 in the relaxed one), an
//              MR x 8 micro-tile (MR 5 or 6), jobs of two blocks of rows (80, 96);
//              decoding (<= 4 query rows, >= 1024 keys) splits the keys into chunks of 512 and merges them.
//   softmax:   jobs of 64 rows, rows read 4 lanes at a time.
//   matmul:    jobs of 128 rows x 256 columns, K in blocks of 256, MR x 8 micro-tiles (and 1 to MR - 1 rows).
// The combinations are chosen, not crossed: each edge meets the others in rotation (odd head dims,
// causal, GQA, masks), so a file run stays at a few seconds per backend.
import { describe, expect, it } from 'vitest';
import type { TensorLike } from '../src/index.js';
import { referenceAttention, referenceMatmul, referenceSoftmax } from '../src/reference.js';
import { BACKENDS, engineFor, maxAbs, maxError, randomTensor, rng, tolerance } from './helpers.js';

/** The i-th entry of `list`, cycling. */
function pick<T>(list: readonly T[], i: number): T {
  return list[i % list.length];
}

type MaskKind = 'none' | 'bool' | 'float';

interface AttentionCase {
  seqQ: number;
  seqKV: number;
  headDim: number;
  qHeads: number;
  kvHeads: number;
  causal: boolean;
  mask: MaskKind;
}

const HEAD_DIMS = [1, 3, 8, 17, 64, 80, 100];
const HEADS: ReadonlyArray<readonly [number, number]> = [[2, 2], [4, 2], [3, 1]];
const MASKS: readonly MaskKind[] = ['none', 'bool', 'none', 'float'];

const blockCases: AttentionCase[] = [];
// key-block edges, each with and without causal
[127, 128, 129, 255, 256, 257].forEach((seqKV, i) => {
  for (const causal of [false, true]) {
    const at = 2 * i + Number(causal);
    const [qHeads, kvHeads] = pick(HEADS, at);
    blockCases.push({ seqQ: pick([33, 5, 64, 31, 65, 4, 32], at), seqKV, headDim: pick(HEAD_DIMS, at), qHeads, kvHeads, causal, mask: pick(MASKS, at) });
  }
});
// query-row edges (micro-tiles 5 and 6, blocks 40 and 48, jobs of 80 and 96)
[1, 3, 4, 5, 6, 7, 39, 40, 41, 47, 48, 49, 79, 80, 81, 95, 96, 97].forEach((seqQ, i) => {
  const [qHeads, kvHeads] = pick(HEADS, i + 1);
  blockCases.push({ seqQ, seqKV: pick([129, 128, 257, 127, 256, 255], i), headDim: pick(HEAD_DIMS, i + 3), qHeads, kvHeads, causal: i % 2 === 0, mask: pick(MASKS, i + 1) });
});
// every head dim at a block edge, causal and not
HEAD_DIMS.forEach((headDim, i) => {
  for (const causal of [false, true]) {
    const at = 2 * i + Number(causal);
    blockCases.push({ seqQ: pick([33, 65, 4, 32], at), seqKV: pick([129, 257, 128], at), headDim, qHeads: 4, kvHeads: 2, causal, mask: pick(MASKS, at + 2) });
  }
});

// split-KV decoding: 1..4 query rows around the 512-key chunks and the 1024-key threshold; causal ones
// go through a KV cache (bottom-right aligned, so each row sees nearly all keys)
const splitCases: AttentionCase[] = [511, 512, 513, 1023, 1024, 1025, 1535, 2049].map((seqKV, i) => {
  const [qHeads, kvHeads] = pick(HEADS, i);
  return { seqQ: 1 + (i % 4), seqKV, headDim: pick([64, 17, 80, 1, 100, 8, 3], i), qHeads, kvHeads, causal: i % 3 === 1, mask: i % 3 === 1 ? 'none' : pick(['bool', 'none', 'float'] as const, i) };
});

function describeCase(c: AttentionCase): string {
  return `Sq ${c.seqQ} Skv ${c.seqKV} D ${c.headDim} heads ${c.qHeads}/${c.kvHeads}${c.causal ? ' causal' : ''}${c.mask === 'none' ? '' : ` ${c.mask} mask`}`;
}

function attentionInputs(c: AttentionCase, seed: number) {
  const random = rng(seed);
  const q = randomTensor(random, [1, c.qHeads, c.seqQ, c.headDim]);
  const k = randomTensor(random, [1, c.kvHeads, c.seqKV, c.headDim]);
  const v = randomTensor(random, [1, c.kvHeads, c.seqKV, c.headDim]);
  let mask: TensorLike | undefined;
  const maskDims = [1, c.qHeads, c.seqQ, c.seqKV];
  const size = c.qHeads * c.seqQ * c.seqKV;
  // the first key stays visible to every row, so no row is empty by chance
  if (c.mask === 'bool') mask = { data: Uint8Array.from({ length: size }, (_, i) => (i % c.seqKV === 0 || random() < 0.7 ? 1 : 0)), dims: maskDims };
  if (c.mask === 'float') mask = { data: Float32Array.from({ length: size }, (_, i) => (i % c.seqKV !== 0 && random() < 0.2 ? -Infinity : random() * 4 - 2)), dims: maskDims };
  return { q, k, v, mask };
}

/** The stated bound: scores are at most sqrt(headDim) (inputs in [-1, 1], scale 1/sqrt(headDim)), plus the float mask's 2. */
function attentionBound(c: AttentionCase, v: { data: Float32Array }): number {
  const maxScore = Math.sqrt(c.headDim) + (c.mask === 'float' ? 2 : 0);
  return tolerance.attention(c.headDim, c.seqKV, maxScore) * maxAbs(v.data);
}

describe.each(BACKENDS)('attention tile edges on %s', (backend) => {
  const engine = engineFor(backend);

  it.each(blockCases.map((c, i) => [describeCase(c), c, i] as const))('%s', (_name, c, i) => {
    const { q, k, v, mask } = attentionInputs(c, 500 + i);
    const options = { causal: c.causal, mask };
    const actual = engine.attention(q, k, v, options);
    const expected = referenceAttention(q, k, v, options);
    expect(actual.dims).toEqual(expected.dims);
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(attentionBound(c, v));
  });

  it.each(splitCases.map((c, i) => [describeCase(c), c, i] as const))('decoding, %s', (_name, c, i) => {
    const { q, k, v, mask } = attentionInputs(c, 700 + i);
    let actual;
    let expected;
    if (c.causal) {
      const cache = engine.kvCache({ batch: 1, kvHeads: c.kvHeads, headDim: c.headDim, maxSeq: c.seqKV });
      cache.append(k, v);
      actual = cache.attention(q);
      cache.dispose();
      expected = referenceAttention(q, k, v, { causal: true, offset: c.seqKV - c.seqQ });
    } else {
      actual = engine.attention(q, k, v, { mask });
      expected = referenceAttention(q, k, v, { mask });
    }
    expect(actual.dims).toEqual(expected.dims);
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(attentionBound(c, v));
  });
});

// softmax: rows around the 64-row jobs, columns around the 4 lanes and a few longer rows
const SOFTMAX_ROWS = [1, 3, 63, 64, 65, 127, 128, 129];
const SOFTMAX_COLS = [1, 3, 4, 5, 7, 8, 9, 127, 128, 129, 255, 256, 257];
const softmaxCases: Array<[number, number, boolean]> = [];
SOFTMAX_COLS.forEach((cols, i) => softmaxCases.push([pick(SOFTMAX_ROWS, i), cols, i % 3 === 2]));
SOFTMAX_ROWS.forEach((rows, i) => softmaxCases.push([rows, pick([129, 5, 256, 8, 1, 127, 9, 257], i), i % 2 === 1]));

describe.each(BACKENDS)('softmax tile edges on %s', (backend) => {
  it.each(softmaxCases)('rows %i cols %i, causal %s', (rows, cols, causal) => {
    const random = rng(rows * 1000 + cols);
    const x = randomTensor(random, [rows, cols], 4);
    const scale = 0.7;
    const actual = engineFor(backend).softmax(x, { scale, causal });
    const expected = referenceSoftmax(x, { scale, causal });
    expect(actual.dims).toEqual([rows, cols]);
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(tolerance.softmax(cols, maxAbs(x.data) * scale));
  });
});

// matmul: each of m, n, k at every edge size, with the other two in rotation (kept small where the
// edge is large, since the float64 reference takes about a microsecond per multiply-add), the corners
// of the 128 x 256 job, and every third one with transposeB
const MATMUL_SIZES = [1, 3, 4, 5, 7, 8, 9, 127, 128, 129, 255, 256, 257];
const SMALL = [1, 3, 4, 5, 7, 8, 9];
const matmulCases: Array<[number, number, number, boolean]> = [];
MATMUL_SIZES.forEach((size, i) => {
  matmulCases.push(
    [size, pick(MATMUL_SIZES, i + 5), pick(SMALL, i), i % 3 === 0],
    [pick(MATMUL_SIZES, i + 9), size, pick(SMALL, i + 2), i % 3 === 1],
    [pick(SMALL, i + 1), pick([9, 17, 33, 8], i), size, i % 3 === 2],
  );
});
matmulCases.push([127, 255, 5, false], [128, 256, 3, true], [129, 257, 4, false], [257, 129, 1, true], [256, 9, 129, false]);

describe.each(BACKENDS)('matmul tile edges on %s', (backend) => {
  it.each(matmulCases)('M %i N %i K %i, transposeB %s', (m, n, k, transposeB) => {
    const random = rng(m * 65536 + n * 256 + k);
    const a = randomTensor(random, [m, k]);
    const b = randomTensor(random, transposeB ? [n, k] : [k, n]);
    const actual = engineFor(backend).matmul(a, b, { transposeB });
    const expected = referenceMatmul(a, b, { transposeB });
    expect(actual.dims).toEqual([m, n]);
    // the stated bound, max|a|·max|b|·sqrt(K) times the reduction tolerance
    expect(maxError(actual.data, expected.data)).toBeLessThanOrEqual(tolerance.reduction(k) * Math.sqrt(k + 1) * maxAbs(a.data) * maxAbs(b.data));
  });
});
