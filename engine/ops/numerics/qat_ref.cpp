#include <algorithm>
#include <cmath>

#include "ds4/quant.h"
#include "ops/numerics/qat.h"

namespace ds4 {

static float pow2_ceil_log2(float v) { return std::ldexp(1.0f, static_cast<int>(std::ceil(std::log2(v)))); }

void kv_fp8_roundtrip_ref(float* x, int n_nope) {
  for (int b = 0; b < n_nope; b += 64) {
    const int e = std::min(n_nope, b + 64);
    float amax = 1e-4f;
    for (int i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = pow2_ceil_log2(amax / 448.0f);
    for (int i = b; i < e; ++i) {
      const float v = std::clamp(x[i] / s, -448.0f, 448.0f);
      x[i] = round_e4m3(v) * s;
    }
  }
}

void hadamard_ref(float* x, int n) {
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  const float s = 1.0f / std::sqrt(static_cast<float>(n));
  for (int i = 0; i < n; ++i) x[i] *= s;
}

void fp4_roundtrip_ref(float* x, int n) {
  for (int b = 0; b < n; b += 32) {
    const int e = std::min(n, b + 32);
    float amax = 0;
    for (int i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float s = pow2_ceil_log2(std::max(amax, 7.05e-38f) / 6.0f);
    for (int i = b; i < e; ++i) x[i] = round_e2m1(x[i] / s) * s;
  }
}

void round_f16_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = round_f16(x[i]);
}

}  // namespace ds4
