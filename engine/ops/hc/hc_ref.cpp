#include <cmath>

#include "ops/hc/hc.h"

namespace ds4 {

static float sigmoidf(float x) { return 1.0f / (1.0f + std::exp(-x)); }

HcMix hc_split_ref(const float* m, int n_hc, const float* scale, const float* base, int iters, float hc_eps) {
  HcMix mix;
  mix.pre.resize(n_hc);
  mix.post.resize(n_hc);
  mix.comb.resize(n_hc * n_hc);
  for (int i = 0; i < n_hc; ++i) {
    mix.pre[i] = sigmoidf(m[i] * scale[0] + base[i]) + hc_eps;
    mix.post[i] = 2.0f * sigmoidf(m[n_hc + i] * scale[1] + base[n_hc + i]);
  }
  float* C = mix.comb.data();
  const float* mc = m + 2 * n_hc;
  const float* bc = base + 2 * n_hc;
  for (int a = 0; a < n_hc; ++a) {  // row softmax over b, then + eps
    float mx = -INFINITY;
    for (int b = 0; b < n_hc; ++b) {
      C[a * n_hc + b] = mc[a * n_hc + b] * scale[2] + bc[a * n_hc + b];
      mx = std::fmax(mx, C[a * n_hc + b]);
    }
    float sum = 0;
    for (int b = 0; b < n_hc; ++b) {
      C[a * n_hc + b] = std::exp(C[a * n_hc + b] - mx);
      sum += C[a * n_hc + b];
    }
    for (int b = 0; b < n_hc; ++b) C[a * n_hc + b] = C[a * n_hc + b] / sum + hc_eps;
  }
  auto normalise_columns = [&] {
    for (int b = 0; b < n_hc; ++b) {
      float s = 0;
      for (int a = 0; a < n_hc; ++a) s += C[a * n_hc + b];
      for (int a = 0; a < n_hc; ++a) C[a * n_hc + b] /= (s + hc_eps);
    }
  };
  auto normalise_rows = [&] {
    for (int a = 0; a < n_hc; ++a) {
      float s = 0;
      for (int b = 0; b < n_hc; ++b) s += C[a * n_hc + b];
      for (int b = 0; b < n_hc; ++b) C[a * n_hc + b] /= (s + hc_eps);
    }
  };
  normalise_columns();
  for (int it = 1; it < iters; ++it) {
    normalise_rows();
    normalise_columns();
  }
  return mix;
}

void hc_collapse_ref(const float* X, const float* w, int n_hc, int64_t d, float* x) {
  for (int64_t j = 0; j < d; ++j) {
    float acc = 0;
    for (int i = 0; i < n_hc; ++i) acc += w[i] * X[i * d + j];
    x[j] = acc;
  }
}

void hc_post_ref(const float* X, const float* y, const HcMix& mix, int n_hc, int64_t d, float* X_out) {
  for (int b = 0; b < n_hc; ++b) {
    for (int64_t j = 0; j < d; ++j) {
      float acc = mix.post[b] * y[j];
      for (int a = 0; a < n_hc; ++a) acc += mix.comb[a * n_hc + b] * X[a * d + j];
      X_out[b * d + j] = acc;
    }
  }
}

std::vector<float> hc_head_weights_ref(const float* m, int n_hc, float scale, const float* base, float hc_eps) {
  std::vector<float> w(n_hc);
  for (int i = 0; i < n_hc; ++i) w[i] = sigmoidf(m[i] * scale + base[i]) + hc_eps;
  return w;
}

}  // namespace ds4
