// Reading the ONNX Attention conformance vectors shipped in test/vectors/onnx-attention (see its
// README): each case is a JSON description plus raw little-endian tensors. Used by `wasm-attention
// verify` and by the tests.
import { readFileSync } from 'node:fs';
import type { OnnxTensor } from './features/onnx.js';

/** The folder of the vectors, inside the installed package. */
export const CONFORMANCE_DIR = new URL('../test/vectors/onnx-attention/', import.meta.url);

export const INPUT_ROLES = ['Q', 'K', 'V', 'attn_mask', 'past_key', 'past_value', 'nonpad_kv_seqlen'] as const;
export const OUTPUT_ROLES = ['Y', 'present_key', 'present_value', 'qk_matmul_output'] as const;

export interface ConformanceEntry {
  role: string;
  dtype: 'float32' | 'float16' | 'bool' | 'int64';
  shape: number[];
  file: string;
}

export interface ConformanceCase {
  name: string;
  attributes: Record<string, number>;
  /** In the operator's input order; null for an omitted optional input. */
  inputs: Array<ConformanceEntry | null>;
  outputs: Array<ConformanceEntry | null>;
}

/** Every case listed in the folder's index.json. */
export function conformanceCases(dir: URL = CONFORMANCE_DIR): ConformanceCase[] {
  const index = JSON.parse(readFileSync(new URL('index.json', dir), 'utf8')) as { cases: Array<{ name: string }> };
  return index.cases.map(({ name }) => JSON.parse(readFileSync(new URL(`${name}.json`, dir), 'utf8')) as ConformanceCase);
}

/** One tensor of a case, typed as onnxruntime would hand it over (float16 as Uint16Array bits). */
export function conformanceTensor(entry: ConformanceEntry, dir: URL = CONFORMANCE_DIR): OnnxTensor {
  const bytes = new Uint8Array(readFileSync(new URL(entry.file, dir))).buffer;
  const size = entry.shape.reduce((a, b) => a * b, 1) * ({ float32: 4, float16: 2, int64: 8, bool: 1 } as const)[entry.dtype];
  if (bytes.byteLength !== size) {
    throw new Error(`${new URL(entry.file, dir).pathname}: ${bytes.byteLength} bytes, but ${entry.dtype} [${entry.shape}] needs ${size} (a truncated or wrong vector file)`);
  }
  const data =
    entry.dtype === 'float32' ? new Float32Array(bytes)
    : entry.dtype === 'float16' ? new Uint16Array(bytes)
    : entry.dtype === 'int64' ? new BigInt64Array(bytes)
    : new Uint8Array(bytes);
  return { type: entry.dtype, data, dims: entry.shape };
}

/** The inputs of a case by role, its attributes as the node has them, and the outputs the node asks for. */
export function conformanceCall(c: ConformanceCase, dir: URL = CONFORMANCE_DIR): {
  inputs: Record<string, OnnxTensor>; attributes: Record<string, number>; request: { outputs: Array<(typeof OUTPUT_ROLES)[number]> };
} {
  const inputs: Record<string, OnnxTensor> = {};
  c.inputs.forEach((entry, i) => {
    if (entry) inputs[INPUT_ROLES[i]] = conformanceTensor(entry, dir);
  });
  const outputs = OUTPUT_ROLES.filter((_, i) => c.outputs[i]);
  return { inputs, attributes: c.attributes, request: { outputs } };
}
