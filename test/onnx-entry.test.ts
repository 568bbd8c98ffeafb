// engine.onnxAttention against all 76 ONNX conformance cases (test/vectors/onnx-attention): Y,
// present_key/present_value and qk_matmul_output, float32 and float16, on every backend.
import { describe, expect, it } from 'vitest';
import type { OnnxOutputTensor, OnnxTensor } from '../src/index.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { OUTPUT_ROLES, conformanceCall, conformanceCases, conformanceTensor } from '../src/conformance.js';
import { halfToFloat } from '../src/float16.js';
import { BACKENDS, engineFor, tolerance } from './helpers.js';

const values = (t: OnnxTensor | OnnxOutputTensor): number[] =>
  t.data instanceof Uint16Array ? Array.from(t.data, halfToFloat) : Array.from(t.data as Float32Array);

const cases = conformanceCases();

describe.each(BACKENDS)('onnxAttention on %s', (backend) => {
  it('covers all 76 cases', () => expect(cases.length).toBe(76));
  it.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    // the node's attributes verbatim, and the outputs the node asks for
    const { inputs, attributes, request } = conformanceCall(c);
    const result = engineFor(backend).onnxAttention(inputs as never, attributes, request) as unknown as Record<string, OnnxOutputTensor | undefined>;
    c.outputs.forEach((e, i) => {
      if (!e) return;
      const role = OUTPUT_ROLES[i];
      const actual = result[role];
      expect(actual, role).toBeDefined();
      expect(actual!.dims, role).toEqual(e.shape);
      expect(actual!.type, role).toBe(e.dtype);
      const want = values(conformanceTensor(e));
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

describe('conformance vectors', () => {
  it('a truncated vector file is refused, naming the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'wasm-attention-vectors-'));
    writeFileSync(join(dir, 'q.bin'), new Uint8Array(10)); // float32 [1, 4] needs 16 bytes
    const url = pathToFileURL(`${dir}/`);
    expect(() => conformanceTensor({ role: 'Q', dtype: 'float32', shape: [1, 4], file: 'q.bin' }, url)).toThrow(/q\.bin: 10 bytes, but float32 \[1,4\] needs 16/);
  });
});
