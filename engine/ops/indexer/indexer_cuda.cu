// Lightning-indexer scores and top-k on the GPU (ds4-model.md §4.6; ds4-dispatch.md §1.2 rows
// I1, I2, I3). Host API and argument shapes: engine/backend/cuda/ops_cuda.h (IndexerArgs).
// Check: tests/unit/cuda_ops_test --gtest_filter='*indexer_scores*:*topk*'.
//
// Score variants (one token's row c: score = sum over heads of relu(q_h . K_c) * w_h, scaled):
//   indexer_scores__direct_one  (I1 exact; the N=1 kernel) 256 threads = 4 rows x 64 head slots;
//       q in shared memory (row stride head_dim + 1: conflict-free across heads); thread
//       (row, head) does the F32 dot in index order; term_h = (relu(dot) * qk_scale) *
//       (w_h * w_scale); one thread per row adds the terms over heads ascending. This is
//       indexer_scores_ref's operation order: bitwise. ds4's direct-one kernel (float4 dot,
//       warp shuffle, 4-head partial sums) is a different order; ours is the CPU's.
//   indexer_scores__scalar      (I1 fast without WMMA) one warp per (row, head); lane l holds
//       the products of elements l, l+32, l+64, l+96; the halving tree of indexer_scores_scalar
//       (width = next power of two >= head_dim, zero padded): in-lane steps for offsets >= 32,
//       __shfl_down for 16..1; relu(dot) * w_h per head; one thread per row sums heads
//       ascending, then * scale (1/sqrt(head_dim)/sqrt(n_head)). Bitwise against
//       indexer_scores_scalar.
//   indexer_scores__wmma_f16    (I1 fast) q and K rounded to F16 (round to nearest even) in
//       shared memory; one warp per 16 heads, a 16x16 F32 accumulator tile (16 heads x 16 rows)
//       built by head_dim/16 HMMA 16x16x16 steps in k order; tiles stored to shared memory;
//       one thread per row sums relu(dot) * w_h over heads ascending, then * scale. Within a
//       16-wide chunk the tensor core's addition order is the hardware's: nmse tier against
//       indexer_scores_wmma.
// Top-k variants (topk__score_order, topk__resort_ascending): one 1024-thread block per token.
//   Keys (~orderable(score) << 32 | index) sort ascending = score descending, index ascending
//   (ties to the lower index; -0.0 folded to +0.0 so that it ties with +0.0 as in the CPU
//   comparator). A 4096-key shared buffer keeps the best k in its head and takes 4096 - k new
//   scores per pass; each pass is a full bitonic sort. Deterministic by construction.
//   resort_ascending then bitonic-sorts the selected indices. Equal to topk_score_order_ref /
//   topk_ascending_ref (bitwise: identical index lists).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxHeads = 64;
constexpr int kMaxHeadDim = 128;

// ---- direct_one ----
constexpr int kDirectThreads = 256;
constexpr int kDirectRowsPerStep = kDirectThreads / kMaxHeads;  // 4
constexpr int kDirectRowsPerBlock = 64;

// ---- scalar ----
constexpr int kScalarThreads = 256;
constexpr int kScalarWarps = kScalarThreads / kWarp;  // 8
constexpr int kScalarRowsPerBlock = 16;

// ---- wmma ----
constexpr int kWmmaRows = 16;  // rows (keys) per block = one N tile

// ---- top-k ----
constexpr int kTopkThreads = 1024;
constexpr int kTopkBuf = 4096;  // keys in shared memory (32 KiB)
constexpr uint64_t kKeyMax = ~uint64_t{0};

// The score of a row the token cannot see yet.
__device__ __forceinline__ float neg_inf() { return -INFINITY; }

// =============================================================================================
// indexer_scores__direct_one
// =============================================================================================

// Grid (ceil(n_rows / 64), n_tok), kDirectThreads. Dynamic shared memory:
// q (n_head x (head_dim+1)) | K rows (4 x head_dim) | terms (4 x 64).
__global__ void __launch_bounds__(kDirectThreads)
    indexer_direct_one_kernel(IndexerArgs a, float qk_scale, float w_scale) {
  extern __shared__ float4 smem4[];
  const int hd = a.head_dim, nh = a.n_head, ldq = hd + 1;
  float* qs = reinterpret_cast<float*>(smem4);
  float* ks = qs + nh * ldq;
  float* terms = ks + kDirectRowsPerStep * hd;
  const int64_t t = blockIdx.y;
  const int tid = threadIdx.x;
  const int r = tid / kMaxHeads, h = tid % kMaxHeads;
  const int64_t nv = min(static_cast<int64_t>(a.n_visible[t]), a.n_rows);
  const float* q = a.q + t * nh * hd;
  for (int e = tid; e < nh * hd; e += kDirectThreads) qs[(e / hd) * ldq + e % hd] = q[e];
  const float wh = h < nh ? __fmul_rn(a.w[t * nh + h], w_scale) : 0.0f;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kDirectRowsPerBlock;
  float* out = a.scores + t * a.n_rows;
  for (int step = 0; step < kDirectRowsPerBlock / kDirectRowsPerStep; ++step) {
    const int64_t base = row0 + step * kDirectRowsPerStep;
    if (base >= a.n_rows) break;  // block-uniform
    __syncthreads();  // q loaded / previous step's ks and terms consumed
    for (int e = tid; e < kDirectRowsPerStep * hd; e += kDirectThreads) {
      const int64_t c = base + e / hd;
      ks[e] = c < nv ? a.K[c * hd + e % hd] : 0.0f;
    }
    __syncthreads();
    const int64_t c = base + r;
    if (h < nh && c < nv) {
      const float* qh = qs + h * ldq;
      const float* kr = ks + r * hd;
      float dot = 0.0f;  // dot_f32_f32(q_h, K_c): index order
      for (int i = 0; i < hd; ++i) dot = __fadd_rn(dot, __fmul_rn(qh[i], kr[i]));
      terms[r * kMaxHeads + h] = __fmul_rn(__fmul_rn(fmaxf(dot, 0.0f), qk_scale), wh);
    }
    __syncthreads();
    if (h == 0 && c < a.n_rows) {
      float acc = 0.0f;
      if (c < nv) {
        for (int hh = 0; hh < nh; ++hh) acc = __fadd_rn(acc, terms[r * kMaxHeads + hh]);
      } else {
        acc = neg_inf();
      }
      out[c] = acc;
    }
  }
}

// =============================================================================================
// indexer_scores__scalar
// =============================================================================================

// Grid (ceil(n_rows / 16), n_tok), kScalarThreads. Dynamic shared memory:
// q (n_head x head_dim) | terms (16 x 64).
__global__ void __launch_bounds__(kScalarThreads)
    indexer_scalar_kernel(IndexerArgs a, int width, float scale) {
  extern __shared__ float4 smem4[];
  const int hd = a.head_dim, nh = a.n_head;
  float* qs = reinterpret_cast<float*>(smem4);
  float* terms = qs + nh * hd;
  const int64_t t = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / kWarp, lane = tid % kWarp;
  const int64_t nv = min(static_cast<int64_t>(a.n_visible[t]), a.n_rows);
  const float* q = a.q + t * nh * hd;
  for (int e = tid; e < nh * hd; e += kScalarThreads) qs[e] = q[e];
  __syncthreads();
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kScalarRowsPerBlock;
  // Work item (row r, head h) for warp-strided items; every warp runs whole items.
  for (int item = warp; item < kScalarRowsPerBlock * nh; item += kScalarWarps) {
    const int r = item / nh, h = item % nh;
    const int64_t c = row0 + r;
    if (c >= nv) continue;  // warp-uniform
    const float* k = a.K + c * hd;
    const float* qh = qs + h * hd;
    float v[kMaxHeadDim / kWarp];
#pragma unroll
    for (int kk = 0; kk < kMaxHeadDim / kWarp; ++kk) {
      const int i = lane + kWarp * kk;
      v[kk] = i < hd ? __fmul_rn(qh[i], __ldg(k + i)) : 0.0f;
    }
    // Halving tree over `width` entries: part[i] += part[i + off] for i < off.
    for (int off = width / 2; off >= kWarp; off /= 2) {
      const int kw = off / kWarp;
#pragma unroll
      for (int kk = 0; kk < kMaxHeadDim / kWarp; ++kk) {
        if (kk < kw && kk + kw < kMaxHeadDim / kWarp) v[kk] = __fadd_rn(v[kk], v[kk + kw]);
      }
    }
    float part = v[0];
    for (int off = min(width / 2, kWarp / 2); off > 0; off /= 2) {
      part = __fadd_rn(part, __shfl_down_sync(kFullMask, part, off));
    }
    if (lane == 0) terms[r * kMaxHeads + h] = __fmul_rn(fmaxf(part, 0.0f), a.w[t * nh + h]);
  }
  __syncthreads();
  if (tid < kScalarRowsPerBlock) {
    const int64_t c = row0 + tid;
    if (c < a.n_rows) {
      float acc = 0.0f;
      if (c < nv) {
        for (int h = 0; h < nh; ++h) acc = __fadd_rn(acc, terms[tid * kMaxHeads + h]);
        acc = __fmul_rn(acc, scale);
      } else {
        acc = neg_inf();
      }
      a.scores[t * a.n_rows + c] = acc;
    }
  }
}

// =============================================================================================
// indexer_scores__wmma_f16
// =============================================================================================

// Grid (ceil(n_rows / 16), n_tok), 32 * n_head_pad/16 threads. Dynamic shared memory (32-byte
// aligned pieces): Qh (n_head_pad x ld) half | Kh (16 x ld) half | D (n_head_pad x 16) F32,
// ld = head_dim + 8 halves.
__global__ void indexer_wmma_kernel(IndexerArgs a, int n_head_pad, float scale) {
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem_raw[];  // WMMA pointers: 32-byte aligned
  const int hd = a.head_dim, nh = a.n_head, ld = hd + 8;
  __half* Qh = reinterpret_cast<__half*>(smem_raw);
  __half* Kh = Qh + n_head_pad * ld;
  float* D = reinterpret_cast<float*>(Kh + kWmmaRows * ld);
  const int64_t t = blockIdx.y;
  const int tid = threadIdx.x, nthreads = blockDim.x, warp = tid / kWarp;
  const int64_t nv = min(static_cast<int64_t>(a.n_visible[t]), a.n_rows);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kWmmaRows;
  const float* q = a.q + t * nh * hd;
  for (int e = tid; e < n_head_pad * hd; e += nthreads) {
    const int h = e / hd, i = e % hd;
    Qh[h * ld + i] = __float2half_rn(h < nh ? q[h * hd + i] : 0.0f);
  }
  for (int e = tid; e < kWmmaRows * hd; e += nthreads) {
    const int r = e / hd, i = e % hd;
    const int64_t c = row0 + r;
    Kh[r * ld + i] = __float2half_rn(c < nv ? a.K[c * hd + i] : 0.0f);
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 0.0f);
  for (int k0 = 0; k0 < hd; k0 += 16) {
    wmma::load_matrix_sync(fa, Qh + warp * 16 * ld + k0, ld);  // heads 16w.., dims k0..
    wmma::load_matrix_sync(fb, Kh + k0, ld);                   // (dim, row) = Kh[row*ld + dim]
    wmma::mma_sync(fc, fa, fb, fc);
  }
  wmma::store_matrix_sync(D + warp * 16 * kWmmaRows, fc, kWmmaRows, wmma::mem_row_major);
  __syncthreads();
  if (tid < kWmmaRows) {
    const int64_t c = row0 + tid;
    if (c < a.n_rows) {
      float acc = 0.0f;
      if (c < nv) {
        for (int h = 0; h < nh; ++h) {
          acc = __fadd_rn(acc, __fmul_rn(fmaxf(D[h * kWmmaRows + tid], 0.0f), a.w[t * nh + h]));
        }
        acc = __fmul_rn(acc, scale);
      } else {
        acc = neg_inf();
      }
      a.scores[t * a.n_rows + c] = acc;
    }
  }
}

// =============================================================================================
// top-k
// =============================================================================================

// Ascending key order = score descending, then index ascending.
__device__ __forceinline__ uint64_t topk_key(float s, int64_t idx) {
  uint32_t u = __float_as_uint(s);
  if ((u & 0x7fffffffu) == 0) u = 0;  // -0.0 ties with +0.0
  const uint32_t ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // increasing in s
  return (static_cast<uint64_t>(~ord) << 32) | static_cast<uint32_t>(idx);
}

// Ascending bitonic sort of buf[0..n), n a power of two; all threads of the block call it.
__device__ void bitonic_sort(uint64_t* buf, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const int i = (t / stride) * 2 * stride + (t % stride);
        const int j = i + stride;
        const bool up = (i & size) == 0;
        const uint64_t x = buf[i], y = buf[j];
        if ((x > y) == up) {
          buf[i] = y;
          buf[j] = x;
        }
      }
      __syncthreads();
    }
  }
}

// scores: (n_tok, n_rows); idx: (n_tok, k); count: (n_tok). Grid n_tok, kTopkThreads.
__global__ void __launch_bounds__(kTopkThreads)
    topk_kernel(const float* __restrict__ scores, const int32_t* __restrict__ n_visible,
                int64_t n_rows, int k, int k_pow2, int32_t* __restrict__ idx,
                int32_t* __restrict__ count, bool ascending) {
  __shared__ uint64_t buf[kTopkBuf];
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x;
  int64_t nv = min(static_cast<int64_t>(n_visible[t]), n_rows);
  if (nv < 0) nv = 0;
  const float* s = scores + t * n_rows;
  const int chunk = kTopkBuf - k;
  for (int i = tid; i < k; i += kTopkThreads) buf[i] = kKeyMax;
  for (int64_t base = 0; base < nv; base += chunk) {
    for (int i = tid; i < chunk; i += kTopkThreads) {
      const int64_t c = base + i;
      buf[k + i] = c < nv ? topk_key(s[c], c) : kKeyMax;
    }
    __syncthreads();
    bitonic_sort(buf, kTopkBuf);  // the best k are now buf[0..k)
  }
  const int cnt = static_cast<int>(min(static_cast<int64_t>(k), nv));
  if (ascending && cnt > 1) {
    __syncthreads();
    for (int i = tid; i < k_pow2; i += kTopkThreads) {
      buf[i] = i < cnt ? static_cast<uint64_t>(static_cast<uint32_t>(buf[i])) : kKeyMax;
    }
    __syncthreads();
    bitonic_sort(buf, k_pow2);
  }
  __syncthreads();
  for (int i = tid; i < k; i += kTopkThreads) {
    idx[t * k + i] = i < cnt ? static_cast<int32_t>(static_cast<uint32_t>(buf[i])) : -1;
  }
  if (tid == 0) count[t] = cnt;
}

void check_indexer(const IndexerArgs& a, const char* what) {
  if (a.n_tok < 0 || a.n_tok > 65535 || a.n_rows < 0 || a.n_rows > 2147483647 ||
      a.n_head <= 0 || a.n_head > kMaxHeads || a.head_dim <= 0 || a.head_dim > kMaxHeadDim) {
    fail(std::string(what) + ": bad shape n_tok = " + std::to_string(a.n_tok) +
         " (<= 65535), n_rows = " + std::to_string(a.n_rows) + ", n_head = " +
         std::to_string(a.n_head) + " (<= 64), head_dim = " + std::to_string(a.head_dim) +
         " (<= 128)");
  }
}

}  // namespace

const char* variant_name(IndexerVariant v) {
  switch (v) {
    case IndexerVariant::direct_one: return "indexer_scores__direct_one";
    case IndexerVariant::scalar: return "indexer_scores__scalar";
    case IndexerVariant::wmma_f16: return "indexer_scores__wmma_f16";
  }
  return "indexer_scores__unknown";
}

const char* variant_name(TopkVariant v) {
  return v == TopkVariant::score_order ? "topk__score_order" : "topk__resort_ascending";
}

void indexer_scores(const IndexerArgs& a, IndexerVariant v) {
  const char* what = variant_name(v);
  check_indexer(a, what);
  if (a.n_tok == 0 || a.n_rows == 0) return;
  const int hd = a.head_dim, nh = a.n_head;
  // The CPU's scale factors, computed with the same host float operations.
  const float qk_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float w_scale = 1.0f / std::sqrt(static_cast<float>(nh));
  const float combined = 1.0f / std::sqrt(static_cast<float>(hd)) / std::sqrt(static_cast<float>(nh));
  switch (v) {
    case IndexerVariant::direct_one: {
      const dim3 grid(static_cast<unsigned>((a.n_rows + kDirectRowsPerBlock - 1) / kDirectRowsPerBlock),
                      static_cast<unsigned>(a.n_tok));
      const size_t smem =
          sizeof(float) * (nh * (hd + 1) + kDirectRowsPerStep * hd + kDirectRowsPerStep * kMaxHeads);
      indexer_direct_one_kernel<<<grid, kDirectThreads, smem>>>(a, qk_scale, w_scale);
      break;
    }
    case IndexerVariant::scalar: {
      int width = 1;
      while (width < hd) width *= 2;
      const dim3 grid(static_cast<unsigned>((a.n_rows + kScalarRowsPerBlock - 1) / kScalarRowsPerBlock),
                      static_cast<unsigned>(a.n_tok));
      const size_t smem = sizeof(float) * (nh * hd + kScalarRowsPerBlock * kMaxHeads);
      indexer_scalar_kernel<<<grid, kScalarThreads, smem>>>(a, width, combined);
      break;
    }
    case IndexerVariant::wmma_f16: {
      if (hd % 16 != 0) {
        fail(std::string(what) + ": head_dim = " + std::to_string(hd) + " is not a multiple of 16");
      }
      const int n_head_pad = (nh + 15) / 16 * 16;
      const int ld = hd + 8;
      const dim3 grid(static_cast<unsigned>((a.n_rows + kWmmaRows - 1) / kWmmaRows),
                      static_cast<unsigned>(a.n_tok));
      const size_t smem = sizeof(__half) * (n_head_pad + kWmmaRows) * ld +
                          sizeof(float) * n_head_pad * kWmmaRows;
      indexer_wmma_kernel<<<grid, kWarp * (n_head_pad / 16), smem>>>(a, n_head_pad, combined);
      break;
    }
  }
  check(cudaGetLastError(), (std::string(what) + " launch").c_str());
}

void topk(const float* scores, const int32_t* n_visible, int64_t n_tok, int64_t n_rows, int k,
          int32_t* idx, int32_t* count, TopkVariant v) {
  const char* what = variant_name(v);
  if (n_tok < 0 || n_tok > 2147483647 || n_rows < 0 || n_rows > 2147483647 || k < 1 ||
      k > kTopkBuf / 2) {
    fail(std::string(what) + ": bad shape n_tok = " + std::to_string(n_tok) + ", n_rows = " +
         std::to_string(n_rows) + ", k = " + std::to_string(k) + " (1..2048)");
  }
  if (n_tok == 0) return;
  int k_pow2 = 1;
  while (k_pow2 < k) k_pow2 *= 2;
  topk_kernel<<<static_cast<unsigned>(n_tok), kTopkThreads>>>(
      scores, n_visible, n_rows, k, k_pow2, idx, count, v == TopkVariant::resort_ascending);
  check(cudaGetLastError(), (std::string(what) + " launch").c_str());
}

}  // namespace ds4::cuda
