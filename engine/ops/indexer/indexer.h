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

// topk__torch_cpu: PyTorch's CPU torch.topk selection (ATen topk_impl_loop: a queue of
// (value, index) in index order compared on value only; std::partial_sort when k * 64 <= n, else
// std::nth_element), padded with -inf up to queue_len entries (queue_len <= n: no padding).
// Which of several equal scores it keeps depends on the queue length: HF's prefill pads every
// query's row with the masked future (-inf), its decode path does not, so HF's indexer picks
// different rows among exact ties (ReLU makes zero scores common) in its two modes. Used only to
// reproduce the HF oracle; returned in ascending index order.
std::vector<int32_t> topk_torch_cpu_ref(const float* scores, int64_t n, int64_t k, int64_t queue_len);

}  // namespace ds4

namespace ds4 {
// indexer_scores__wmma_f16 (indexer_wmma fast): q and K rounded to F16; each head's dot summed
// in 16-element chunks (F32 sum of F16 products per chunk, chunks accumulated in order), then
// relu(dot) * w_h summed over heads, and qk_scale * w_scale applied once at the end.
void indexer_scores_wmma(const float* q, int n_head, int head_dim, const float* w, const float* K,
                         int64_t n_rows, float* scores);
// indexer_scores__scalar (indexer_direct_one fast): per head a 128-lane halving-tree dot,
// relu(dot) * w_h summed over heads, the combined scale applied once at the end.
void indexer_scores_scalar(const float* q, int n_head, int head_dim, const float* w, const float* K,
                           int64_t n_rows, float* scores);
// topk__score_order: the same selection as topk_ascending_ref, in score order (highest first,
// ties to the lower index): the order N=1 decode attends the rows in.
std::vector<int32_t> topk_score_order_ref(const float* scores, int64_t n, int64_t k);
}  // namespace ds4
