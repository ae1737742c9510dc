// Hyper-connection row ops on the GPU (ds4-model.md §4.2, §4.3, §4.8; ds4-dispatch.md §1.2
// rows H1 and X). The mixer projection m = fn RMSNorm0(flat X) is a matmul (not here); these are
// the row-wise parts around it. Host API: engine/backend/cuda/ops_cuda.h.
// Check: tests/unit/cuda_ops_test --gtest_filter='*hc_*'.
//
// Variants (all row-independent: one kernel for N=1 and N rows, per row bit-equal):
//   hc_split__sinkhorn_serial  one thread per row runs hc_split_ref's exact operation sequence
//       (sigmoids, row softmax + eps, column normalisation, iters-1 row/column rounds; every
//       denominator + eps), F32 with no FMA. exp = float(exp(double)), so it differs from the
//       CPU (glibc expf) only where expf is misrounded: tier ulp<=16 (derivation in the test).
//   hc_collapse__rows          one thread per output element: acc = 0; acc += w_i X_i (i
//       ascending). Bitwise against hc_collapse_ref.
//   hc_post__rows              one thread per output element: acc = post_b y; acc += C[a][b] X_a
//       (a ascending). Bitwise against hc_post_ref.
//   hc_head_weights__rows      one thread per weight: sigmoid(scale*m + base) + eps, as
//       hc_head_weights_ref (ulp tier for the exp).
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxHc = 8;

__device__ __forceinline__ float exp_f32(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

// hc_ref's sigmoidf: 1 / (1 + exp(-x)).
__device__ __forceinline__ float sigmoid_f32(float x) {
  return __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_f32(-x)));
}

// m: (n_rows, (2+n)*n); scale: (3); base: ((2+n)*n); pre, post: (n_rows, n); comb: (n_rows, n*n).
__global__ void __launch_bounds__(kThreads)
    hc_split_kernel(const float* __restrict__ m_all, const float* __restrict__ scale,
                    const float* __restrict__ base, float* __restrict__ pre,
                    float* __restrict__ post, float* __restrict__ comb, int64_t n_rows, int n,
                    int iters, float eps) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= n_rows) return;
  const float* m = m_all + r * (2 + n) * n;
  const float s0 = scale[0], s1 = scale[1], s2 = scale[2];
  for (int i = 0; i < n; ++i) {
    pre[r * n + i] = __fadd_rn(sigmoid_f32(__fadd_rn(__fmul_rn(m[i], s0), base[i])), eps);
    post[r * n + i] =
        __fmul_rn(2.0f, sigmoid_f32(__fadd_rn(__fmul_rn(m[n + i], s1), base[n + i])));
  }
  float C[kMaxHc * kMaxHc];
  const float* mc = m + 2 * n;
  const float* bc = base + 2 * n;
  for (int a = 0; a < n; ++a) {  // row softmax over b, then + eps
    float mx = -INFINITY;
    for (int b = 0; b < n; ++b) {
      C[a * n + b] = __fadd_rn(__fmul_rn(mc[a * n + b], s2), bc[a * n + b]);
      mx = fmaxf(mx, C[a * n + b]);
    }
    float sum = 0.0f;
    for (int b = 0; b < n; ++b) {
      C[a * n + b] = exp_f32(__fsub_rn(C[a * n + b], mx));
      sum = __fadd_rn(sum, C[a * n + b]);
    }
    for (int b = 0; b < n; ++b) C[a * n + b] = __fadd_rn(__fdiv_rn(C[a * n + b], sum), eps);
  }
  for (int it = 0; it < iters; ++it) {
    if (it > 0) {  // rows (rounds 1..iters-1 start with a row normalisation)
      for (int a = 0; a < n; ++a) {
        float s = 0.0f;
        for (int b = 0; b < n; ++b) s = __fadd_rn(s, C[a * n + b]);
        const float den = __fadd_rn(s, eps);
        for (int b = 0; b < n; ++b) C[a * n + b] = __fdiv_rn(C[a * n + b], den);
      }
    }
    for (int b = 0; b < n; ++b) {  // columns
      float s = 0.0f;
      for (int a = 0; a < n; ++a) s = __fadd_rn(s, C[a * n + b]);
      const float den = __fadd_rn(s, eps);
      for (int a = 0; a < n; ++a) C[a * n + b] = __fdiv_rn(C[a * n + b], den);
    }
  }
  for (int k = 0; k < n * n; ++k) comb[r * n * n + k] = C[k];
}

// X: (n_rows, n, d); w: (n_rows, n); x: (n_rows, d). Thread per (row, j).
__global__ void __launch_bounds__(kThreads)
    hc_collapse_kernel(const float* __restrict__ X, const float* __restrict__ w,
                       float* __restrict__ x, int64_t total, int n, int64_t d) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (g >= total) return;
  const int64_t r = g / d, j = g % d;
  const float* Xr = X + r * n * d;
  float acc = 0.0f;
  for (int i = 0; i < n; ++i) acc = __fadd_rn(acc, __fmul_rn(w[r * n + i], Xr[i * d + j]));
  x[g] = acc;
}

// X, X_out: (n_rows, n, d); y: (n_rows, d); post: (n_rows, n); comb: (n_rows, n*n).
// Thread per (row, b, j).
__global__ void __launch_bounds__(kThreads)
    hc_post_kernel(const float* __restrict__ X, const float* __restrict__ y,
                   const float* __restrict__ post, const float* __restrict__ comb,
                   float* __restrict__ X_out, int64_t total, int n, int64_t d) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (g >= total) return;
  const int64_t j = g % d;
  const int64_t rb = g / d;
  const int b = static_cast<int>(rb % n);
  const int64_t r = rb / n;
  const float* Xr = X + r * n * d;
  const float* C = comb + r * n * n;
  float acc = __fmul_rn(post[r * n + b], y[r * d + j]);
  for (int a = 0; a < n; ++a) acc = __fadd_rn(acc, __fmul_rn(C[a * n + b], Xr[a * d + j]));
  X_out[g] = acc;
}

// m, w: (n_rows, n); base: (n).
__global__ void __launch_bounds__(kThreads)
    hc_head_weights_kernel(const float* __restrict__ m, float scale,
                           const float* __restrict__ base, float* __restrict__ w, int64_t total,
                           int n, float eps) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (g >= total) return;
  const int i = static_cast<int>(g % n);
  w[g] = __fadd_rn(sigmoid_f32(__fadd_rn(__fmul_rn(m[g], scale), base[i])), eps);
}

unsigned grid_for(int64_t total, const char* what) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  if (blocks > 2147483647) fail(std::string(what) + ": too many elements");
  return static_cast<unsigned>(blocks);
}

void check_hc(int64_t n_rows, int n_hc, int64_t d, const char* what) {
  if (n_rows < 0 || n_hc <= 0 || n_hc > kMaxHc || d <= 0) {
    fail(std::string(what) + ": bad shape n_rows = " + std::to_string(n_rows) + ", n_hc = " +
         std::to_string(n_hc) + " (1..8), d = " + std::to_string(d));
  }
}

}  // namespace

void hc_split(const float* m, const float* scale, const float* base, float* pre, float* post,
              float* comb, int64_t n_rows, int n_hc, int iters, float hc_eps) {
  check_hc(n_rows, n_hc, 1, "hc_split__sinkhorn_serial");
  if (iters < 1) fail("hc_split__sinkhorn_serial: iters = " + std::to_string(iters) + " < 1");
  if (n_rows == 0) return;
  hc_split_kernel<<<grid_for(n_rows, "hc_split__sinkhorn_serial"), kThreads>>>(
      m, scale, base, pre, post, comb, n_rows, n_hc, iters, hc_eps);
  check(cudaGetLastError(), "hc_split__sinkhorn_serial launch");
}

void hc_collapse(const float* X, const float* w, float* x, int64_t n_rows, int n_hc, int64_t d) {
  check_hc(n_rows, n_hc, d, "hc_collapse__rows");
  if (n_rows == 0) return;
  const int64_t total = n_rows * d;
  hc_collapse_kernel<<<grid_for(total, "hc_collapse__rows"), kThreads>>>(X, w, x, total, n_hc, d);
  check(cudaGetLastError(), "hc_collapse__rows launch");
}

void hc_post(const float* X, const float* y, const float* post, const float* comb, float* X_out,
             int64_t n_rows, int n_hc, int64_t d) {
  check_hc(n_rows, n_hc, d, "hc_post__rows");
  if (n_rows == 0) return;
  const int64_t total = n_rows * n_hc * d;
  hc_post_kernel<<<grid_for(total, "hc_post__rows"), kThreads>>>(X, y, post, comb, X_out, total,
                                                                 n_hc, d);
  check(cudaGetLastError(), "hc_post__rows launch");
}

void hc_head_weights(const float* m, float scale, const float* base, float* w, int64_t n_rows,
                     int n_hc, float hc_eps) {
  check_hc(n_rows, n_hc, 1, "hc_head_weights__rows");
  if (n_rows == 0) return;
  const int64_t total = n_rows * n_hc;
  hc_head_weights_kernel<<<grid_for(total, "hc_head_weights__rows"), kThreads>>>(
      m, scale, base, w, total, n_hc, hc_eps);
  check(cudaGetLastError(), "hc_head_weights__rows launch");
}

}  // namespace ds4::cuda
