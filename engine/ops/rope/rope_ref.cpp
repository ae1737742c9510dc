#include <algorithm>
#include <cmath>

#include "ops/rope/rope.h"

namespace ds4 {

RopeParams rope_params(int n_rot, float base, float yarn_factor, uint32_t yarn_orig_ctx,
                       float beta_fast, float beta_slow, bool yarn) {
  RopeParams rp;
  const int half = n_rot / 2;
  rp.inv_freq.resize(half);
  // YaRN correction range (GGML / HF formula): the dims whose wavelength spans beta rotations.
  auto correction_dim = [&](float rotations) {
    return n_rot * std::log(static_cast<double>(yarn_orig_ctx) / (rotations * 2.0 * M_PI)) /
           (2.0 * std::log(static_cast<double>(base)));
  };
  double low = 0, high = 0;
  if (yarn) {
    low = std::max(0.0, std::floor(correction_dim(beta_fast)));
    high = std::min(static_cast<double>(n_rot - 1), std::ceil(correction_dim(beta_slow)));
  }
  for (int i = 0; i < half; ++i) {
    const double extrap = 1.0 / std::pow(static_cast<double>(base), 2.0 * i / n_rot);
    double f = extrap;
    if (yarn) {
      const double interp = extrap / yarn_factor;
      double span = high - low;
      if (span < 0.001) span = 0.001;
      const double ramp = std::clamp((i - low) / span, 0.0, 1.0);  // 0: keep, 1: interpolate
      f = interp * ramp + extrap * (1.0 - ramp);
    }
    rp.inv_freq[i] = static_cast<float>(f);
  }
  return rp;
}

void rope_tail_ref(float* head, int head_dim, int n_rot, int64_t pos, const RopeParams& rp,
                   bool inverse) {
  float* t = head + (head_dim - n_rot);
  const float p = static_cast<float>(pos);
  for (int i = 0; i < n_rot / 2; ++i) {
    const float theta = p * rp.inv_freq[i];
    const float c = static_cast<float>(std::cos(static_cast<double>(theta)));
    float s = static_cast<float>(std::sin(static_cast<double>(theta)));
    if (inverse) s = -s;
    const float x0 = t[2 * i], x1 = t[2 * i + 1];
    t[2 * i] = x0 * c - x1 * s;
    t[2 * i + 1] = x0 * s + x1 * c;
  }
}

}  // namespace ds4
