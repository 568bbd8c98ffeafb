// The ONNX project's own conformance vectors for its Attention operator (test/vectors/onnx-attention,
// see its README and licence), run through engine.attention: the cases this API expresses directly
// (4D, float32, no past/present, no nonpad_kv_seqlen, no qk output). The rest run through the ONNX
// entry point. Checked at ONNX's tolerance and, tighter, at ours.
import { describe, expect, it } from 'vitest';
import { conformanceCases, conformanceTensor } from '../src/conformance.js';
import { BACKENDS, engineFor, maxError, tolerance } from './helpers.js';

const all = conformanceCases();
const direct = all.filter((c) => {
  const roles = c.inputs.filter(Boolean).map((e) => e!.role);
  return (
    c.inputs[0]!.shape.length === 4 &&
    c.inputs.every((e) => !e || e.dtype !== 'float16') &&
    !roles.includes('past_key') &&
    !roles.includes('nonpad_kv_seqlen') &&
    c.attributes.qk_matmul_output_mode === undefined &&
    c.outputs.filter(Boolean).length === 1
  );
});

describe('ONNX conformance vectors', () => {
  it('are all present (76 cases)', () => {
    expect(all.length).toBe(76);
    expect(direct.length).toBeGreaterThanOrEqual(25);
  });
});

describe.each(BACKENDS)('ONNX Attention cases through attention() on %s', (backend) => {
  it.each(direct.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const tensor = (i: number) => (c.inputs[i] ? conformanceTensor(c.inputs[i]!) : undefined);
    const [q, k, v, mask] = [0, 1, 2, 3].map(tensor);
    const expected = conformanceTensor(c.outputs[0]!).data as Float32Array;
    const y = engineFor(backend).attention(q as never, k as never, v as never, {
      causal: c.attributes.is_causal === 1,
      scale: c.attributes.scale,
      softcap: c.attributes.softcap ? c.attributes.softcap : undefined,
      mask: mask as never,
    });
    expect(y.dims).toEqual(c.outputs[0]!.shape);
    for (let i = 0; i < expected.length; i++) {
      expect(Math.abs(y.data[i] - expected[i])).toBeLessThanOrEqual(tolerance.onnx.atol + tolerance.onnx.rtol * Math.abs(expected[i]));
    }
    // ours: float32 rounding of a short reduction
    expect(maxError(y.data, expected)).toBeLessThan(2e-6);
  });
});
