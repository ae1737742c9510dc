// Sink softmax attention of one head over a list of candidate rows (ds4-model.md §4.4 step 9).
// attention__ref (the materialised-score kernel): s_j = dot(q, k_j) * scale (F32, index order),
// j in the given candidate order; M = max(sink, max_j s_j); e_j = exp(s_j - M);
// den = exp(sink - M) + sum_j e_j (j ascending); o = sum_j (e_j / den) * k_j (j ascending).
// Values are the rows themselves (K = V, one shared KV head).
#pragma once
#include <vector>

namespace ds4 {
// The materialised-score tail shared by the serial and lane-8 variants: given scores s_j (already
// scaled), M = max(sink, s), e_j = exp(s_j - M), den = exp(sink - M) + sum e_j, out = sum (e_j/den) k_j.
void sink_softmax_accumulate(std::vector<float>& s, const float* const* rows, int head_dim, float sink, float* out);
void attention_head_ref(const float* q, const float* const* rows, int n_rows, int head_dim,
                        float scale, float sink, float* out);
}  // namespace ds4

namespace ds4 {
// attn_dense__lane8_dot (dense_attn_ntokens fast): as attention_head_ref, but each q.k is an
// 8-lane strided dot (lane l sums elements l, l+8, ... in order) reduced by a shuffle tree
// (lane l += lane l+4, l+2, l+1), as ds4's n_tokens > 1 branch. Not bit-equal to the serial dot.
void attention_head_lane8(const float* q, const float* const* rows, int n_rows, int head_dim,
                          float scale, float sink, float* out);
// attn_indexed__heads8_online (indexed_attn_online fast): online softmax in candidate order:
// 32-lane strided dot + tree; running max m, running sum l and accumulator rescaled by
// exp(m_old - m_new) when the max grows; the sink is folded in at the end. Not bit-equal.
void attention_head_online(const float* q, const float* const* rows, int n_rows, int head_dim,
                           float scale, float sink, float* out);
}  // namespace ds4
