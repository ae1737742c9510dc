// Sink-softmax attention on the GPU (ds4-model.md §4.4 step 9; ds4-dispatch.md §1.2 rows D1 and
// I3). Host API and argument shapes: engine/backend/cuda/ops_cuda.h (AttnArgs).
// Check: tests/unit/cuda_ops_test --gtest_filter='*attn_*'.
//
// A query row attends over its candidate list (raw window rows, then all compressed rows or the
// indexer's selection, in that order); K = V = one 512-wide row shared by the 64 heads.
//
// Variants (every one deterministic: no atomics, candidate order = list order):
//   attn_dense__serial_dot / attn_indexed__scalar  (the exact variants; N=1 decode)
//       Strategy: one 256-thread block per (token, head); q, the candidate indices and the
//       scores live in shared memory. Thread t scores candidates t, t+256, ... with a
//       sequential F32 dot over head_dim in index order (float4 loads, four adds in order),
//       times scale. Max: order-free fmax tree from the sink. e_j = exp(s_j - M); the
//       denominator exp(sink - M) + e_0 + e_1 + ... is summed serially by thread 0 in candidate
//       order; p_j = e_j/den; out[i] = sum_j p_j k_j[i] serially in candidate order, one thread
//       per output dim (coalesced row reads).
//       Numerics: the operation order of attention_head_ref exactly (the only difference is
//       exp rounding, see ops_cuda.h); N rows = N independent blocks, so per row bit-equal to
//       N=1. ds4's N=1 branch uses block trees for the sums and, for indexed rows, an atomicAdd
//       compaction of the top-k (40 distinct results in 40 runs); neither is reproduced.
//   attn_dense__lane8_dot  (D1 fast: ds4's n_tokens > 1 branch)
//       Differs from serial only in the score: groups of 8 lanes per candidate, lane l sums
//       elements l, l+8, ... in order, then __shfl_down 4, 2, 1 within the group (as
//       attention_head_lane8). Same softmax tail. Not bit-equal to serial.
//   attn_indexed__heads8_online  (I3 fast; ds4 also uses it for dense rows at N >= 128)
//       Strategy: one 256-thread block per (token, 8 heads), one warp per head; candidate rows
//       staged 8 at a time in shared memory and read by all 8 warps. Per row: lane l dots
//       elements l, l+32, ... in order, __shfl_down 16..1, score broadcast from lane 0; online
//       softmax: when s > m, l and the 16 per-lane accumulators are scaled by exp(m - s) and
//       m = s; p = exp(s - m); l += p; acc += p*row. The sink is folded in at the end:
//       m2 = max(m, sink), r = exp(m - m2), l = l*r + exp(sink - m2), out = acc*r/l.
//       Same order as attention_head_online; not bit-equal to serial.
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxHeadDim = 512;
constexpr int kMaxLanes = kMaxHeadDim / kWarp;  // per-lane elements of a head (online)
constexpr int kHeadsPerBlock = kThreads / kWarp;  // 8 (online)
constexpr int kRowsPerStage = 8;                 // staged candidate rows (online)
constexpr int kMaxSmem = 226 * 1024;  // H100 opt-in is 227 KiB per block, less static smem

__device__ __forceinline__ float exp_f32(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

// Max over the block of every thread's `v`; fmax is exact and order-free. `red` holds
// kThreads/32 floats. Returns the maximum to every thread.
__device__ __forceinline__ float block_max(float v, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  if (threadIdx.x % kWarp == 0) red[threadIdx.x / kWarp] = v;
  __syncthreads();
  float m = red[0];
#pragma unroll
  for (int w = 1; w < kThreads / kWarp; ++w) m = fmaxf(m, red[w]);
  __syncthreads();
  return m;
}

// The materialised-score kernel (serial or lane-8 score). Grid (n_head, n_tok), kThreads.
// Dynamic shared memory: q (head_dim) | scores/probabilities (max_cand) | indices (max_cand).
template <bool kLane8>
__global__ void __launch_bounds__(kThreads) attn_materialised_kernel(AttnArgs a) {
  extern __shared__ float4 smem4[];
  float* qs = reinterpret_cast<float*>(smem4);
  float* sc = qs + a.head_dim;
  int32_t* ci = reinterpret_cast<int32_t*>(sc + a.max_cand);
  __shared__ float red[kThreads / kWarp];
  __shared__ float den_sh;

  const int hd = a.head_dim;
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int tid = threadIdx.x;
  const int n = a.n_cand[t];
  const int32_t* cand = a.cand + t * a.max_cand;
  const float* q = a.q + (t * a.n_head + h) * hd;
  for (int i = tid; i < hd; i += kThreads) qs[i] = q[i];
  for (int j = tid; j < n; j += kThreads) ci[j] = cand[j];
  __syncthreads();

  // Scores s_j = dot(k_j, q) * scale.
  if constexpr (!kLane8) {
    const float4* q4 = reinterpret_cast<const float4*>(qs);
    for (int j = tid; j < n; j += kThreads) {
      const float4* k4 = reinterpret_cast<const float4*>(a.kv + static_cast<int64_t>(ci[j]) * hd);
      float acc = 0.0f;  // dot_f32_f32: index order
      for (int i = 0; i < hd / 4; ++i) {
        const float4 kk = __ldg(k4 + i);
        const float4 qq = q4[i];
        acc = __fadd_rn(acc, __fmul_rn(kk.x, qq.x));
        acc = __fadd_rn(acc, __fmul_rn(kk.y, qq.y));
        acc = __fadd_rn(acc, __fmul_rn(kk.z, qq.z));
        acc = __fadd_rn(acc, __fmul_rn(kk.w, qq.w));
      }
      sc[j] = __fmul_rn(acc, a.scale);
    }
  } else {
    const int grp = tid / 8, lane = tid % 8;
    for (int jb = 0; jb < n; jb += kThreads / 8) {  // uniform trip count: shuffles stay full-warp
      const int j = jb + grp;
      float part = 0.0f;
      if (j < n) {
        const float* k = a.kv + static_cast<int64_t>(ci[j]) * hd;
        for (int i = lane; i < hd; i += 8) part = __fadd_rn(part, __fmul_rn(__ldg(k + i), qs[i]));
      }
      part = __fadd_rn(part, __shfl_down_sync(kFullMask, part, 4, 8));
      part = __fadd_rn(part, __shfl_down_sync(kFullMask, part, 2, 8));
      part = __fadd_rn(part, __shfl_down_sync(kFullMask, part, 1, 8));
      if (j < n && lane == 0) sc[j] = __fmul_rn(part, a.scale);
    }
  }
  __syncthreads();

  // M = max(sink, s_j); e_j = exp(s_j - M); den = exp(sink - M) + sum_j e_j (serial).
  const float sink = a.sinks[h];
  float m = sink;
  for (int j = tid; j < n; j += kThreads) m = fmaxf(m, sc[j]);
  const float M = block_max(m, red);
  for (int j = tid; j < n; j += kThreads) sc[j] = exp_f32(__fsub_rn(sc[j], M));
  __syncthreads();
  if (tid == 0) {
    float den = exp_f32(__fsub_rn(sink, M));
    for (int j = 0; j < n; ++j) den = __fadd_rn(den, sc[j]);
    den_sh = den;
  }
  __syncthreads();
  const float den = den_sh;
  for (int j = tid; j < n; j += kThreads) sc[j] = __fdiv_rn(sc[j], den);
  __syncthreads();

  // out[i] = sum_j p_j k_j[i], candidate order; dims tid and tid + 256 (head_dim <= 512).
  float* o = a.out + (t * a.n_head + h) * hd;
  const int i0 = tid, i1 = tid + kThreads;
  const bool has0 = i0 < hd, has1 = i1 < hd;
  float acc0 = 0.0f, acc1 = 0.0f;
  for (int j = 0; j < n; ++j) {
    const float p = sc[j];
    const float* k = a.kv + static_cast<int64_t>(ci[j]) * hd;
    if (has0) acc0 = __fadd_rn(acc0, __fmul_rn(p, __ldg(k + i0)));
    if (has1) acc1 = __fadd_rn(acc1, __fmul_rn(p, __ldg(k + i1)));
  }
  if (has0) o[i0] = acc0;
  if (has1) o[i1] = acc1;
}

// The online-softmax kernel. Grid (ceil(n_head/8), n_tok), kThreads; warp w <-> head 8*bx + w.
// Dynamic shared memory: kRowsPerStage staged rows of head_dim.
__global__ void __launch_bounds__(kThreads) attn_online_kernel(AttnArgs a) {
  extern __shared__ float4 smem4[];
  float* rows = reinterpret_cast<float*>(smem4);
  const int hd = a.head_dim;
  const int nk = hd / kWarp;
  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp;
  const int h = blockIdx.x * kHeadsPerBlock + warp;
  const bool active = h < a.n_head;  // warp-uniform
  const int64_t t = blockIdx.y;
  const int n = a.n_cand[t];
  const int32_t* cand = a.cand + t * a.max_cand;

  float qr[kMaxLanes], acc[kMaxLanes];
  const float* q = a.q + (t * a.n_head + (active ? h : 0)) * hd;
#pragma unroll
  for (int k = 0; k < kMaxLanes; ++k) {
    qr[k] = (active && k < nk) ? q[lane + kWarp * k] : 0.0f;
    acc[k] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int j0 = 0; j0 < n; j0 += kRowsPerStage) {
    const int cnt = min(kRowsPerStage, n - j0);
    __syncthreads();  // the previous stage has been consumed
    for (int e = tid; e < cnt * hd; e += kThreads) {
      const int r = e / hd, i = e % hd;
      rows[r * hd + i] = __ldg(a.kv + static_cast<int64_t>(cand[j0 + r]) * hd + i);
    }
    __syncthreads();
    if (!active) continue;
    for (int r = 0; r < cnt; ++r) {
      const float* row = rows + r * hd;
      float part = 0.0f;  // lane_dot(row, q, hd, 32): lane l sums l, l+32, ... in order
#pragma unroll
      for (int k = 0; k < kMaxLanes; ++k) {
        if (k < nk) part = __fadd_rn(part, __fmul_rn(row[lane + kWarp * k], qr[k]));
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        part = __fadd_rn(part, __shfl_down_sync(kFullMask, part, off));
      }
      const float s = __fmul_rn(__shfl_sync(kFullMask, part, 0), a.scale);
      if (s > m) {
        const float rr = exp_f32(__fsub_rn(m, s));  // exp(-inf) = 0 on the first row
        l = __fmul_rn(l, rr);
#pragma unroll
        for (int k = 0; k < kMaxLanes; ++k) acc[k] = __fmul_rn(acc[k], rr);
        m = s;
      }
      const float p = exp_f32(__fsub_rn(s, m));
      l = __fadd_rn(l, p);
#pragma unroll
      for (int k = 0; k < kMaxLanes; ++k) {
        if (k < nk) acc[k] = __fadd_rn(acc[k], __fmul_rn(p, row[lane + kWarp * k]));
      }
    }
  }
  if (!active) return;
  const float sink = a.sinks[h];
  const float m2 = fmaxf(m, sink);
  const float rr = exp_f32(__fsub_rn(m, m2));
  l = __fadd_rn(__fmul_rn(l, rr), exp_f32(__fsub_rn(sink, m2)));
  float* o = a.out + (t * a.n_head + h) * hd;
#pragma unroll
  for (int k = 0; k < kMaxLanes; ++k) {
    if (k < nk) o[lane + kWarp * k] = __fdiv_rn(__fmul_rn(acc[k], rr), l);
  }
}

template <class Kernel>
void launch_with_smem(Kernel kernel, dim3 grid, size_t smem, const AttnArgs& a, const char* what) {
  if (smem > static_cast<size_t>(kMaxSmem)) {
    fail(std::string(what) + ": needs " + std::to_string(smem) +
         " bytes of shared memory (max_cand = " + std::to_string(a.max_cand) + ", head_dim = " +
         std::to_string(a.head_dim) + "); the limit is " + std::to_string(kMaxSmem));
  }
  if (smem > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem)),
          (std::string(what) + ": cudaFuncSetAttribute").c_str());
  }
  kernel<<<grid, kThreads, smem>>>(a);
  check(cudaGetLastError(), (std::string(what) + " launch").c_str());
}

}  // namespace

const char* variant_name(AttnVariant v) {
  switch (v) {
    case AttnVariant::dense_serial_dot: return "attn_dense__serial_dot";
    case AttnVariant::indexed_scalar: return "attn_indexed__scalar";
    case AttnVariant::dense_lane8_dot: return "attn_dense__lane8_dot";
    case AttnVariant::indexed_heads8_online: return "attn_indexed__heads8_online";
  }
  return "attn__unknown";
}

void attention(const AttnArgs& a, AttnVariant v) {
  const char* what = variant_name(v);
  if (a.n_tok < 0 || a.n_tok > 65535 || a.n_head <= 0 || a.head_dim <= 0 ||
      a.head_dim % kWarp != 0 || a.head_dim > kMaxHeadDim || a.max_cand < 0) {
    fail(std::string(what) + ": bad shape n_tok = " + std::to_string(a.n_tok) + " (<= 65535), " +
         "n_head = " + std::to_string(a.n_head) + ", head_dim = " + std::to_string(a.head_dim) +
         " (a multiple of 32, <= 512), max_cand = " + std::to_string(a.max_cand));
  }
  if (a.n_tok == 0) return;
  if (v == AttnVariant::indexed_heads8_online) {
    const dim3 grid((a.n_head + kHeadsPerBlock - 1) / kHeadsPerBlock,
                    static_cast<unsigned>(a.n_tok));
    const size_t smem = sizeof(float) * kRowsPerStage * a.head_dim;
    launch_with_smem(attn_online_kernel, grid, smem, a, what);
    return;
  }
  const dim3 grid(a.n_head, static_cast<unsigned>(a.n_tok));
  const size_t smem = sizeof(float) * (a.head_dim + 2 * static_cast<size_t>(a.max_cand));
  if (v == AttnVariant::dense_lane8_dot) {
    launch_with_smem(attn_materialised_kernel<true>, grid, smem, a, what);
  } else {
    launch_with_smem(attn_materialised_kernel<false>, grid, smem, a, what);
  }
}

}  // namespace ds4::cuda
