// Resident tensors: tensors that live in a backend's memory (WASM linear memory on the wasm
// backends, an ordinary array on js), so ops read and write them in place with no copy.
//
// A ResidentTensor is a handle, not a view: it holds its block's address and length, and `data`
// builds a view of the memory as it is now, so the view stays valid after memory grows even when
// growth detaches the old buffer (unshared memory). Every view it hands out is remembered, so an op
// given such a view (or the tensor itself) finds the tensor again and checks that it is still live;
// any other view of the memory (a subarray, say) is refused, since nothing tells which tensor, if
// any, it belonged to. A call pins each resident tensor it uses until it settles: a release during
// the call takes effect once the last call using the tensor is done.
import { AttentionError } from '../errors.js';

/** The backend side of resident tensors: where their bytes are, and how they are given back. */
export interface ResidentOwner {
  /** WASM memory's buffer now; undefined for the js backend, whose tensors hold their own arrays. */
  buffer(): ArrayBufferLike | undefined;
  /** Remembers a view handed out for `tensor`. */
  register(view: ArrayBufferView, tensor: ResidentTensor): void;
  /** Gives the block back (called once the tensor is released and no call pins it). */
  free(tensor: ResidentTensor): void;
}

export type ResidentType = 'float32' | 'bool';

/**
 * A tensor in an engine's memory, from engine.tensor() (and inside KV caches). Its owner, address
 * and state are private fields: a handle cannot be forged, and one engine's tensor is refused by
 * another (see `ownedBy`).
 */
export class ResidentTensor {
  readonly #dims: number[];
  readonly #type: ResidentType;
  readonly #length: number;
  readonly #ptr: number;
  readonly #owner: ResidentOwner;
  #array: Float32Array | Uint8Array | undefined;
  #pins = 0;
  #state: 'live' | 'releasing' | 'released' = 'live';

  /** @internal made by a backend's tensor() */
  constructor(owner: ResidentOwner, ptr: number, dims: readonly number[], type: ResidentType, array?: Float32Array | Uint8Array) {
    this.#owner = owner;
    this.#ptr = ptr;
    this.#dims = [...dims];
    this.#type = type;
    this.#length = this.#dims.reduce((a, b) => a * b, 1);
    this.#array = array;
    if (array) owner.register(array, this);
  }

  /** Whether `x` is a real ResidentTensor (not merely an object with its prototype). */
  static is(x: unknown): x is ResidentTensor {
    return typeof x === 'object' && x !== null && #state in x;
  }

  /** The dims it was made with (a copy). */
  get dims(): number[] {
    return [...this.#dims];
  }

  /** 'float32' (a Float32Array) or 'bool' (a Uint8Array). */
  get type(): ResidentType {
    return this.#type;
  }

  /** Elements. */
  get length(): number {
    return this.#length;
  }

  /** @internal byte address of the data in WASM memory (-1 on the js backend) */
  get ptr(): number {
    return this.#ptr;
  }

  /** @internal whether `owner` made this tensor */
  ownedBy(owner: ResidentOwner): boolean {
    return this.#owner === owner;
  }

  /** Whether release() was called (the data may no longer be used). */
  get released(): boolean {
    return this.#state !== 'live';
  }

  /** A view of the tensor's data, valid until memory grows (read `data` again after any op). */
  get data(): Float32Array | Uint8Array {
    if (this.#state !== 'live') throw new AttentionError('DISPOSED', 'this tensor was released');
    return this.view();
  }

  /** @internal the data while a call still pins the tensor, released or not */
  view(): Float32Array | Uint8Array {
    if (this.#state === 'released') throw new AttentionError('DISPOSED', 'this tensor was released');
    const buffer = this.#owner.buffer();
    if (buffer && this.#array?.buffer !== buffer) {
      this.#array = this.#type === 'bool' ? new Uint8Array(buffer, this.#ptr, this.#length) : new Float32Array(buffer, this.#ptr, this.#length);
      this.#owner.register(this.#array, this);
    }
    return this.#array!;
  }

  /** Gives the memory back. A call still using the tensor keeps it until that call settles. */
  release(): void {
    if (this.#state !== 'live') return;
    this.#state = 'releasing';
    if (this.#pins === 0) this.#free();
  }

  /** @internal a call uses the tensor until unpin() */
  pin(): void {
    this.#pins++;
  }

  /** @internal */
  unpin(): void {
    this.#pins--;
    if (this.#pins === 0 && this.#state === 'releasing') this.#free();
  }

  #free(): void {
    this.#state = 'released';
    this.#array = undefined;
    this.#owner.free(this);
  }
}
