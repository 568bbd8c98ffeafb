// Softmax backward's float64 reference: dx = scale · y ∘ (dy - sum_j dy_j y_j) per row of the last axis.
import type { TensorLike } from '../../tensor.js';
import type { ReferenceTensor } from '../reference-math.js';

/** The gradient of sum(dy ∘ softmax(scale · x + mask)) with respect to x, from y = that softmax. */
export function referenceSoftmaxBackward(y: TensorLike<ArrayLike<number>>, dy: TensorLike<ArrayLike<number>>, options: { scale?: number } = {}): ReferenceTensor {
  const cols = y.dims[y.dims.length - 1];
  const scale = options.scale ?? 1;
  const dx = new Float64Array(y.data.length);
  for (let base = 0; base < y.data.length; base += cols) {
    let dot = 0;
    for (let j = 0; j < cols; j++) dot += Number(y.data[base + j]) * Number(dy.data[base + j]);
    for (let j = 0; j < cols; j++) dx[base + j] = scale * Number(y.data[base + j]) * (Number(dy.data[base + j]) - dot);
  }
  return { data: dx, dims: [...y.dims] };
}
