// A pool worker: instantiates the engine's compiled kernels over the engine's shared memory, then
// waits for jobs (pool.ts) and runs items until none is left. It never allocates WASM memory: inputs,
// outputs, scratch and the job itself are laid out by the engine's thread.
import { parentPort } from 'node:worker_threads';
import { C, type WorkerInit, claimLoop } from './pool-protocol.js';
import { instantiateKernels } from './wasm-module.js';

if (!parentPort) throw new Error('wasm-attention: worker.js runs only as a worker thread');
const port = parentPort;

port.once('message', (init: WorkerInit) => {
  const kernels = instantiateKernels(init.module, init.memory);
  const ctrl = new Int32Array(init.ctrl);
  const job = new Float64Array(init.job);
  port.postMessage('ready');
  let seen = 0;
  for (;;) {
    Atomics.wait(ctrl, C.epoch, seen);
    const epoch = Atomics.load(ctrl, C.epoch);
    if (epoch < 0) break;
    seen = epoch;
    claimLoop(kernels, init.memory, ctrl, job, init.slot);
  }
  port.close();
});
