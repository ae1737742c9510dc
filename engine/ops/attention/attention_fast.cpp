// Fast attention variants (see attention.h); each mirrors a ds4 batched kernel's arithmetic.
#include <cmath>
#include <vector>

#include "ops/attention/attention.h"

namespace ds4 {

// Dot as `lanes` strided partial sums reduced by a halving tree.
static float lane_dot(const float* a, const float* b, int n, int lanes) {
  float part[32];
  for (int l = 0; l < lanes; ++l) part[l] = 0.0f;
  for (int i = 0; i < n; ++i) part[i % lanes] += a[i] * b[i];
  for (int off = lanes / 2; off >= 1; off /= 2)
    for (int l = 0; l < off; ++l) part[l] += part[l + off];
  return part[0];
}

void attention_head_lane8(const float* q, const float* const* rows, int n_rows, int head_dim,
                          float scale, float sink, float* out) {
  std::vector<float> s(n_rows);
  for (int j = 0; j < n_rows; ++j) s[j] = lane_dot(rows[j], q, head_dim, 8) * scale;
  sink_softmax_accumulate(s, rows, head_dim, sink, out);
}

void attention_head_online(const float* q, const float* const* rows, int n_rows, int head_dim,
                           float scale, float sink, float* out) {
  float m = -INFINITY, l = 0.0f;
  std::vector<float> acc(head_dim, 0.0f);
  for (int j = 0; j < n_rows; ++j) {
    const float s = lane_dot(rows[j], q, head_dim, 32) * scale;
    if (s > m) {
      const float r = std::exp(m - s);  // exp(-inf) = 0 on the first row
      l *= r;
      for (float& a : acc) a *= r;
      m = s;
    }
    const float p = std::exp(s - m);
    l += p;
    for (int i = 0; i < head_dim; ++i) acc[i] += p * rows[j][i];
  }
  const float m2 = std::fmax(m, sink);
  const float r = std::exp(m - m2);
  l = l * r + std::exp(sink - m2);
  for (int i = 0; i < head_dim; ++i) out[i] = acc[i] * r / l;
}

}  // namespace ds4
