// Helpers shared by the quant_*_test programs: a replicable Gaussian source, round-trip error,
// and fp64 references for the dots.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "ds4/quant.h"

namespace ds4::quant_test {

// N(0, sigma) samples from mt19937 (fully specified) through Box-Muller (not
// std::normal_distribution, whose algorithm is left to the library), so values are the same
// everywhere.
inline std::vector<float> gaussian(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::vector<float> out(static_cast<size_t>(n));
  const double two_pi = 6.283185307179586;
  for (int64_t i = 0; i < n; i += 2) {
    const double u1 = (static_cast<double>(rng()) + 1.0) / 4294967297.0;  // (0, 1)
    const double u2 = static_cast<double>(rng()) / 4294967296.0;          // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1));
    out[static_cast<size_t>(i)] = static_cast<float>(sigma * r * std::cos(two_pi * u2));
    if (i + 1 < n)
      out[static_cast<size_t>(i + 1)] = static_cast<float>(sigma * r * std::sin(two_pi * u2));
  }
  return out;
}

inline std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out) b = static_cast<uint8_t>(rng() & 0xff);
  return out;
}

// sqrt(Σ (y - x)^2 / Σ x^2) in double.
inline double relative_rmse(const std::vector<float>& x, const std::vector<float>& y) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = static_cast<double>(y[i]) - x[i];
    num += e * e;
    den += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(num / den);
}

inline std::vector<uint8_t> quantize(QType type, const std::vector<float>& x) {
  std::vector<uint8_t> out(qtype_row_bytes(type, static_cast<int64_t>(x.size())));
  quantize_row(type, x.data(), out.data(), static_cast<int64_t>(x.size()));
  return out;
}

inline std::vector<float> dequantize(QType type, const void* src, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_row(type, src, out.data(), n);
  return out;
}

inline uint16_t bits16(float f) { return f32_to_f16(f); }

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Result of comparing a dot with its fp64 reference: |dot - ref| and Σ |w_i x_i|.
struct DotCheck {
  double ref;
  double abs_sum;
};

// fp64 reference of a weight row (any dequantisable type) against a Q8_K activation.
inline DotCheck ref_dot_q8k(QType wtype, const void* w, const std::vector<BlockQ8K>& act,
                            int64_t n) {
  const std::vector<float> wf = dequantize(wtype, w, n);
  DotCheck r{0.0, 0.0};
  for (int64_t i = 0; i < n; ++i) {
    const BlockQ8K& b = act[static_cast<size_t>(i / 256)];
    const double xv = static_cast<double>(b.d) * b.qs[i % 256];
    r.ref += static_cast<double>(wf[static_cast<size_t>(i)]) * xv;
    r.abs_sum += std::fabs(static_cast<double>(wf[static_cast<size_t>(i)]) * xv);
  }
  return r;
}

}  // namespace ds4::quant_test
