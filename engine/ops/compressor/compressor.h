// Compressed KV streams (ds4-model.md §4.5): per-token (kv, score) projections pooled per window
// of `ratio` tokens with a per-channel softmax over the window.
//   ratio 128: 128 state rows of head_dim; row u = p mod 128; at a window end
//              c[j] = sum_t softmax_t(g_t[j]) a_t[j].
//   ratio 4 (overlapping): 8 state rows of 2*head_dim (rows 0..3 previous window, 4..7 current);
//              candidates for channel j: first-half columns of the previous window's 4 rows, then
//              second-half columns of the current window's 4 rows; after emitting, rows 4..7 move
//              to 0..3. Scores start at -inf, so window 0's previous half carries weight 0.
// compressor_pool__ref: M = max over candidates; e_t = exp(g_t - M) (candidates in the order
// above); den = sum e_t; c = sum_t (e_t / den) * a_t.
#pragma once
#include <cstdint>
#include <vector>

namespace ds4 {

struct CompressorState {
  int ratio = 0;      // 4 or 128
  int head_dim = 0;   // output row width
  int width = 0;      // projection width = (ratio == 4 ? 2 : 1) * head_dim
  std::vector<float> kv, score;  // rows x width
  void init(int ratio_, int head_dim_);
  int rows() const { return ratio == 4 ? 8 : ratio; }
};

// Stores the token's projections a (kv) and g (score, APE already added) at position p.
// Returns true when p closes a window ((p + 1) mod ratio == 0) and writes the pooled row
// (head_dim, before norm and RoPE) to `pooled`.
bool compressor_push_ref(CompressorState& st, const float* a, const float* g, int64_t p,
                         float* pooled);

}  // namespace ds4
