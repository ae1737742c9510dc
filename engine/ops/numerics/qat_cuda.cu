// The ds4 profile's storage numerics on the GPU (ds4-model.md §4.4 step 5 and §4.5; ds4-dispatch
// .md §1.2 row X: fp8_kv_quantize_kernel, indexer_hadamard_fp4_kernel, the F16 raw store).
// Host API: engine/backend/cuda/ops_cuda.h. Check: tests/unit/cuda_ops_test
// --gtest_filter='*kv_fp8*:*indexer_qat*'.
//
// Variants (elementwise after an order-free block max; one kernel for N=1 and N rows):
//   kv_fp8__block64            one warp per 64-value block of a row's first n_nope values:
//       amax = max(1e-4, max |x|) by a max-shuffle, s = 2^ceil(log2(amax/448)),
//       x = e4m3(clamp(x/s, +-448)) * s; then optionally the whole row rounded to F16 (the KV
//       cache store). Bitwise against kv_fp8_roundtrip_ref + round_f16_inplace.
//   indexer_qat__hadamard_fp4  one block of n threads per row: the Walsh-Hadamard butterflies
//       stride 1, 2, ..., n/2 in shared memory, * (1/sqrt(n)); then the FP4 E2M1 round trip per
//       32-value block (warp max, s = 2^ceil(log2(max(amax, 7.05e-38)/6))); optionally F16.
//       Bitwise against hadamard_ref + fp4_roundtrip_ref (+ round_f16_inplace).
// The power-of-two scale: ceil(log2 v) with log2 evaluated as float(log2(double v)) (correctly
// rounded); glibc's log2f could only disagree where its result is misrounded onto an integer,
// i.e. for v within a few ulp above a power of two and a misrounding at the same time.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kFp8Block = 64;
constexpr int kWarpsPerBlock = 8;

// qat_ref's pow2_ceil_log2: ldexp(1, ceil(log2f(v))).
__device__ __forceinline__ float pow2_ceil_log2(float v) {
  const float l = static_cast<float>(log2(static_cast<double>(v)));
  return ldexpf(1.0f, static_cast<int>(ceilf(l)));
}

// ds4::round_e4m3 (engine/quant/fp8_fp4.cpp), operation for operation.
__device__ __forceinline__ float round_e4m3(float x) {
  if (isnan(x)) return x;
  const float sign = x < 0.0f ? -1.0f : 1.0f;
  const float ax = fminf(fabsf(x), 448.0f);
  float step;
  if (ax < 0.015625f) {
    step = 0.001953125f;
  } else {
    int e;
    frexpf(ax, &e);
    step = ldexpf(1.0f, e - 4);
  }
  return __fmul_rn(sign, __fmul_rn(rintf(__fdiv_rn(ax, step)), step));
}

// ds4::round_e2m1: nearest of {0, .5, 1, 1.5, 2, 3, 4, 6} scanning in order, even code on ties.
__device__ __forceinline__ float round_e2m1(float x) {
  if (isnan(x)) return x;
  const float kValues[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float sign = x < 0.0f ? -1.0f : 1.0f;
  const float ax = fminf(fabsf(x), 6.0f);
  int best = 0;
  float best_diff = fabsf(__fsub_rn(ax, kValues[0]));
#pragma unroll
  for (int i = 1; i < 8; ++i) {
    const float diff = fabsf(__fsub_rn(ax, kValues[i]));
    if (diff < best_diff || (diff == best_diff && i % 2 == 0)) {
      best = i;
      best_diff = diff;
    }
  }
  return __fmul_rn(sign, kValues[best]);
}

__device__ __forceinline__ float round_f16(float v) { return __half2float(__float2half_rn(v)); }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// x: (n_rows, row_len) F32 in place. Warp w of the grid owns block (row, b) with
// row = w / n_blk, b = w % n_blk; lane l owns elements 64b + l and 64b + 32 + l.
__global__ void __launch_bounds__(kWarp * kWarpsPerBlock)
    kv_fp8_kernel(float* __restrict__ x, int64_t n_warps, int n_blk, int row_len, int n_nope) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (w >= n_warps) return;  // warp-uniform
  const int64_t row = w / n_blk;
  const int b = static_cast<int>(w % n_blk) * kFp8Block;
  float* xr = x + row * row_len;
  const int i0 = b + lane, i1 = b + kWarp + lane;
  const bool ok0 = i0 < n_nope, ok1 = i1 < n_nope;
  const float v0 = ok0 ? xr[i0] : 0.0f, v1 = ok1 ? xr[i1] : 0.0f;
  const float amax = warp_max(fmaxf(fmaxf(1e-4f, fabsf(v0)), fabsf(v1)));
  const float s = pow2_ceil_log2(__fdiv_rn(amax, 448.0f));
  if (ok0) xr[i0] = __fmul_rn(round_e4m3(fminf(fmaxf(__fdiv_rn(v0, s), -448.0f), 448.0f)), s);
  if (ok1) xr[i1] = __fmul_rn(round_e4m3(fminf(fmaxf(__fdiv_rn(v1, s), -448.0f), 448.0f)), s);
}

// x: (n_rows, row_len) F32 in place, every element rounded to F16 and back.
__global__ void round_f16_kernel(float* __restrict__ x, int64_t total) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g < total) x[g] = round_f16(x[g]);
}

// x: (n_rows, n) F32 in place; one block of n threads per row (n a power of two in [32, 1024]).
__global__ void __launch_bounds__(1024)
    indexer_qat_kernel(float* __restrict__ x, int n, float inv_sqrt_n, bool to_f16) {
  extern __shared__ float sh[];  // n floats
  float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
  const int t = threadIdx.x;
  sh[t] = xr[t];
  __syncthreads();
  // Stage h: butterflies (j, j + h) for j in [i, i + h), i a multiple of 2h (hadamard_ref).
  for (int h = 1; h < n; h *= 2) {
    if (t < n / 2) {
      const int j = (t / h) * 2 * h + (t % h);
      const float a = sh[j], b = sh[j + h];
      sh[j] = __fadd_rn(a, b);
      sh[j + h] = __fsub_rn(a, b);
    }
    __syncthreads();
  }
  const float v = __fmul_rn(sh[t], inv_sqrt_n);
  // FP4 block of 32 = this warp.
  const float amax = warp_max(fabsf(v));
  const float s = pow2_ceil_log2(__fdiv_rn(fmaxf(amax, 7.05e-38f), 6.0f));
  float r = __fmul_rn(round_e2m1(__fdiv_rn(v, s)), s);
  if (to_f16) r = round_f16(r);
  xr[t] = r;
}

}  // namespace

void kv_fp8_roundtrip(float* x, int64_t n_rows, int row_len, int n_nope, bool round_f16_store) {
  if (n_rows < 0 || row_len <= 0 || n_nope < 0 || n_nope > row_len) {
    fail("kv_fp8__block64: bad shape n_rows = " + std::to_string(n_rows) + ", row_len = " +
         std::to_string(row_len) + ", n_nope = " + std::to_string(n_nope));
  }
  if (n_rows == 0) return;
  const int n_blk = (n_nope + kFp8Block - 1) / kFp8Block;
  const int64_t n_warps = n_rows * n_blk;
  if (n_warps > 0) {
    const int64_t blocks = (n_warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
    if (blocks > 2147483647) fail("kv_fp8__block64: too many rows");
    kv_fp8_kernel<<<static_cast<unsigned>(blocks), kWarp * kWarpsPerBlock>>>(x, n_warps, n_blk,
                                                                             row_len, n_nope);
    check(cudaGetLastError(), "kv_fp8__block64 launch");
  }
  if (round_f16_store) {
    const int64_t total = n_rows * row_len;
    const int64_t blocks = (total + 255) / 256;
    if (blocks > 2147483647) fail("kv_fp8__block64: too many rows");
    round_f16_kernel<<<static_cast<unsigned>(blocks), 256>>>(x, total);
    check(cudaGetLastError(), "kv_fp8__block64 (f16 store) launch");
  }
}

void indexer_qat(float* x, int64_t n_rows, int n, bool round_f16_rows) {
  if (n_rows < 0 || n < 32 || n > 1024 || (n & (n - 1)) != 0) {
    fail("indexer_qat__hadamard_fp4: n = " + std::to_string(n) +
         " must be a power of two in [32, 1024] (n_rows = " + std::to_string(n_rows) + ")");
  }
  if (n_rows == 0) return;
  if (n_rows > 2147483647) fail("indexer_qat__hadamard_fp4: too many rows");
  // 1/sqrt(n) exactly as hadamard_ref computes it (host IEEE float ops).
  const float inv_sqrt_n = 1.0f / std::sqrt(static_cast<float>(n));
  indexer_qat_kernel<<<static_cast<unsigned>(n_rows), n, n * sizeof(float)>>>(x, n, inv_sqrt_n,
                                                                               round_f16_rows);
  check(cudaGetLastError(), "indexer_qat__hadamard_fp4 launch");
}

}  // namespace ds4::cuda
