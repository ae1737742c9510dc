// FP8 E4M3 and FP4 E2M1 rounding, used to simulate ds4's KV-cache and indexer QAT round trips
// (ds4-model.md §4.4 step 5 and §4.5; ds4.c dsv4_e4m3fn_dequant_cpu / dsv4_e2m1fn_dequant_cpu).
// Both take an already-scaled value and return the nearest representable value, as a float.
//
// Conventions, matching ds4: |x| is first clamped to the largest finite value (448 / 6), so
// out-of-range inputs saturate; the result carries the sign of x (x < 0 gives a negative result,
// so a negative input that rounds to zero gives -0.0); ties go to the even index of the format's
// code (= the even mantissa). Unlike ds4, a NaN input is returned unchanged instead of becoming
// ±max (ds4 clamps with fminf, which drops the NaN).
#include <cmath>

#include "ds4/quant.h"

namespace ds4 {

// E4M3 ("fn" variant: no infinities, max 448 = 1.75 * 2^8): exponent bias 7, 3 mantissa bits.
// Normal values (|v| >= 2^-6) in binade [2^e, 2^(e+1)) are spaced 2^(e-3); subnormals are
// k * 2^-9 for k = 0..7, the same spacing as the first normal binade. So in every case the value
// is an integer multiple of a power-of-two step, and rounding is nearbyint(ax / step) * step
// (ax / step and the product are exact). Ties to even k = ties to even mantissa, including the
// tie between the largest mantissa of a binade (k = 15) and the next power of two (k = 16).
float round_e4m3(float x) {
  if (std::isnan(x)) return x;
  const float sign = x < 0.0f ? -1.0f : 1.0f;
  const float ax = std::fmin(std::fabs(x), 448.0f);
  float step;
  if (ax < 0.015625f) {   // 2^-6: subnormal range
    step = 0.001953125f;  // 2^-9
  } else {
    int e;
    std::frexp(ax, &e);              // ax = m * 2^e, m in [0.5, 1): binade 2^(e-1)
    step = std::ldexp(1.0f, e - 4);  // 2^(e-1-3)
  }
  return sign * (std::nearbyint(ax / step) * step);
}

// E2M1: codes 0..7 are {0, 0.5, 1, 1.5, 2, 3, 4, 6}. Nearest by absolute difference, scanning
// the codes in order; on an exact tie the even code wins.
float round_e2m1(float x) {
  static const float kValues[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  if (std::isnan(x)) return x;
  const float sign = x < 0.0f ? -1.0f : 1.0f;
  const float ax = std::fmin(std::fabs(x), 6.0f);
  int best = 0;
  float best_diff = std::fabs(ax - kValues[0]);
  for (int i = 1; i < 8; ++i) {
    const float diff = std::fabs(ax - kValues[i]);
    if (diff < best_diff || (diff == best_diff && i % 2 == 0)) {
      best = i;
      best_diff = diff;
    }
  }
  return sign * kValues[best];
}

}  // namespace ds4
