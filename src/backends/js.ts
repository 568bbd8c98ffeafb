// The js backend: runs any op's plan with the op's plain-TypeScript implementation. Its resident
// tensors are ordinary arrays behind the same handles as the wasm backend's, so a released tensor
// is refused here too.
import { type Backend, type MemoryStats, type Op, type OpPlan, operandArray } from '../backend.js';
import { AttentionError } from '../errors.js';
import { type ResidentOwner, ResidentTensor, type ResidentType } from '../memory/resident.js';

export class JsBackend implements Backend, ResidentOwner {
  readonly name = 'js' as const;
  /** The js path runs on the calling thread only. */
  readonly threads = 1;
  private disposed = false;
  private readonly views = new WeakMap<ArrayBufferView, ResidentTensor>();

  live(): void {
    if (this.disposed) throw new AttentionError('DISPOSED', 'this engine was disposed');
  }

  run<P extends OpPlan, R>(op: Op<P, R>, plan: P): R {
    this.live();
    return op.js(plan, operandArray);
  }

  async runAsync<P extends OpPlan, R>(op: Op<P, R>, plan: P): Promise<R> {
    return this.run(op, plan);
  }

  residentOf(view: ArrayBufferView, _buffer: ArrayBufferLike, name: string): ResidentTensor | undefined {
    const tensor = this.views.get(view);
    if (tensor?.released) throw new AttentionError('INVALID_TENSOR', `${name} is the data of a tensor from engine.tensor() that was released`, name);
    return tensor;
  }

  owns(tensor: ResidentTensor): boolean {
    return tensor.ownedBy(this);
  }

  buffer(): undefined {
    return undefined;
  }

  register(view: ArrayBufferView, tensor: ResidentTensor): void {
    this.views.set(view, tensor);
  }

  free(): void {
    // the array goes with the handle's last reference
  }

  tensor(dims: readonly number[], type: ResidentType): ResidentTensor {
    this.live();
    const size = dims.reduce((a, b) => a * b, 1);
    const array = type === 'bool' ? new Uint8Array(size) : new Float32Array(size);
    return new ResidentTensor(this, -1, dims, type, array);
  }

  /** The js backend holds no WASM memory: both 0. */
  stats(): MemoryStats {
    return { reservedBytes: 0, usedBytes: 0 };
  }

  dispose(): void {
    this.disposed = true;
  }
}
