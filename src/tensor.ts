// Tensors as users hand them to us, and the checks every op runs on them before any kernel.
// A tensor is any { data, dims } object, row-major: onnxruntime's Tensor fits as it is, and so does
// a ResidentTensor from engine.tensor().
//
// Every input is read exactly once. A plan function first reads each tensor's `data` and `dims`
// and each option (user getters and proxies may run then, and only then), and only afterwards
// checks what it read: typed arrays through the built-in %TypedArray% getters (a subclass that lies
// about its length, or a Proxy, cannot fool them) into plain views that no user code can reach. So
// what was checked is exactly what the kernels get.
import { type Operand, type OperandResolver, operandArray } from './backend.js';
import { AttentionError, human } from './errors.js';
import { ResidentTensor } from './memory/resident.js';

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

// The built-in getters of every typed array, taken once: they read the internal slots, never a
// user's override, and throw or give undefined for anything that is not a real typed array.
const TypedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype) as object;
const intrinsic = (key: PropertyKey): ((this: unknown) => unknown) =>
  Object.getOwnPropertyDescriptor(TypedArrayPrototype, key)!.get as (this: unknown) => unknown;
const tagGetter = intrinsic(Symbol.toStringTag);
const lengthGetter = intrinsic('length');
const bufferGetter = intrinsic('buffer');
const byteOffsetGetter = intrinsic('byteOffset');

/** The length a real typed array has now (0 once its buffer is detached), by the built-in getter. */
export const lengthOf = (x: ArrayBufferView): number => lengthGetter.call(x) as number;

/** 'Float32Array', 'Uint8Array', ... for a real typed array; undefined for anything else (a Proxy too). */
export const typedArrayName = (x: unknown): string | undefined =>
  typeof x === 'object' && x !== null ? (tagGetter.call(x) as string | undefined) : undefined;

/** A plain view of exactly the elements `x` has now (x a real typed array of that kind). */
function plainView<T extends Float32Array | Uint8Array>(x: T, kind: 'Float32Array' | 'Uint8Array'): { view: T; buffer: ArrayBufferLike } {
  const buffer = bufferGetter.call(x) as ArrayBufferLike;
  const length = lengthGetter.call(x) as number; // 0 once the buffer is detached
  if (length === 0) return { view: (kind === 'Float32Array' ? new Float32Array(0) : new Uint8Array(0)) as T, buffer };
  const offset = byteOffsetGetter.call(x) as number;
  const view = (kind === 'Float32Array' ? new Float32Array(buffer, offset, length) : new Uint8Array(buffer, offset, length)) as T;
  return { view, buffer };
}

type TypedArrayConstructor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => ArrayBufferView;
const CONSTRUCTORS: Record<string, TypedArrayConstructor | undefined> = {
  Float32Array, Float64Array, Uint8Array, Uint16Array, Int32Array, BigInt64Array,
  Float16Array: (globalThis as { Float16Array?: TypedArrayConstructor }).Float16Array,
};

/**
 * A plain view (no user subclass, no overridden getters) of exactly the elements the typed array
 * `x` has now, through the built-in getters; an empty one when its buffer is detached.
 */
export function plainTypedArray(x: unknown): ArrayBufferView & ArrayLike<number | bigint> {
  const name = typedArrayName(x)!;
  const make = CONSTRUCTORS[name];
  if (!make) throw new AttentionError('INVALID_DTYPE', `a ${name} is not a supported tensor type`);
  const buffer = bufferGetter.call(x) as ArrayBufferLike;
  const length = lengthGetter.call(x) as number;
  const offset = length === 0 ? 0 : (byteOffsetGetter.call(x) as number);
  return new make(length === 0 ? new ArrayBuffer(0) : buffer, offset, length) as ArrayBufferView & ArrayLike<number | bigint>;
}

/** Describes a value for an error message: its type, and its length for arrays. */
export function describe(x: unknown): string {
  if (x === null) return 'null';
  if (x === undefined) return 'undefined';
  const name = typedArrayName(x);
  if (name) return `${name}(${lengthGetter.call(x) as number})`;
  if (Array.isArray(x)) return `an Array(${x.length})`;
  if (typeof x === 'object') {
    const tag = Object.prototype.toString.call(x).slice(8, -1);
    return tag === 'Object' ? 'an object' : tag;
  }
  return `${typeof x} ${String(x)}`;
}

/** Copies `dims` (read once) into a fresh number[]; `name` is the tensor, e.g. 'q'. */
export function checkDims(dims: unknown, name: string): number[] {
  const array = Array.isArray(dims);
  if (!array && typedArrayName(dims) === undefined) {
    throw new AttentionError('INVALID_DIMS', `${name}.dims must be an array of integers, got ${describe(dims)}`, `${name}.dims`);
  }
  // a plain snapshot first: each element is read once, even from a Proxy
  let list: unknown[];
  try {
    list = array ? Array.from(dims as unknown[]) : Array.from(dims as ArrayLike<number>);
  } catch (cause) {
    throw new AttentionError('INVALID_DIMS', `${name}.dims: reading its elements threw (${String(cause)})`, `${name}.dims`);
  }
  const out: number[] = [];
  for (let i = 0; i < list.length; i++) {
    const d = list[i];
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new AttentionError('INVALID_DIMS', `${name}.dims[${i}] must be a non-negative integer, got ${describe(d)}`, `${name}.dims[${i}]`);
    }
    out.push(d);
  }
  return out;
}

/** Largest result any op returns: what one Float32Array in WASM memory (4 GiB) can hold. */
export const MAX_RESULT = 2 ** 30 - 16;

/** Refuses, before anything runs, a result of more elements than MAX_RESULT. */
export function checkResultSize(elements: number, what: string, argument: string): void {
  if (elements > MAX_RESULT) {
    throw new AttentionError('OUT_OF_MEMORY', `${what} would have ${elements} elements (${human(4 * elements)} of float32); at most ${human(4 * MAX_RESULT)} fit`, argument);
  }
}

export const sizeOf = (dims: readonly number[]): number => {
  let size = 1;
  for (let i = 0; i < dims.length; i++) size *= dims[i];
  return size;
};

/** A caller's tensor after its one read: the `data` reference (not yet checked) and its dims. */
export interface TensorRead {
  readonly name: string;
  readonly data: unknown;
  readonly dims: number[];
  /** Set when the caller passed a ResidentTensor itself. */
  readonly resident: ResidentTensor | undefined;
}

/** Reads `t.data` and `t.dims`, once each. `expect` describes the tensor for the error message. */
export function readTensor(t: unknown, name: string, expect = '{ data: Float32Array, dims }'): TensorRead {
  if (ResidentTensor.is(t)) {
    if (t.released) throw new AttentionError('INVALID_TENSOR', `${name} is a tensor from engine.tensor() that was released`, `${name}.data`);
    return { name, data: undefined, dims: t.dims, resident: t };
  }
  if (t === null || typeof t !== 'object') {
    throw new AttentionError('INVALID_TENSOR', `${name} must be a tensor ${expect}, got ${describe(t)}`, name);
  }
  if (typedArrayName(t) !== undefined || Array.isArray(t)) {
    throw new AttentionError('INVALID_TENSOR', `${name} is a bare ${describe(t)}; pass a tensor ${expect}, e.g. { data, dims: [...] }`, name);
  }
  let data: unknown;
  let dims: unknown;
  try {
    data = (t as { data: unknown }).data;
    dims = (t as { dims: unknown }).dims;
  } catch (cause) {
    throw new AttentionError('INVALID_TENSOR', `${name}: reading its data or dims threw (${String(cause)})`, name);
  }
  return { name, data, dims: checkDims(dims, name), resident: undefined };
}

/** A checked tensor: its operand and dims. */
export interface Checked<T extends Float32Array | Uint8Array> {
  operand: Operand<T>;
  dims: number[];
}

/** The operand of `data` (of the given kind and `size` elements): resident, or a plain view. */
function operandOf<T extends Float32Array | Uint8Array>(
  read: TensorRead, kind: 'Float32Array' | 'Uint8Array', size: number, resolver: OperandResolver, at: string,
): Operand<T> {
  const resident = read.resident;
  if (resident) {
    if (!resolver.owns(resident)) throw new AttentionError('INVALID_TENSOR', `${read.name} is a tensor from another engine's memory; use this engine's tensor()`, at);
    if (resident.released) throw new AttentionError('INVALID_TENSOR', `${read.name} is a tensor from engine.tensor() that was released`, at);
    const want = kind === 'Float32Array' ? 'float32' : 'bool';
    if (resident.type !== want) throw new AttentionError('INVALID_DTYPE', `${at} must be ${kind}, got a resident ${resident.type} tensor`, at);
    if (resident.length !== size) throw new AttentionError('SHAPE_MISMATCH', `${at} has ${resident.length} elements but dims [${read.dims}] need ${size}`, at);
    return { resident, offset: 0, length: size };
  }
  const { view, buffer } = plainView(read.data as T, kind);
  if (view.length !== size) {
    throw new AttentionError('SHAPE_MISMATCH', `${at} has ${view.length} elements but dims [${read.dims}] need ${size}`, at);
  }
  const owner = resolver.residentOf(read.data as ArrayBufferView, buffer, at);
  if (owner) return { resident: owner, offset: 0, length: size };
  return { array: view, offset: 0, length: size };
}

/** Checks a read tensor as float32 data of its dims' size (and rank, when given). */
export function floatTensor(read: TensorRead, resolver: OperandResolver, rank?: number): Checked<Float32Array> {
  const { name, dims } = read;
  if (!read.resident && typedArrayName(read.data) !== 'Float32Array') {
    throw new AttentionError('INVALID_DTYPE', `${name}.data must be a Float32Array, got ${describe(read.data)}`, `${name}.data`);
  }
  if (rank !== undefined && dims.length !== rank) {
    throw new AttentionError('INVALID_DIMS', `${name} must have rank ${rank}, got dims [${dims}]`, `${name}.dims`);
  }
  return { operand: operandOf(read, 'Float32Array', sizeOf(dims), resolver, `${name}.data`), dims };
}

export type MaskKind = 'bool' | 'float';

/** A mask after checking: its kind and its strides (elements, 0 where broadcast) over the target dims. */
export interface MaskView {
  kind: MaskKind;
  operand: Operand;
  /** One stride per target dim; the last is always 1 (a mask broadcast along the last dim is expanded). */
  strides: number[];
}

/**
 * Checks that a read mask broadcasts (numpy rules, right-aligned) to `target` and returns its
 * strides. A Uint8Array mask is boolean (nonzero = may attend); a Float32Array is added to the scores.
 */
export function checkMask(read: TensorRead, target: readonly number[], resolver: OperandResolver, targetName: string): MaskView {
  const { name, dims } = read;
  const tag = read.resident ? (read.resident.type === 'bool' ? 'Uint8Array' : 'Float32Array') : typedArrayName(read.data);
  const kind: MaskKind | undefined = tag === 'Uint8Array' ? 'bool' : tag === 'Float32Array' ? 'float' : undefined;
  if (kind === undefined) {
    throw new AttentionError('INVALID_DTYPE', `${name}.data must be a Uint8Array (boolean) or a Float32Array (additive), got ${describe(read.data)}`, `${name}.data`);
  }
  const operand = operandOf(read, tag as 'Float32Array' | 'Uint8Array', sizeOf(dims), resolver, `${name}.data`);
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
  if (last >= 0 && strides[last] === 0 && target[last] > 1) return expandLastDim(kind, operand, dims, strides, target[last]);
  if (last >= 0) strides[last] = 1;
  return { kind, operand, strides };
}

/** A mask whose last dim broadcasts gets that dim materialised, so kernels always read it with stride 1. */
function expandLastDim(kind: MaskKind, operand: Operand, dims: number[], strides: number[], width: number): MaskView {
  const rows = sizeOf(dims);
  const data = operandArray(operand);
  const expanded = kind === 'bool' ? new Uint8Array(rows * width) : new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) expanded.fill(data[r], r * width, (r + 1) * width);
  return { kind, operand: { array: expanded, offset: 0, length: expanded.length }, strides: strides.map((s, i) => (i === strides.length - 1 ? 1 : s * width)) };
}

/**
 * Checks an optional output (read once from the options): a Float32Array or a float32
 * ResidentTensor of `size` elements.
 */
export function checkOut(out: unknown, size: number, resolver: OperandResolver, name: string): Operand<Float32Array> | undefined {
  if (out === undefined) return undefined;
  if (!ResidentTensor.is(out) && typedArrayName(out) !== 'Float32Array') {
    throw new AttentionError('INVALID_DTYPE', `${name} must be a Float32Array or a float32 tensor from engine.tensor(), got ${describe(out)}`, name);
  }
  const read: TensorRead = ResidentTensor.is(out)
    ? { name, data: undefined, dims: out.dims, resident: out }
    : { name, data: out, dims: [lengthGetter.call(out) as number], resident: undefined };
  if (read.resident?.released) throw new AttentionError('INVALID_TENSOR', `${name} is a tensor from engine.tensor() that was released`, name);
  const length = read.resident ? read.resident.length : read.dims[0];
  if (length !== size) throw new AttentionError('SHAPE_MISMATCH', `${name} has ${length} elements but the result needs ${size}`, name);
  const operand = operandOf<Float32Array>(read, 'Float32Array', size, resolver, name);
  // the result is returned in the caller's own array (written through the plain view)
  // (built field by field: an object spread costs more than the rest of this check, per call)
  return operand.array ? { array: operand.array, offset: 0, length: operand.length, user: out as Float32Array } : operand;
}

// an operand's array is a plain view made here (plainView), so instanceof is exact and cheaper than
// BYTES_PER_ELEMENT read through a cache that has seen every array kind
const BYTES = (operand: Operand): number => (operand.resident ? (operand.resident.type === 'bool' ? 1 : 4) : operand.array instanceof Uint8Array ? 1 : 4);

/** The [start, end) of an operand's bytes, and what they are bytes of (a buffer, or a resident tensor's memory). */
function extent(operand: Operand): [unknown, number, number] {
  const bytes = BYTES(operand);
  if (operand.resident) {
    const r = operand.resident;
    if (r.ptr < 0) {
      // the js backend: a tensor's memory is an ordinary array, which a plain view may share
      const array = r.view();
      const start = array.byteOffset + operand.offset * bytes;
      return [array.buffer, start, start + operand.length * bytes];
    }
    const start = r.ptr + operand.offset * bytes;
    return ['wasm', start, start + operand.length * bytes];
  }
  const a = operand.array;
  return [a.buffer, a.byteOffset, a.byteOffset + a.byteLength];
}

/**
 * Refuses an `out` that shares memory with an input (the kernels would read what they have already
 * overwritten), by address ranges. `exactAliasOk`: an out that is exactly the input is fine
 * (softmax in place).
 */
export function checkNoOverlap(out: Operand | undefined, inputs: ReadonlyArray<readonly [Operand | undefined, string]>, exactAliasOk = false, outName = 'options.out'): void {
  if (!out) return;
  const [space, start, end] = extent(out);
  for (const [input, name] of inputs) {
    if (!input) continue;
    const [inSpace, inStart, inEnd] = extent(input);
    if (inSpace !== space || inEnd <= start || end <= inStart) continue;
    if (exactAliasOk && inStart === start && inEnd === end) continue;
    throw new AttentionError('INVALID_OPTION', `${outName} shares memory with ${name}; give a separate output buffer`, outName);
  }
}

export function checkBoolean(x: unknown, name: string): boolean {
  if (x === undefined) return false;
  if (typeof x !== 'boolean') throw new AttentionError('INVALID_OPTION', `${name} must be a boolean, got ${describe(x)}`, name);
  return x;
}

/** An integer >= min (a safe integer), or `fallback` when x is undefined and a fallback is given. */
export function checkInteger(x: unknown, name: string, min: number, fallback?: number): number {
  const value = x ?? fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new AttentionError('INVALID_OPTION', `${name} must be an integer >= ${min}, got ${describe(value)}`, name);
  }
  return value;
}

export function checkFinite(x: unknown, name: string, fallback: number): number {
  if (x === undefined) return fallback;
  if (typeof x !== 'number' || !Number.isFinite(x)) {
    throw new AttentionError('INVALID_OPTION', `${name} must be a finite number, got ${describe(x)}`, name);
  }
  return x;
}

/** A finite number whose float32 value is finite too (and nonzero where the kernels divide by it). */
export function checkFloat32(x: unknown, name: string, fallback: number): number {
  const value = checkFinite(x, name, fallback);
  if (!Number.isFinite(Math.fround(value))) throw new AttentionError('INVALID_OPTION', `${name} ${value} overflows float32`, name);
  if (value !== 0 && Math.abs(Math.fround(value)) < 2 ** -126) throw new AttentionError('INVALID_OPTION', `${name} ${value} is below float32's normal range (|x| >= 2^-126, or 0)`, name);
  return value;
}

/**
 * Reads an options object once: each known key's value, in one pass; any other own key is refused
 * (a misspelt option must never be ignored silently). Returns a plain object of the values.
 */
export function readOptions<K extends string>(options: unknown, name: string, keys: readonly K[]): Partial<Record<K, unknown>> {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new AttentionError('INVALID_OPTION', `${name} must be an object, got ${describe(options)}`, name);
  }
  const values: Partial<Record<K, unknown>> = {};
  for (const key of keys) {
    let value: unknown;
    try {
      value = (options as Record<string, unknown>)[key];
    } catch (cause) {
      throw new AttentionError('INVALID_OPTION', `${name}.${key}: reading it threw (${String(cause)})`, `${name}.${key}`);
    }
    if (value !== undefined) values[key] = value;
  }
  for (const key of ownKeysUpTheChain(options, name)) {
    if (!(keys as readonly string[]).includes(key)) {
      const near = nearest(key, keys);
      throw new AttentionError('INVALID_OPTION', `${name}.${key} is not an option${near ? ` (did you mean ${near}?)` : ''}; known: ${keys.join(', ')}`, `${name}.${key}`);
    }
  }
  return values;
}

/**
 * Every string key of `object` and of its prototypes below Object.prototype, enumerable or not: an
 * option defined by a class getter or inherited is an option too, misspelt or not.
 */
function ownKeysUpTheChain(object: object, name: string): string[] {
  const keys: string[] = [];
  try {
    for (let o: object | null = object; o !== null && o !== Object.prototype; o = Reflect.getPrototypeOf(o)) {
      for (const key of Reflect.ownKeys(o)) if (typeof key === 'string' && key !== 'constructor') keys.push(key);
    }
  } catch (cause) {
    throw new AttentionError('INVALID_OPTION', `${name}: listing its keys threw (${String(cause)})`, name);
  }
  return keys;
}

/** The known key closest to `key` by edit distance, when it is close enough to be a misspelling. */
function nearest(key: string, keys: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of keys) {
    const d = editDistance(key.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return bestDistance <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = row;
  }
  return previous[b.length];
}
