// CPU statements of the CUDA ordered-chunks and preq-tree reduction orders; see
// matmul_cuda_ref.h for each order. These functions only spell the orders out.
//
// Fused multiply-add: the ordered-chunks kernels use __fmaf_rn on purpose, so the reference
// calls std::fma (correctly rounded everywhere, in hardware or in libm). The preq tree rounds
// each product (__fmul_rn / __fadd_rn); a C++ compiler may contract `a + b*c` into an fma, so
// products go through a volatile F32 store and load, as in matvec_warp_order_ref.cpp.
#include "ops/matmul/matmul_cuda_ref.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "ds4/error.h"
#include "ds4/quant.h"

namespace ds4 {

namespace {

constexpr int kLanes = 32;       // threads per output row in the ordered-chunks kernels
constexpr int kPreqLanes = 256;  // threads per output row in the preq tree kernel
constexpr int kBlockElems = 32;  // Q8_0 elements per block
constexpr int kBlockBytes = 34;  // f16 d + int8 q[32]

float mul_rounded(float a, float b) {
  volatile float p = a * b;
  return p;
}

float add_rounded(float a, float b) {
  volatile float s = a + b;
  return s;
}

template <class LoadW>
float ordered_chunks(LoadW load_w, const float* x, int64_t n) {
  if (n < 0) fail("ordered chunks dot: negative length " + std::to_string(n));
  const int64_t chunk = (n + kLanes - 1) / kLanes;
  float total = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) {
    const int64_t k0 = std::min<int64_t>(static_cast<int64_t>(lane) * chunk, n);
    const int64_t k1 = std::min<int64_t>(k0 + chunk, n);
    float p = 0.0f;
    for (int64_t i = k0; i < k1; ++i) p = std::fma(load_w(i), x[i], p);
    total = add_rounded(total, p);
  }
  return total;
}

}  // namespace

float dot_f16_ordered_chunks_ref(const uint16_t* w_row_f16, const float* x, int64_t n) {
  return ordered_chunks([&](int64_t i) { return f16_to_f32(w_row_f16[i]); }, x, n);
}

float dot_f32_ordered_chunks_ref(const float* w_row, const float* x, int64_t n) {
  return ordered_chunks([&](int64_t i) { return w_row[i]; }, x, n);
}

float q8_0_dot_preq_tree_ref(const void* w_row, const float* act_d, const int8_t* act_q,
                             int64_t n) {
  if (n < 0 || n % kBlockElems != 0) {
    fail("q8_0_dot_preq_tree_ref: n = " + std::to_string(n) + " is not a multiple of 32");
  }
  const auto* w = static_cast<const uint8_t*>(w_row);
  const int64_t nb = n / kBlockElems;
  float v[kPreqLanes];
  for (int t = 0; t < kPreqLanes; ++t) {
    float acc = 0.0f;
    for (int64_t b = t; b < nb; b += kPreqLanes) {
      const uint8_t* blk = w + b * kBlockBytes;
      const float wd = f16_to_f32(static_cast<uint16_t>(blk[0] | (blk[1] << 8)));
      const auto* qw = reinterpret_cast<const int8_t*>(blk + 2);
      const int8_t* qx = act_q + b * kBlockElems;
      int32_t isum = 0;
      for (int i = 0; i < kBlockElems; ++i) isum += static_cast<int32_t>(qw[i]) * qx[i];
      acc = add_rounded(acc, mul_rounded(mul_rounded(wd, act_d[b]), static_cast<float>(isum)));
    }
    v[t] = acc;
  }
  for (int stride = kPreqLanes / 2; stride > 0; stride /= 2) {
    for (int t = 0; t < stride; ++t) v[t] = add_rounded(v[t], v[t + stride]);
  }
  return v[0];
}

}  // namespace ds4
