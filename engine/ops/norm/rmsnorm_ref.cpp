#include <cmath>

#include "ops/norm/rmsnorm.h"

namespace ds4 {

static float rms_scale(const float* x, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  return 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(n)) + eps);
}

void rmsnorm_ref(const float* x, const float* w, float* y, int64_t n, float eps) {
  const float s = rms_scale(x, n, eps);
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] * s) * w[i];
}

void rmsnorm0_ref(const float* x, float* y, int64_t n, float eps) {
  const float s = rms_scale(x, n, eps);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s;
}

}  // namespace ds4
