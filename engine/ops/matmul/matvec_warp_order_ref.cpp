// matvec_q8_0__warp_order_ref: the CPU statement of the CUDA warp8 kernels' reduction order.
// See matvec_warp_order.h for the order; this file only spells it out.
//
// Fused multiply-add: the kernels round every product to F32 before adding it (__fmul_rn /
// __fadd_rn, which nvcc never contracts). A C++ compiler may contract `acc + a*b` into one fma
// (GCC's default is -ffp-contract=fast, and it emits fma on any target that has it: aarch64,
// x86-64 with -march=haswell or later), which would change the result. `#pragma STDC
// FP_CONTRACT OFF` is ignored by GCC, so each product goes through a volatile F32 store and
// load (mul_rounded below): the add then reads a rounded F32 value and cannot be fused.
// The test WarpOrderRef.ProductsAreRoundedBeforeTheAdd catches a contracted build.
#include <string>
#include <vector>

#include "ds4/error.h"
#include "ds4/quant.h"
#include "ops/matmul/matvec_warp_order.h"

namespace ds4 {

namespace {

constexpr int kBlockElems = 32;  // Q8_0 elements per block
constexpr int kBlockBytes = 34;  // f16 d + int8 q[32]
constexpr int kWarp = 32;        // lanes of a CUDA warp

// a*b rounded to F32, never fused with a following add (see the file comment).
float mul_rounded(float a, float b) {
  volatile float p = a * b;
  return p;
}

void check_n(int64_t n, const char* what) {
  if (n < 0 || n % kBlockElems != 0) {
    fail(std::string(what) + ": n = " + std::to_string(n) + " is not a multiple of 32");
  }
}

}  // namespace

float q8_0_dot_warp_order_ref(const void* w_row, const float* act_d, const int8_t* act_q,
                              int64_t n) {
  check_n(n, "q8_0_dot_warp_order_ref");
  const auto* w = static_cast<const uint8_t*>(w_row);
  const int64_t nb = n / kBlockElems;
  float v[kWarp];
  for (int lane = 0; lane < kWarp; ++lane) {
    float acc = 0.0f;
    for (int64_t b = lane; b < nb; b += kWarp) {
      const uint8_t* blk = w + b * kBlockBytes;
      const float wd = f16_to_f32(static_cast<uint16_t>(blk[0] | (blk[1] << 8)));  // little endian
      const auto* qw = reinterpret_cast<const int8_t*>(blk + 2);
      const int8_t* qx = act_q + b * kBlockElems;
      int32_t isum = 0;
      for (int i = 0; i < kBlockElems; ++i) isum += static_cast<int32_t>(qw[i]) * qx[i];
      const float dd = mul_rounded(wd, act_d[b]);
      acc = acc + mul_rounded(dd, static_cast<float>(isum));
    }
    v[lane] = acc;
  }
  // The shuffle-down tree: after offset k, lane i < k holds v[i] + v[i+k]; lane 0 ends with all.
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    for (int lane = 0; lane < offset; ++lane) v[lane] = v[lane] + v[lane + offset];
  }
  return v[0];
}

void matvec_q8_0_warp_order_ref(const void* w, int64_t in, int64_t out, const float* x,
                                int64_t n_rows, float* y) {
  check_n(in, "matvec_q8_0_warp_order_ref");
  const auto* wb = static_cast<const uint8_t*>(w);
  const size_t row_bytes = static_cast<size_t>(in / kBlockElems) * kBlockBytes;
  std::vector<float> d(static_cast<size_t>(in / kBlockElems));
  std::vector<int8_t> q(static_cast<size_t>(in));
  for (int64_t r = 0; r < n_rows; ++r) {
    quantize_act_q8_0(x + r * in, in, d.data(), q.data());
    for (int64_t o = 0; o < out; ++o) {
      y[r * out + o] = q8_0_dot_warp_order_ref(wb + o * row_bytes, d.data(), q.data(), in);
    }
  }
}

}  // namespace ds4
