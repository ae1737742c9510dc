// Tail RoPE (ds4-model.md §4.4 step 4): only the last n_rot dims of a head are rotated, in
// adjacent pairs (x[t+2i], x[t+2i+1]) with t = head_dim - n_rot.
// Ratio-0 layers: theta_i = p * base^(-2i/n_rot). Compressed layers: YaRN frequency blend
// (factor, original context, beta_fast/slow; low = floor(..), high = ceil(..)) with no magnitude
// scaling (attention factor 1, as ds4, llama.cpp and HF all end up with).
// rope__ref numerics: inverse frequencies computed in double, rounded to float; the angle is the
// float product float(p) * inv_freq; cos/sin evaluated in double and rounded to float; the
// rotation x0' = x0*c - x1*s, x1' = x0*s + x1*c in float.
#pragma once
#include <cstdint>
#include <vector>

namespace ds4 {

struct RopeParams {
  std::vector<float> inv_freq;  // n_rot / 2 entries
};
// Plain RoPE (base) or YaRN-blended (factor > 1) inverse frequencies.
RopeParams rope_params(int n_rot, float base, float yarn_factor, uint32_t yarn_orig_ctx,
                       float beta_fast, float beta_slow, bool yarn);
// Rotates the tail of one head in place; inverse = true applies the conjugate rotation (-sin).
void rope_tail_ref(float* head, int head_dim, int n_rot, int64_t pos, const RopeParams& rp,
                   bool inverse);

}  // namespace ds4
