// A pool worker (a Node worker thread, or a module Web Worker in a browser): instantiates the
// engine's compiled kernels over the engine's shared memory, then waits for jobs (pool.ts) and runs
// items until none is left. It never allocates WASM memory: inputs, outputs, scratch and the job
// itself are laid out by the engine's thread.
import { instantiateKernels } from '../backends/wasm-module.js';
import { nodeWorkers } from '../platform.js';
import { C, type WorkerInit, claimLoop } from './protocol.js';

const port = nodeWorkers?.parentPort;

function run(init: WorkerInit): void {
  const kernels = instantiateKernels(init.module, init.memory);
  const ctrl = new Int32Array(init.ctrl);
  const job = new Float64Array(init.job);
  // the pool counts a worker that dies before this as one that could not start
  if (port) port.postMessage('ready');
  else postMessage('ready');
  let seen = 0;
  for (;;) {
    Atomics.wait(ctrl, C.epoch, seen);
    const epoch = Atomics.load(ctrl, C.epoch);
    if (epoch < 0) break;
    seen = epoch;
    claimLoop(kernels, init.memory, ctrl, job, init.slot);
  }
  port?.close();
}

if (port) port.once('message', run);
else addEventListener('message', (event) => run((event as MessageEvent<WorkerInit>).data), { once: true });
