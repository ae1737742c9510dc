// Sink softmax attention of one head over a list of candidate rows (ds4-model.md §4.4 step 9).
// attention__ref (the materialised-score kernel): s_j = dot(q, k_j) * scale (F32, index order),
// j in the given candidate order; M = max(sink, max_j s_j); e_j = exp(s_j - M);
// den = exp(sink - M) + sum_j e_j (j ascending); o = sum_j (e_j / den) * k_j (j ascending).
// Values are the rows themselves (K = V, one shared KV head).
#pragma once

namespace ds4 {
void attention_head_ref(const float* q, const float* const* rows, int n_rows, int head_dim,
                        float scale, float sink, float* out);
}  // namespace ds4
