// Compressed KV streams on the GPU: the softmax pool over a window of ratio tokens (ds4-model.md
// §4.5; ds4-dispatch.md §1.2 row C1). The RMSNorm, RoPE and storage numerics after the pool are
// the norm / rope / numerics ops. Host API: engine/backend/cuda/ops_cuda.h.
// Check: tests/unit/cuda_ops_test --gtest_filter='*compressor*'.
//
// Variants:
//   compressor_pool__update   (decode; ds4's compressor_update_pool_kernel) one block per token:
//       stores the token's (a, g) row in the state, and at a window end pools every channel
//       (one thread per channel): M = fmax over the candidates, den = sum_c exp(g_c - M) in
//       candidate order, c = sum_c (exp(g_c - M)/den) * a_c in candidate order; ratio 4 then
//       moves rows 4..7 to 0..3. Candidates as compressor_push_ref: ratio 128: the 128 rows;
//       ratio 4: first-half columns of state rows 0..3 (previous window), then second-half
//       columns of rows 4..7. Same operation order as compressor_push_ref (differs by exp
//       rounding only).
//   compressor_pool__prefill  (aligned batches; ds4's compressor_prefill_pool_kernel) one block
//       per window reads the candidates straight from the batch's (A, G) rows (the previous
//       window of a ratio-4 stream from the state for the batch's first window), with the same
//       per-channel code; a second kernel leaves the state as the per-token path would. Per
//       emitted row bit-equal to compressor_pool__update.
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float exp_f32(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

// Pools one channel over n candidates; cand(c, &score, &kv) yields candidate c.
template <class Cand>
__device__ __forceinline__ float pool_channel(int n, const Cand& cand) {
  float m = -INFINITY;
  for (int c = 0; c < n; ++c) {
    float s, v;
    cand(c, &s, &v);
    m = fmaxf(m, s);
  }
  float den = 0.0f;
  for (int c = 0; c < n; ++c) {
    float s, v;
    cand(c, &s, &v);
    den = __fadd_rn(den, exp_f32(__fsub_rn(s, m)));
  }
  float acc = 0.0f;
  for (int c = 0; c < n; ++c) {
    float s, v;
    cand(c, &s, &v);
    acc = __fadd_rn(acc, __fmul_rn(__fdiv_rn(exp_f32(__fsub_rn(s, m)), den), v));
  }
  return acc;
}

// State kv, score: (rows, W); a, g: (W); pooled: (hd). One block of kThreads.
__global__ void __launch_bounds__(kThreads)
    compressor_update_kernel(float* __restrict__ kv, float* __restrict__ score,
                             const float* __restrict__ a, const float* __restrict__ g, int ratio,
                             int hd, int row, bool emit, float* __restrict__ pooled) {
  const int W = (ratio == 4 ? 2 : 1) * hd;
  for (int i = threadIdx.x; i < W; i += kThreads) {
    kv[row * W + i] = a[i];
    score[row * W + i] = g[i];
  }
  if (!emit) return;  // block-uniform
  __syncthreads();
  for (int j = threadIdx.x; j < hd; j += kThreads) {
    if (ratio == 4) {
      pooled[j] = pool_channel(8, [&](int c, float* s, float* v) {
        const int off = c * W + (c < 4 ? j : hd + j);
        *s = score[off];
        *v = kv[off];
      });
    } else {
      pooled[j] = pool_channel(ratio, [&](int c, float* s, float* v) {
        *s = score[c * W + j];
        *v = kv[c * W + j];
      });
    }
  }
  if (ratio != 4) return;
  __syncthreads();
  for (int i = threadIdx.x; i < 4 * W; i += kThreads) {
    kv[i] = kv[4 * W + i];
    score[i] = score[4 * W + i];
  }
}

// A, G: (n_tok, W) batch rows; state kv, score: (rows, W); pooled: (n_tok/ratio, hd).
// Grid: one block per window w.
__global__ void __launch_bounds__(kThreads)
    compressor_prefill_kernel(const float* __restrict__ kv, const float* __restrict__ score,
                              const float* __restrict__ A, const float* __restrict__ G,
                              int ratio, int hd, float* __restrict__ pooled) {
  const int W = (ratio == 4 ? 2 : 1) * hd;
  const int64_t w = blockIdx.x;
  const int64_t t0 = w * ratio;  // first batch row of window w
  for (int j = threadIdx.x; j < hd; j += kThreads) {
    float r;
    if (ratio == 4) {
      r = pool_channel(8, [&](int c, float* s, float* v) {
        if (c >= 4) {  // current window, second-half columns
          const int64_t off = (t0 + c - 4) * W + hd + j;
          *s = G[off];
          *v = A[off];
        } else if (w == 0) {  // previous window from the state (rows 0..3)
          *s = score[c * W + j];
          *v = kv[c * W + j];
        } else {  // previous window from the batch, first-half columns
          const int64_t off = (t0 - 4 + c) * W + j;
          *s = G[off];
          *v = A[off];
        }
      });
    } else {
      r = pool_channel(ratio, [&](int c, float* s, float* v) {
        const int64_t off = (t0 + c) * W + j;
        *s = G[off];
        *v = A[off];
      });
    }
    pooled[w * hd + j] = r;
  }
}

// Leaves the state as the per-token path would after the batch's last window: ratio 128: rows
// u = 0..127 hold that window's tokens; ratio 4: rows 4..7 hold them and rows 0..3 a copy.
__global__ void compressor_prefill_state_kernel(float* __restrict__ kv, float* __restrict__ score,
                                                const float* __restrict__ A,
                                                const float* __restrict__ G, int ratio, int hd,
                                                int64_t last_t0) {
  const int W = (ratio == 4 ? 2 : 1) * hd;
  const int64_t total = static_cast<int64_t>(ratio) * W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float av = A[last_t0 * W + i], gv = G[last_t0 * W + i];
    if (ratio == 4) {
      kv[4 * W + i] = av;
      score[4 * W + i] = gv;
    }
    kv[i] = av;
    score[i] = gv;
  }
}

void check_state(const CompressorDeviceState& st, const char* what) {
  if ((st.ratio != 4 && st.ratio != 128) || st.head_dim <= 0 || !st.kv || !st.score) {
    fail(std::string(what) + ": bad state (ratio = " + std::to_string(st.ratio) +
         ", head_dim = " + std::to_string(st.head_dim) + ", or null buffers)");
  }
}

}  // namespace

void compressor_state_init(const CompressorDeviceState& st) {
  check_state(st, "compressor_state_init");
  const size_t n = static_cast<size_t>(st.rows()) * st.width();
  const std::vector<float> zeros(n, 0.0f), neg(n, -INFINITY);
  check(cudaMemcpy(st.kv, zeros.data(), n * sizeof(float), cudaMemcpyHostToDevice),
        "compressor_state_init: cudaMemcpy(kv)");
  check(cudaMemcpy(st.score, neg.data(), n * sizeof(float), cudaMemcpyHostToDevice),
        "compressor_state_init: cudaMemcpy(score)");
}

bool compressor_update(const CompressorDeviceState& st, const float* a, const float* g, int64_t p,
                       float* pooled) {
  check_state(st, "compressor_pool__update");
  if (p < 0) fail("compressor_pool__update: negative position " + std::to_string(p));
  const int u = static_cast<int>(p % st.ratio);
  const int row = st.ratio == 4 ? 4 + u : u;
  const bool emit = (p + 1) % st.ratio == 0;
  compressor_update_kernel<<<1, kThreads>>>(st.kv, st.score, a, g, st.ratio, st.head_dim, row,
                                            emit, pooled);
  check(cudaGetLastError(), "compressor_pool__update launch");
  return emit;
}

void compressor_prefill(const CompressorDeviceState& st, const float* A, const float* G,
                        int64_t pos0, int64_t n_tok, float* pooled) {
  check_state(st, "compressor_pool__prefill");
  if (pos0 < 0 || n_tok <= 0 || pos0 % st.ratio != 0 || n_tok % st.ratio != 0) {
    fail("compressor_pool__prefill: the batch must be window-aligned (pos0 = " +
         std::to_string(pos0) + ", n_tok = " + std::to_string(n_tok) +
         ", ratio = " + std::to_string(st.ratio) + "); use compressor_pool__update per token");
  }
  const int64_t n_win = n_tok / st.ratio;
  if (n_win > 2147483647) fail("compressor_pool__prefill: too many windows");
  compressor_prefill_kernel<<<static_cast<unsigned>(n_win), kThreads>>>(
      st.kv, st.score, A, G, st.ratio, st.head_dim, pooled);
  check(cudaGetLastError(), "compressor_pool__prefill launch");
  // Stream order: the pool above has read the state before this overwrites it.
  compressor_prefill_state_kernel<<<64, kThreads>>>(st.kv, st.score, A, G, st.ratio, st.head_dim,
                                                    (n_win - 1) * st.ratio);
  check(cudaGetLastError(), "compressor_pool__prefill (state) launch");
}

}  // namespace ds4::cuda
