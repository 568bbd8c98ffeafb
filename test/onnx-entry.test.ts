// engine.onnxAttention against all 76 ONNX conformance cases (test/vectors/onnx-attention): Y,
// present_key/present_value and qk_matmul_output, float32 and float16, on every backend.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { OnnxOutputTensor, OnnxTensor } from '../src/index.js';
import { halfToFloat } from '../src/float16.js';
import { BACKENDS, engineFor, tolerance } from './helpers.js';

const DIR = new URL('./vectors/onnx-attention/', import.meta.url);
const ROLES_IN = ['Q', 'K', 'V', 'attn_mask', 'past_key', 'past_value', 'nonpad_kv_seqlen'] as const;
const ROLES_OUT = ['Y', 'present_key', 'present_value', 'qk_matmul_output'] as const;

interface Entry {
  role: string;
  dtype: 'float32' | 'float16' | 'bool' | 'int64';
  shape: number[];
  file: string;
}
interface Case {
  name: string;
  attributes: Record<string, number>;
  inputs: Array<Entry | null>;
  outputs: Array<Entry | null>;
}

function load(entry: Entry): OnnxTensor {
  const buf = readFileSync(new URL(entry.file, DIR));
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength).slice().buffer;
  const data =
    entry.dtype === 'float32' ? new Float32Array(bytes)
    : entry.dtype === 'float16' ? new Uint16Array(bytes)
    : entry.dtype === 'int64' ? new BigInt64Array(bytes)
    : new Uint8Array(bytes);
  return { type: entry.dtype, data, dims: entry.shape };
}

const values = (t: OnnxTensor | OnnxOutputTensor): number[] =>
  t.data instanceof Uint16Array ? Array.from(t.data, halfToFloat) : Array.from(t.data as Float32Array);

const index = JSON.parse(readFileSync(new URL('index.json', DIR), 'utf8')) as { cases: Array<{ name: string }> };
const cases: Case[] = index.cases.map(({ name }) => JSON.parse(readFileSync(new URL(`${name}.json`, DIR), 'utf8')));

describe.each(BACKENDS)('onnxAttention on %s', (backend) => {
  it('covers all 76 cases', () => expect(cases.length).toBe(76));
  it.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const inputs: Record<string, OnnxTensor> = {};
    c.inputs.forEach((e, i) => {
      if (e) inputs[ROLES_IN[i]] = load(e);
    });
    // the qk output is asked for by setting its mode; these cases leave it at ONNX's default, 0
    const attributes = c.outputs[3] && c.attributes.qk_matmul_output_mode === undefined ? { ...c.attributes, qk_matmul_output_mode: 0 } : c.attributes;
    const result = engineFor(backend).onnxAttention(inputs as never, attributes) as unknown as Record<string, OnnxOutputTensor | undefined>;
    c.outputs.forEach((e, i) => {
      if (!e) return;
      const role = ROLES_OUT[i];
      const actual = result[role];
      expect(actual, role).toBeDefined();
      expect(actual!.dims, role).toEqual(e.shape);
      expect(actual!.type, role).toBe(e.dtype);
      const want = values(load(e));
      const got = values(actual!);
      let worst = 0;
      for (let j = 0; j < want.length; j++) {
        if (!Number.isFinite(want[j])) {
          expect(got[j], `${role}[${j}]`).toBe(want[j]);
          continue;
        }
        const err = Math.abs(got[j] - want[j]);
        expect(err, `${role}[${j}]`).toBeLessThanOrEqual(tolerance.onnx.atol + tolerance.onnx.rtol * Math.abs(want[j]));
        worst = Math.max(worst, err);
      }
      // tighter than ONNX for float32 outputs: float32 rounding of short reductions
      if (e.dtype === 'float32') expect(worst, role).toBeLessThan(2e-6);
    });
  });
});
