// The row path of the attention kernel, for query blocks of fewer rows than the GEMM tile (decoding:
// one query row against a long cache). There the tile would waste most of its lanes and the packing
// of K and V would cost as much as the math, so both products read K and V rows where they lie:
//   dotScores:  s[j] = q · k_j                 for j < n   (k_j at k + j*ldk, headDim floats)
//   addWeighted: o += sum_j p[j] · v_j          for j < n   (v_j at v + j*ldv, valueDim floats)
// Memory traffic is one pass over the K and V rows of the block. Subnormal K and V values are read as
// 0 (daz4), so no multiply sees one (x86 is many times slower on them).
import { daz1, daz4, madd } from './f32-vmath-simd';

/** s[j] = q·k_j for j < n: four keys at a time, so each load of q serves four products. */
export function dotScores(q: usize, k: usize, ldk: i32, n: i32, headDim: i32, s: usize): void {
  const kStride = (<usize>ldk) << 2;
  const vecEnd = headDim & ~3;
  let j = 0;
  for (; j + 4 <= n; j += 4) {
    const k0 = k + <usize>j * kStride, k1 = k0 + kStride, k2 = k1 + kStride, k3 = k2 + kStride;
    let acc0 = f32x4.splat(0.0), acc1 = f32x4.splat(0.0), acc2 = f32x4.splat(0.0), acc3 = f32x4.splat(0.0);
    for (let d = 0; d < vecEnd; d += 4) {
      const off = <usize>d << 2;
      const qv = v128.load(q + off);
      acc0 = madd(qv, daz4(v128.load(k0 + off)), acc0);
      acc1 = madd(qv, daz4(v128.load(k1 + off)), acc1);
      acc2 = madd(qv, daz4(v128.load(k2 + off)), acc2);
      acc3 = madd(qv, daz4(v128.load(k3 + off)), acc3);
    }
    // [sum acc0, sum acc1, sum acc2, sum acc3] by two rounds of pairwise adds
    const t01 = f32x4.add(v128.shuffle<f32>(acc0, acc1, 0, 4, 1, 5), v128.shuffle<f32>(acc0, acc1, 2, 6, 3, 7));
    const t23 = f32x4.add(v128.shuffle<f32>(acc2, acc3, 0, 4, 1, 5), v128.shuffle<f32>(acc2, acc3, 2, 6, 3, 7));
    let sums = f32x4.add(v128.shuffle<f32>(t01, t23, 0, 1, 4, 5), v128.shuffle<f32>(t01, t23, 2, 3, 6, 7));
    if (vecEnd < headDim) {
      let tail = f32x4.splat(0.0);
      for (let d = vecEnd; d < headDim; d++) {
        const off = <usize>d << 2;
        const qd = f32x4.splat(load<f32>(q + off));
        const kd = daz4(f32x4(load<f32>(k0 + off), load<f32>(k1 + off), load<f32>(k2 + off), load<f32>(k3 + off)));
        tail = madd(qd, kd, tail);
      }
      sums = f32x4.add(sums, tail);
    }
    v128.store(s + (<usize>j << 2), sums);
  }
  for (; j < n; j++) {
    const kj = k + <usize>j * kStride;
    let acc = f32x4.splat(0.0);
    for (let d = 0; d < vecEnd; d += 4) acc = madd(v128.load(q + (<usize>d << 2)), daz4(v128.load(kj + (<usize>d << 2))), acc);
    const t = f32x4.add(acc, v128.shuffle<f32>(acc, acc, 2, 3, 0, 1));
    let sum = f32x4.extract_lane(t, 0) + f32x4.extract_lane(t, 1);
    for (let d = vecEnd; d < headDim; d++) sum += load<f32>(q + (<usize>d << 2)) * daz1(load<f32>(kj + (<usize>d << 2)));
    store<f32>(s + (<usize>j << 2), sum);
  }
}

/** o[0..valueDim) += sum_j p[j] v_j for j < n: 16 columns at a time held in registers over all keys. */
export function addWeighted(p: usize, n: i32, v: usize, ldv: i32, valueDim: i32, o: usize): void {
  const vStride = (<usize>ldv) << 2;
  let c = 0;
  for (; c + 16 <= valueDim; c += 16) {
    const oc = o + (<usize>c << 2);
    let acc0 = v128.load(oc), acc1 = v128.load(oc, 16), acc2 = v128.load(oc, 32), acc3 = v128.load(oc, 48);
    let vp = v + (<usize>c << 2);
    for (let j = 0; j < n; j++) {
      const pj = v128.load32_splat(p + (<usize>j << 2));
      acc0 = madd(pj, daz4(v128.load(vp)), acc0);
      acc1 = madd(pj, daz4(v128.load(vp, 16)), acc1);
      acc2 = madd(pj, daz4(v128.load(vp, 32)), acc2);
      acc3 = madd(pj, daz4(v128.load(vp, 48)), acc3);
      vp += vStride;
    }
    v128.store(oc, acc0);
    v128.store(oc, acc1, 16);
    v128.store(oc, acc2, 32);
    v128.store(oc, acc3, 48);
  }
  for (; c + 4 <= valueDim; c += 4) {
    const oc = o + (<usize>c << 2);
    let acc = v128.load(oc);
    let vp = v + (<usize>c << 2);
    for (let j = 0; j < n; j++) {
      acc = madd(v128.load32_splat(p + (<usize>j << 2)), daz4(v128.load(vp)), acc);
      vp += vStride;
    }
    v128.store(oc, acc);
  }
  for (; c < valueDim; c++) {
    const oc = o + (<usize>c << 2);
    let acc = load<f32>(oc);
    for (let j = 0; j < n; j++) acc += load<f32>(p + (<usize>j << 2)) * daz1(load<f32>(v + <usize>j * vStride + (<usize>c << 2)));
    store<f32>(oc, acc);
  }
}

/** [sum a0, sum a1, sum a2, sum a3]: the four horizontal sums by two rounds of pairwise adds. */
// @ts-ignore: decorator
@inline export function sums4(a0: v128, a1: v128, a2: v128, a3: v128): v128 {
  const t01 = f32x4.add(v128.shuffle<f32>(a0, a1, 0, 4, 1, 5), v128.shuffle<f32>(a0, a1, 2, 6, 3, 7));
  const t23 = f32x4.add(v128.shuffle<f32>(a2, a3, 0, 4, 1, 5), v128.shuffle<f32>(a2, a3, 2, 6, 3, 7));
  return f32x4.add(v128.shuffle<f32>(t01, t23, 0, 1, 4, 5), v128.shuffle<f32>(t01, t23, 2, 3, 6, 7));
}

/** lane r of x into row r of s (rows lds floats apart) at column j. */
// @ts-ignore: decorator
@inline export function storeColumn(s: usize, sStride: usize, j: i32, x: v128): void {
  const at = s + (<usize>j << 2);
  store<f32>(at, f32x4.extract_lane(x, 0));
  store<f32>(at + sStride, f32x4.extract_lane(x, 1));
  store<f32>(at + 2 * sStride, f32x4.extract_lane(x, 2));
  store<f32>(at + 3 * sStride, f32x4.extract_lane(x, 3));
}
