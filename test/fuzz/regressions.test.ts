// Regressions of the differential fuzzer (attention-property.ts): each line is a case as the fuzzer
// prints it when a run fails ("paste into test/fuzz/regressions.test.ts"), kept here once fixed so it
// stays fixed. Paste new ones at the end, unchanged; checkFuzzCase rebuilds the tensors from the seed.
// The first cases were written by hand, to cover what random cases reach only rarely:
//   - rows that see no key: causal with a left window of 2 and more query rows than keys (rows 5..8
//     see nothing), and a float mask that puts -inf on the only key of some rows;
//   - GQA (3 query heads per KV head) with a window open on both sides;
//   - softcap with a float mask broadcast over the batch, an odd head dim and a scale of its own.
import { expect, it } from 'vitest';
import { checkFuzzCase } from './attention-property.js';

it('fuzz regression on wasm-simd', () => expect(checkFuzzCase('wasm-simd', {"batch":1,"kvHeads":1,"group":2,"seqQ":9,"seqKV":3,"headDim":8,"valueDim":5,"causal":true,"window":{"left":2},"seed":11})).toBeUndefined());
it('fuzz regression on js', () => expect(checkFuzzCase('js', {"batch":1,"kvHeads":1,"group":2,"seqQ":9,"seqKV":3,"headDim":8,"valueDim":5,"causal":true,"window":{"left":2},"seed":11})).toBeUndefined());
it('fuzz regression on wasm-simd', () => expect(checkFuzzCase('wasm-simd', {"batch":2,"kvHeads":1,"group":2,"seqQ":8,"seqKV":1,"headDim":4,"valueDim":3,"causal":false,"mask":{"kind":"float","keep":[true,true,true,true]},"seed":12})).toBeUndefined());
it('fuzz regression on js', () => expect(checkFuzzCase('js', {"batch":2,"kvHeads":1,"group":2,"seqQ":8,"seqKV":1,"headDim":4,"valueDim":3,"causal":false,"mask":{"kind":"float","keep":[true,true,true,true]},"seed":12})).toBeUndefined());
it('fuzz regression on wasm-simd', () => expect(checkFuzzCase('wasm-simd', {"batch":1,"kvHeads":2,"group":3,"seqQ":20,"seqKV":37,"headDim":16,"valueDim":9,"causal":false,"window":{"left":5,"right":2},"seed":13})).toBeUndefined());
it('fuzz regression on js', () => expect(checkFuzzCase('js', {"batch":1,"kvHeads":2,"group":3,"seqQ":20,"seqKV":37,"headDim":16,"valueDim":9,"causal":false,"window":{"left":5,"right":2},"seed":13})).toBeUndefined());
it('fuzz regression on wasm-simd', () => expect(checkFuzzCase('wasm-simd', {"batch":2,"kvHeads":1,"group":1,"seqQ":7,"seqKV":70,"headDim":17,"valueDim":8,"causal":false,"scale":0.9,"softcap":2.5,"mask":{"kind":"float","keep":[false,true,true,true]},"seed":14})).toBeUndefined());
it('fuzz regression on js', () => expect(checkFuzzCase('js', {"batch":2,"kvHeads":1,"group":1,"seqQ":7,"seqKV":70,"headDim":17,"valueDim":8,"causal":false,"scale":0.9,"softcap":2.5,"mask":{"kind":"float","keep":[false,true,true,true]},"seed":14})).toBeUndefined());
