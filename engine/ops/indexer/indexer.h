// Lightning indexer (ds4-model.md §4.6): scores compressed rows for one query and keeps the top-k.
// indexer_scores__ref: for row c, score_c = sum_h (relu(dot(q_h, K_c)) * qk_scale) * (w_h * w_scale)
// with the dot in F32 index order, heads ascending; qk_scale = 1/sqrt(head_dim),
// w_scale = 1/sqrt(n_head) (the HF and ds4 factorisations of 1/sqrt(head_dim * n_head)).
// topk__ref: the k largest scores, ties to the lower index, returned in ascending index order.
#pragma once
#include <cstdint>
#include <vector>

namespace ds4 {

void indexer_scores_ref(const float* q, int n_head, int head_dim, const float* w,
                        const float* K, int64_t n_rows, float* scores);
std::vector<int32_t> topk_ascending_ref(const float* scores, int64_t n, int64_t k);

}  // namespace ds4
