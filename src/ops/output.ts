// The finish of every op whose result is one tensor: read it out of WASM memory (or leave it where the
// caller's resident `out` already holds it), with the plan's dims.
import type { Encoded, OpPlan, WasmCall } from '../backend.js';
import type { Tensor } from '../tensor.js';

export function tensorOutput(plan: OpPlan & { outDims: number[] }, call: WasmCall, encoded: Encoded): Tensor {
  return { data: call.collect(encoded.outPtr, encoded.size, plan.out), dims: plan.outDims };
}
