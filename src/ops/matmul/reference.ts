// Matmul's float64 reference:  c[..., i, j] = act(sum_p a[..., i, p] · b[..., p, j] + bias[j]), batch
// dims broadcast (a as [..., K, M] with transposeA, b as [..., N, K] with transposeB). Plain loops, float64.
import type { TensorLike } from '../../tensor.js';
import { type ReferenceTensor, broadcastAt } from '../reference-math.js';
import { activate } from './activation.js';
import type { Activation } from './plan.js';

/** Batched matrix product in float64, batch dims broadcast; a as [..., K, M] with transposeA, b as
 * [..., N, K] with transposeB; then
 * `bias` ([N]) added to every row and `activation` applied (as a matmul with packed weights does). */
export function referenceMatmul(
  a: TensorLike, b: TensorLike, options: { transposeA?: boolean; transposeB?: boolean; bias?: ArrayLike<number>; activation?: Activation } = {},
): ReferenceTensor {
  const [aRows, aCols] = a.dims.slice(-2);
  const [M, K] = options.transposeA ? [aCols, aRows] : [aRows, aCols];
  const N = options.transposeB ? b.dims[b.dims.length - 2] : b.dims[b.dims.length - 1];
  const aBatch = a.dims.slice(0, -2);
  const bBatch = b.dims.slice(0, -2);
  const rank = Math.max(aBatch.length, bBatch.length);
  const batch: number[] = [];
  for (let d = 0; d < rank; d++) batch.push(Math.max(aBatch[aBatch.length - rank + d] ?? 1, bBatch[bBatch.length - rank + d] ?? 1));
  const count = batch.reduce((x, y) => x * y, 1);
  const out = new Float64Array(count * M * N);
  for (let index = 0; index < count; index++) {
    const batchIndex: number[] = [];
    for (let d = rank - 1, rest = index; d >= 0; d--) {
      batchIndex.unshift(rest % batch[d]);
      rest = Math.floor(rest / batch[d]);
    }
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let dot = 0;
        for (let p = 0; p < K; p++) {
          const bIndex = options.transposeB ? [...batchIndex, j, p] : [...batchIndex, p, j];
          const aIndex = options.transposeA ? [...batchIndex, p, i] : [...batchIndex, i, p];
          dot += broadcastAt(a, aIndex) * broadcastAt(b, bIndex);
        }
        out[(index * M + i) * N + j] = activate(dot + (options.bias ? options.bias[j] : 0), options.activation);
      }
    }
  }
  return { data: out, dims: [...batch, M, N] };
}

