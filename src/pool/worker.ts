// A pool worker (a Node worker thread, or a module Web Worker in a browser): instantiates the
// engine's compiled kernels over the engine's shared memory, then waits for jobs (pool.ts) and runs
// items until none is left. It never allocates WASM memory: inputs, outputs, scratch and the job
// itself are laid out by the engine's thread. If anything fails here, the worker clears its busy
// word, says why, and ends itself, rather than dying of an uncaught exception (the pool sees the exit
// and replaces it; terminating a worker while its runtime reports an uncaught exception has crashed
// Node 24's V8).
import { instantiateKernels } from '../backends/wasm-module.js';
import { nodeWorkers } from '../platform.js';
import { C, type WorkerInit, claimLoop } from './protocol.js';

const port = nodeWorkers?.parentPort;
/** How long a worker that finished a job keeps looking for the next before it sleeps. */
const SPIN_MS = 0.2;
const send = (message: unknown): void => (port ? port.postMessage(message) : postMessage(message));

function run(init: WorkerInit): void {
  const ctrl = new Int32Array(init.ctrl);
  try {
    const kernels = instantiateKernels(init.module, init.memory);
    const job = new Float64Array(init.job);
    // the pool counts a worker that ends before this as one that could not start
    send('ready');
    let seen = 0;
    for (;;) {
      // calls often come back to back (a decoder's matmuls, tens of microseconds apart): look for the
      // next job for a short while before sleeping, as waking a sleeping thread costs about as long
      const until = performance.now() + SPIN_MS;
      while (Atomics.load(ctrl, C.epoch) === seen && performance.now() < until);
      Atomics.wait(ctrl, C.epoch, seen);
      const epoch = Atomics.load(ctrl, C.epoch);
      if (epoch < 0) break;
      seen = epoch;
      claimLoop(kernels, init.memory, ctrl, job, init.slot);
    }
    port?.close();
  } catch (error) {
    Atomics.store(ctrl, C.busy + init.slot, 0);
    send({ failed: String(error instanceof Error ? error.message : error) });
    if (port) process.exit(1);
    else close();
  }
}

if (port) port.once('message', run);
else addEventListener('message', (event) => run((event as MessageEvent<WorkerInit>).data), { once: true });
