// Every op's item runner by op number: what a worker (or the calling thread) runs for an item of
// any job. Adding an op adds a line here.
import type { ItemRunner } from '../job.js';
import { ATTENTION_JOB, runAttentionItem } from './attention/job.js';
import { BACKWARD_JOB, runBackwardItem } from './attention-backward/job.js';
import { MATMUL_JOB, runMatmulItem } from './matmul/job.js';
import { PACK_JOB, runPackItem } from './matmul/packed.js';
import { PAGED_JOB, runPagedItem } from './paged-attention/job.js';
import { ROPE_JOB, runRopeItem } from './rope/job.js';
import { SOFTMAX_JOB, runSoftmaxItem } from './softmax/job.js';
import { SOFTMAX_BACKWARD_JOB, runSoftmaxBackwardItem } from './softmax-backward/job.js';

export const ITEM_RUNNERS: ReadonlyMap<number, ItemRunner> = new Map([
  [ATTENTION_JOB.op, runAttentionItem],
  [MATMUL_JOB.op, runMatmulItem],
  [SOFTMAX_JOB.op, runSoftmaxItem],
  [ROPE_JOB.op, runRopeItem],
  [PAGED_JOB.op, runPagedItem],
  [PACK_JOB.op, runPackItem],
  [BACKWARD_JOB.op, runBackwardItem],
  [SOFTMAX_BACKWARD_JOB.op, runSoftmaxBackwardItem],
]);
