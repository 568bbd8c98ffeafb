// Tensors as users hand them to us, and the checks every op runs on them before any kernel.
// A tensor is any { data, dims } object, row-major: onnxruntime's Tensor fits as it is.
import { AttentionError } from './errors.js';

/** Any object with row-major data and integer dims (onnxruntime's Tensor fits as it is). */
export interface TensorLike<T extends ArrayLike<number> = Float32Array | Uint8Array> {
  readonly data: T;
  readonly dims: readonly number[];
}

/** What every op returns. */
export interface Tensor {
  data: Float32Array;
  dims: number[];
}

/** The typed-array (or other built-in) name of x; instanceof first, since it is far cheaper. */
const tag = (x: unknown): string =>
  x instanceof Float32Array ? 'Float32Array' : x instanceof Uint8Array ? 'Uint8Array' : Object.prototype.toString.call(x).slice(8, -1);

/** Describes a value for an error message: its type, and its length for arrays. */
export function describe(x: unknown): string {
  if (x === null) return 'null';
  if (x === undefined) return 'undefined';
  if (ArrayBuffer.isView(x)) return `${tag(x)}(${(x as unknown as ArrayLike<number>).length})`;
  if (Array.isArray(x)) return `an Array(${x.length})`;
  if (typeof x === 'object') return tag(x) === 'Object' ? 'an object' : tag(x);
  return `${typeof x} ${String(x)}`;
}

/** Checks `dims` and returns them as a fresh number[]; `name` is the argument, e.g. 'q'. */
export function checkDims(dims: unknown, name: string): number[] {
  if (!Array.isArray(dims) && !ArrayBuffer.isView(dims)) {
    throw new AttentionError('INVALID_DIMS', `${name}.dims must be an array of integers, got ${describe(dims)}`, `${name}.dims`);
  }
  const out: number[] = [];
  const list = dims as ArrayLike<unknown>;
  for (let i = 0; i < list.length; i++) {
    const d = list[i];
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0) {
      throw new AttentionError('INVALID_DIMS', `${name}.dims[${i}] must be a non-negative integer, got ${describe(d)}`, `${name}.dims[${i}]`);
    }
    out.push(d);
  }
  return out;
}

export const sizeOf = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/** Checks a float32 tensor (data a Float32Array of the dims' size, rank as given) and returns its dims. */
export function checkFloatTensor(t: unknown, name: string, rank?: number): number[] {
  if (t === null || typeof t !== 'object') {
    throw new AttentionError('INVALID_TENSOR', `${name} must be a tensor { data: Float32Array, dims }, got ${describe(t)}`, name);
  }
  const { data } = t as { data: unknown };
  if (tag(data) !== 'Float32Array') {
    throw new AttentionError('INVALID_DTYPE', `${name}.data must be a Float32Array, got ${describe(data)}`, `${name}.data`);
  }
  return checkShape(t as TensorLike, name, rank);
}

function checkShape(t: TensorLike, name: string, rank?: number): number[] {
  const dims = checkDims(t.dims, name);
  if (rank !== undefined && dims.length !== rank) {
    throw new AttentionError('INVALID_DIMS', `${name} must have rank ${rank}, got dims [${dims}]`, `${name}.dims`);
  }
  const size = sizeOf(dims);
  if (t.data.length !== size) {
    throw new AttentionError('SHAPE_MISMATCH', `${name}.data has ${t.data.length} elements but dims [${dims}] need ${size}`, `${name}.data`);
  }
  return dims;
}

export type MaskKind = 'bool' | 'float';

/** A mask after checking: its kind and its strides (elements, 0 where broadcast) over the target dims. */
export interface MaskView {
  kind: MaskKind;
  data: Float32Array | Uint8Array;
  /** One stride per target dim; the last is always 1 (a mask broadcast along the last dim is expanded). */
  strides: number[];
}

/**
 * Checks that `mask` broadcasts (numpy rules, right-aligned) to `target` and returns its strides.
 * A Uint8Array mask is boolean (nonzero = may attend); a Float32Array is added to the scores.
 */
export function checkMask(mask: unknown, target: readonly number[], name: string, targetName: string): MaskView {
  if (mask === null || typeof mask !== 'object') {
    throw new AttentionError('INVALID_TENSOR', `${name} must be a tensor { data: Uint8Array | Float32Array, dims }, got ${describe(mask)}`, name);
  }
  const data = (mask as { data: unknown }).data;
  const kind: MaskKind | undefined = tag(data) === 'Uint8Array' ? 'bool' : tag(data) === 'Float32Array' ? 'float' : undefined;
  if (kind === undefined) {
    throw new AttentionError('INVALID_DTYPE', `${name}.data must be a Uint8Array (boolean) or a Float32Array (additive), got ${describe(data)}`, `${name}.data`);
  }
  const dims = checkShape(mask as TensorLike, name);
  if (dims.length > target.length) {
    throw new AttentionError('SHAPE_MISMATCH', `${name} has rank ${dims.length}, more than the ${target.length} of ${targetName} [${target}]`, `${name}.dims`);
  }
  const lead = target.length - dims.length;
  const strides = new Array<number>(target.length).fill(0);
  let stride = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    const d = dims[i];
    const want = target[lead + i];
    if (d !== want && d !== 1) {
      throw new AttentionError('SHAPE_MISMATCH', `${name}.dims[${i}] is ${d} but must be 1 or ${want} to broadcast to ${targetName} [${target}]`, `${name}.dims[${i}]`);
    }
    strides[lead + i] = d === 1 ? 0 : stride;
    stride *= d;
  }
  const last = target.length - 1;
  if (last >= 0 && strides[last] === 0 && target[last] > 1) return expandLastDim(kind, data as Float32Array | Uint8Array, dims, strides, target[last]);
  if (last >= 0) strides[last] = 1;
  return { kind, data: data as Float32Array | Uint8Array, strides };
}

/** A mask whose last dim broadcasts gets that dim materialised, so kernels always read it with stride 1. */
function expandLastDim(kind: MaskKind, data: Float32Array | Uint8Array, dims: number[], strides: number[], width: number): MaskView {
  const rows = sizeOf(dims);
  const expanded = kind === 'bool' ? new Uint8Array(rows * width) : new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) expanded.fill(data[r], r * width, (r + 1) * width);
  return { kind, data: expanded, strides: strides.map((s, i) => (i === strides.length - 1 ? 1 : s * width)) };
}

/** Checks an optional output buffer; returns it, or undefined when none was given. */
export function checkOut(out: unknown, size: number, name: string): Float32Array | undefined {
  if (out === undefined) return undefined;
  if (tag(out) !== 'Float32Array') {
    throw new AttentionError('INVALID_DTYPE', `${name} must be a Float32Array, got ${describe(out)}`, name);
  }
  if ((out as Float32Array).length !== size) {
    throw new AttentionError('SHAPE_MISMATCH', `${name} has ${(out as Float32Array).length} elements but the result needs ${size}`, name);
  }
  return out as Float32Array;
}

/**
 * Refuses an `out` buffer that shares memory with an input (the kernels would read what they have
 * already overwritten). `exactAliasOk`: an out that is exactly the input is fine (softmax in place).
 */
export function checkNoOverlap(out: Float32Array | undefined, inputs: Array<[ArrayBufferView | undefined, string]>, exactAliasOk = false): void {
  if (!out) return;
  for (const [input, name] of inputs) {
    if (!input || input.buffer !== out.buffer) continue;
    const same = input.byteOffset === out.byteOffset && input.byteLength === out.byteLength;
    if (same && exactAliasOk) continue;
    if (out.byteOffset < input.byteOffset + input.byteLength && input.byteOffset < out.byteOffset + out.byteLength) {
      throw new AttentionError('INVALID_OPTION', `options.out shares memory with ${name}; give a separate output buffer`, 'options.out');
    }
  }
}

export function checkBoolean(x: unknown, name: string): boolean {
  if (x === undefined) return false;
  if (typeof x !== 'boolean') throw new AttentionError('INVALID_OPTION', `${name} must be a boolean, got ${describe(x)}`, name);
  return x;
}

export function checkFinite(x: unknown, name: string, fallback: number): number {
  if (x === undefined) return fallback;
  if (typeof x !== 'number' || !Number.isFinite(x)) {
    throw new AttentionError('INVALID_OPTION', `${name} must be a finite number, got ${describe(x)}`, name);
  }
  return x;
}

export function checkOptionsObject(options: unknown, name: string): Record<string, unknown> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object') {
    throw new AttentionError('INVALID_OPTION', `${name} must be an object, got ${describe(options)}`, name);
  }
  return options as Record<string, unknown>;
}
