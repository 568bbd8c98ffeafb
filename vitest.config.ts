import { defineConfig } from 'vitest/config';

// Two projects: every test on the simd build and the js backend, and the kernel tests once more in
// a process started with --experimental-wasm-relaxed-simd (Node 20 needs it; later Nodes ignore it),
// on the relaxed-SIMD build, whose fused multiply-add rounds differently.
const kernelTests = ['test/attention.test.ts', 'test/matmul.test.ts', 'test/matmul-packed.test.ts', 'test/softmax.test.ts', 'test/rope.test.ts', 'test/rope-attention.test.ts', 'test/onnx-conformance.test.ts', 'test/onnx-entry.test.ts', 'test/semantics.test.ts', 'test/exp.test.ts', 'test/numerics.test.ts', 'test/tile-edges.test.ts', 'test/onnx-window.test.ts', 'test/kv-pool.test.ts', 'test/kv-pool-edges.test.ts', 'test/kv-pool-dtype.test.ts', 'test/kv-cache-dtype.test.ts', 'test/kv-dtype-hostile.test.ts', 'test/attention-backward.test.ts'];

export default defineConfig({
  test: {
    testTimeout: 60_000,
    // dist/ and build/ made current first: workers and the CLI run the compiled code
    globalSetup: ['test/global-setup.ts'],
    projects: [
      {
        extends: true,
        test: { name: 'simd+js', include: ['test/**/*.test.ts'], exclude: ['test/browser/**'], env: { TEST_BACKENDS: 'wasm-simd,js', WASM_ATTENTION_GUARDS: '1' } },
      },
      {
        extends: true,
        test: {
          name: 'relaxed-simd',
          include: kernelTests,
          // Node 20 needs the flag; Node 22 and later run relaxed SIMD by default.
          execArgv: Number(process.versions.node.split('.')[0]) < 22 ? ['--experimental-wasm-relaxed-simd'] : [],
          env: { TEST_BACKENDS: 'wasm-relaxed-simd', WASM_ATTENTION_GUARDS: '1' },
        },
      },
    ],
  },
});
