// RMSNorm on the GPU, and the fused HC collapse + norm of ds4's N=1 decode (ds4-dispatch.md §1.2
// rows X and H1). Host API and the full variant contracts: engine/backend/cuda/ops_cuda.h.
// Check: tests/unit/cuda_ops_test --gtest_filter='*rmsnorm*:*hc_collapse_norm*'.
//
// Variants:
//   rmsnorm__block256_f64    one 256-thread block per row; sum of squares in double, thread t
//       over i = t, t+256, ... in order, then a 256-wide shared-memory halving tree; scale and
//       output in F32 exactly as rmsnorm_ref. Differs from rmsnorm_ref (serial double sum) only
//       in the order of the double additions: tier ulp<=2. Row-independent, so N=1 and N rows
//       are the same kernel (per row bit-equal).
//   hc_collapse_norm__fused  ds4's N=1 kernel: one block per row computes x_j = sum_i pre_i X_ij
//       for its thread-strided j and accumulates x_j^2 in the same order as
//       rmsnorm__block256_f64, then the same tree. Bit-equal to __split.
//   hc_collapse_norm__split  the batched path: hc_collapse__rows (hc_cuda.cu) then
//       rmsnorm__block256_f64 over the rows.
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kThreads = 256;

// Block-wide sum of the per-thread partials `acc` (double): a halving tree over kThreads
// entries, s[t] += s[t + off] for off = 128, 64, ..., 1. Returns the total to every thread.
// `sh` holds kThreads doubles; the trailing barrier makes it reusable.
__device__ __forceinline__ double block_tree_sum(double acc, double* sh) {
  sh[threadIdx.x] = acc;
  __syncthreads();
#pragma unroll
  for (int off = kThreads / 2; off > 0; off >>= 1) {
    if (threadIdx.x < off) sh[threadIdx.x] = __dadd_rn(sh[threadIdx.x], sh[threadIdx.x + off]);
    __syncthreads();
  }
  const double total = sh[0];
  __syncthreads();
  return total;
}

// 1/sqrt(float(ss/n) + eps) with the CPU's operations (rmsnorm_ref's rms_scale).
__device__ __forceinline__ float rms_scale(double ss, int64_t n, float eps) {
  const float mean = __double2float_rn(__ddiv_rn(ss, static_cast<double>(n)));
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(mean, eps)));
}

// x, y: (n_rows, n) F32, may alias (no __restrict__); w: (n) F32 or nullptr. Grid: n_rows
// blocks of kThreads.
__global__ void __launch_bounds__(kThreads)
    rmsnorm_rows_kernel(const float* x, const float* __restrict__ w, float* y,
                        int64_t n, float eps) {
  __shared__ double sh[kThreads];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * n;
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const double v = xr[i];
    acc = __dadd_rn(acc, __dmul_rn(v, v));  // v*v is exact in double
  }
  // The tree's barriers also order every read of x before the writes of y (in place is safe).
  const float s = rms_scale(block_tree_sum(acc, sh), n, eps);
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float v = __fmul_rn(xr[i], s);
    yr[i] = w ? __fmul_rn(v, w[i]) : v;
  }
}

// X: (n_rows, n_hc, d); pre: (n_rows, n_hc); x, xn: (n_rows, d); w: (d) or nullptr.
__global__ void __launch_bounds__(kThreads)
    hc_collapse_norm_fused_kernel(const float* __restrict__ X, const float* __restrict__ pre,
                                  const float* __restrict__ w, float* __restrict__ x,
                                  float* __restrict__ xn, int n_hc, int64_t d, float eps) {
  __shared__ double sh[kThreads];
  const int64_t r = blockIdx.x;
  const float* Xr = X + r * n_hc * d;
  const float* pr = pre + r * n_hc;
  float* xr = x + r * d;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) {
    float v = 0.0f;  // hc_collapse_ref: acc = 0; acc += w_i * X_i (i ascending)
    for (int i = 0; i < n_hc; ++i) v = __fadd_rn(v, __fmul_rn(pr[i], Xr[i * d + j]));
    xr[j] = v;
    const double dv = v;
    acc = __dadd_rn(acc, __dmul_rn(dv, dv));
  }
  const float s = rms_scale(block_tree_sum(acc, sh), d, eps);
  float* xnr = xn + r * d;
  for (int64_t j = threadIdx.x; j < d; j += kThreads) {
    const float v = __fmul_rn(xr[j], s);  // this thread's own write above
    xnr[j] = w ? __fmul_rn(v, w[j]) : v;
  }
}

void check_rows(int64_t n_rows, const char* what) {
  if (n_rows < 0 || n_rows > 2147483647) {
    fail(std::string(what) + ": n_rows = " + std::to_string(n_rows) + " out of range [0, 2^31)");
  }
}

}  // namespace

const char* variant_name(HcNormVariant v) {
  return v == HcNormVariant::fused ? "hc_collapse_norm__fused" : "hc_collapse_norm__split";
}

void rmsnorm_rows(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps) {
  check_rows(n_rows, "rmsnorm__block256_f64");
  if (n <= 0) fail("rmsnorm__block256_f64: n = " + std::to_string(n) + " must be positive");
  if (n_rows == 0) return;
  rmsnorm_rows_kernel<<<static_cast<unsigned>(n_rows), kThreads>>>(x, w, y, n, eps);
  check(cudaGetLastError(), "rmsnorm__block256_f64 launch");
}

void hc_collapse_norm(const float* X, const float* pre, const float* w, float* x, float* xn,
                      int64_t n_rows, int n_hc, int64_t d, float eps, HcNormVariant v) {
  check_rows(n_rows, variant_name(v));
  if (n_hc <= 0 || d <= 0) {
    fail(std::string(variant_name(v)) + ": n_hc = " + std::to_string(n_hc) +
         ", d = " + std::to_string(d) + " must be positive");
  }
  if (n_rows == 0) return;
  if (v == HcNormVariant::split) {
    hc_collapse(X, pre, x, n_rows, n_hc, d);
    rmsnorm_rows(x, w, xn, n_rows, d, eps);
    return;
  }
  hc_collapse_norm_fused_kernel<<<static_cast<unsigned>(n_rows), kThreads>>>(X, pre, w, x, xn,
                                                                             n_hc, d, eps);
  check(cudaGetLastError(), "hc_collapse_norm__fused launch");
}

}  // namespace ds4::cuda
