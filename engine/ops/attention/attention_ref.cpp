#include <cmath>
#include <vector>

#include "ds4/quant.h"
#include "ops/attention/attention.h"

namespace ds4 {

void sink_softmax_accumulate(std::vector<float>& s, const float* const* rows, int head_dim, float sink, float* out) {
  const int n_rows = static_cast<int>(s.size());
  float m = sink;
  for (int j = 0; j < n_rows; ++j) m = std::fmax(m, s[j]);
  float den = std::exp(sink - m);
  for (int j = 0; j < n_rows; ++j) {
    s[j] = std::exp(s[j] - m);
    den += s[j];
  }
  for (int i = 0; i < head_dim; ++i) out[i] = 0.0f;
  for (int j = 0; j < n_rows; ++j) {
    const float p = s[j] / den;
    const float* k = rows[j];
    for (int i = 0; i < head_dim; ++i) out[i] += p * k[i];
  }
}

void attention_head_ref(const float* q, const float* const* rows, int n_rows, int head_dim,
                        float scale, float sink, float* out) {
  std::vector<float> s(n_rows);
  for (int j = 0; j < n_rows; ++j) s[j] = dot_f32_f32(rows[j], q, head_dim) * scale;
  sink_softmax_accumulate(s, rows, head_dim, sink, out);
}

}  // namespace ds4
