// RMSNorm (ds4-model.md conventions): y = x * w / sqrt(mean(x^2) + eps).
// rmsnorm__ref: sum of squares in double in index order, scale = 1/sqrt(float(mean) + eps) in
// float, y_i = (x_i * scale) * w_i. In place allowed (y == x).
#pragma once
#include <cstdint>

namespace ds4 {
void rmsnorm_ref(const float* x, const float* w, float* y, int64_t n, float eps);
// Unweighted variant (RMSNorm0).
void rmsnorm0_ref(const float* x, float* y, int64_t n, float eps);
}  // namespace ds4
