// Matrix-vector products over any stored weight type, in the numerics of a profile.
//
// Variants (only the reference here; faster batched variants are gated elsewhere):
//   matvec__ref: per output row, one dot in the row's stated order (ds4/quant.h):
//     F32/F16 weights: F32 activations, F32 accumulation in index order.
//     Q8_0 weights:  ds4 profile: activation quantised once to Q8_0 (F32 d), dot_q8_0_q8_0act;
//                    plain profile: row dequantised to F32, F32 dot in index order.
//     Q2_K/Q4_K/IQ2_XXS: ds4: activation quantised once to Q8_K, ggml-order block dots;
//                    plain: row dequantised to F32, F32 dot in index order.
//     BF16: row dequantised to F32, F32 dot.
//   Rows are split across threads; each output element is computed by one thread, so the result
//   is independent of the thread count.
#pragma once
#include <cstdint>

#include "ds4/engine.h"
#include "ds4/quant.h"

namespace ds4 {

class ThreadPool;

// A 2-D weight view: `out` rows of `in` elements of `type`, row r at data + r * row_bytes.
// For 3-D expert tensors, expert(e) gives the view of one expert.
struct WeightRef {
  const uint8_t* data = nullptr;
  QType type = QType::F32;
  int64_t in = 0, out = 0, n_mat = 1;
  size_t row_bytes = 0;
  explicit operator bool() const { return data != nullptr; }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
  WeightRef expert(int64_t e) const;
  WeightRef rows(int64_t first, int64_t count) const;  // sub-block of rows
};

// y[out] = W x[in].
void matvec_ref(const WeightRef& w, const float* x, float* y, Profile profile, ThreadPool* pool);
// Dequantises row r of w to F32 (dst has w.in entries).
void weight_row_f32(const WeightRef& w, int64_t r, float* dst);

}  // namespace ds4
