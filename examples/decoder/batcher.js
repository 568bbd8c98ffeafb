// Continuous batching for the decoder: batcher.forward(session, tokens) returns a promise of the
// logits of the last token, and the calls that arrive while a batch runs go into the next
// model.forwardBatch together, so concurrent sessions share each layer's GEMMs and its pool step
// (pool.stepAsync on the worker threads). It is the pool's own batcher (pool.batcher()) lifted to the
// whole model: batching only the attention step would leave every projection a GEMV per session.
//
// A batch takes the waiting calls in arrival order, at most one per session (a later call of a
// session waits for the next batch, so each session's calls run in order), at most maxBatch calls
// and maxRows token rows (the first call always goes). A batch the model refuses as a whole (not
// enough pages: forwardBatch throws before anything changes) runs again call by call, so a refusal
// reaches only the calls that do not fit.

export function createBatcher(model, { maxBatch = 64, maxRows = 2048 } = {}) {
  let queue = [];
  let running = false;
  let scheduled = false;
  const counters = { batches: 0, calls: 0, rows: 0 };

  const schedule = () => {
    if (running || scheduled || queue.length === 0) return;
    scheduled = true;
    setImmediate(flush);
  };

  /** The next batch, taken out of the queue. */
  const take = () => {
    const batch = [];
    const rest = [];
    const held = new Set();
    let rows = 0;
    for (const call of queue) {
      const fits = batch.length === 0 || (batch.length < maxBatch && rows + call.tokens.length <= maxRows);
      if (fits && !held.has(call.session)) {
        batch.push(call);
        rows += call.tokens.length;
      } else rest.push(call);
      held.add(call.session);
    }
    queue = rest;
    return batch;
  };

  /** Runs a batch; a refusal (thrown before anything ran) is returned, a failure later rejects every call. */
  const run = async (batch) => {
    let pending;
    try {
      pending = model.forwardBatch(batch.map(({ session, tokens }) => ({ session, tokens })), { async: true, logits: 'last' });
    } catch (refusal) {
      return refusal;
    }
    try {
      const logits = await pending;
      counters.batches++;
      counters.calls += batch.length;
      counters.rows += batch.reduce((sum, call) => sum + call.tokens.length, 0);
      batch.forEach((call, i) => call.resolve(logits[i]));
    } catch (error) {
      for (const call of batch) call.reject(error);
    }
    return undefined;
  };

  async function flush() {
    scheduled = false;
    running = true;
    try {
      const batch = take();
      const refusal = await run(batch);
      if (refusal && batch.length === 1) batch[0].reject(refusal);
      else if (refusal) {
        for (const call of batch) {
          const alone = await run([call]);
          if (alone) call.reject(alone);
        }
      }
    } finally {
      running = false;
      schedule();
    }
  }

  return {
    /** Logits [vocab] of the last of `tokens`, once they are appended to the session in some batch. */
    forward(session, tokens) {
      return new Promise((resolve, reject) => {
        queue.push({ session, tokens, resolve, reject });
        schedule();
      });
    },
    get waiting() {
      return queue.length;
    },
    /** Batches run, calls and token rows they held, since the start (or the last reset). */
    stats(reset = false) {
      const out = { ...counters, meanCalls: counters.batches ? counters.calls / counters.batches : 0 };
      if (reset) Object.assign(counters, { batches: 0, calls: 0, rows: 0 });
      return out;
    },
  };
}
