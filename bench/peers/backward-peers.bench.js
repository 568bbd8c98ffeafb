// Peer benchmark of attention's backward pass: wasm-attention's engine.attentionBackward against
// tfjs-backend-wasm's automatic differentiation of the unfused attention graph, one thread, in one run.
//   npm run bench:peers:backward                          (in the repo root, after `npm run build`)
//   npm --prefix bench/peers ci && node bench/peers/backward-peers.bench.js
//   node bench/peers/backward-peers.bench.js --shapes bert-128 --graphs batched-4d --time 300 --json
// What each call does, from Float32Arrays to Float32Arrays (every library pays for its copies):
// - ours: engine.attentionBackward(q, k, v, out, dOut, { causal, logSumExp }) on the relaxed-SIMD build
//   (the SIMD build where relaxed SIMD does not run), threads: 1, with the output and log-sum-exp of one
//   earlier engine.attention(q, k, v, { causal, returnLogSumExp: true }) call; and, as a second row,
//   that forward call and the backward together, since tfjs cannot differentiate without its forward.
// - tfjs: tf.grads((q, k, v) => softmax(q·kᵀ·scale + mask)·v)([q, k, v], dOut), i.e. the gradients of
//   sum(dOut ∘ attention) with respect to q, k and v, inside tf.tidy, then dataSync() of dq, dk and dv.
//   The mask (causal shapes only: an additive [Sq, Skv] tensor, -inf above the diagonal by default,
//   --mask -1e9 for the finite one) and the scale are made once, outside the timed call. Two graphs:
//   batched-4d, tf.matMul on the [B, H, S, D] tensors; per-head-2d, one tf.grads per head on rank-2
//   tensors with kᵀ made by tf.transpose, so that the forward's matMuls carry no transpose flag and
//   tfjs-backend-wasm hands them to XNNPACK (its rank-2, flag-free case). The faster is shown, the
//   other in a footnote.
// Before timing, every tfjs graph's dq, dk and dv are checked against ours: max |tfjs - ours| ÷
// max |ours| per tensor, the worst of the three; a graph above --tolerance is reported and not timed.
// The calls are timed in interleaved rounds (each round runs every contender once, in a rotated order),
// at least 3 rounds and at least --time ms per contender; the median of each is reported, and the ratio
// tfjs ms ÷ ours ms from those medians (goal: >= 3x against the backward alone).
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { relaxedFlagNote } from './backward-notes.js';
import { relaunchWithRelaxedSimd } from '../relaxed-flag.js';
import { causalMask } from './models.js';

relaunchWithRelaxedSimd();

const { createEngineSync } = await import('../../dist/index.js');
const { buildSupported } = await import('../../dist/backends/wasm-module.js');
