// matvec__ref: see matvec.h for the numerics of each weight type and profile.
#include <vector>

#include "backend/cpu/thread_pool.h"
#include "ds4/error.h"
#include "ops/matmul/matvec.h"

namespace ds4 {

WeightRef WeightRef::expert(int64_t e) const {
  if (e < 0 || e >= n_mat) fail("expert index " + std::to_string(e) + " out of range");
  WeightRef w = *this;
  w.data = data + static_cast<size_t>(e) * static_cast<size_t>(out) * row_bytes;
  w.n_mat = 1;
  return w;
}

WeightRef WeightRef::rows(int64_t first, int64_t count) const {
  WeightRef w = *this;
  w.data = row(first);
  w.out = count;
  w.n_mat = 1;
  return w;
}

void weight_row_f32(const WeightRef& w, int64_t r, float* dst) {
  dequantize_row(w.type, w.row(r), dst, w.in);
}

namespace {

void for_rows(const WeightRef& w, ThreadPool* pool, const std::function<void(int64_t, int64_t)>& fn) {
  if (pool) {
    pool->parallel_for(w.out, fn, 8);
  } else {
    fn(0, w.out);
  }
}

}  // namespace

void matvec_ref(const WeightRef& w, const float* x, float* y, Profile profile, ThreadPool* pool) {
  const int64_t n = w.in;
  switch (w.type) {
    case QType::F32:
      for_rows(w, pool, [&](int64_t a, int64_t b) {
        for (int64_t r = a; r < b; ++r)
          y[r] = dot_f32_f32(reinterpret_cast<const float*>(w.row(r)), x, n);
      });
      return;
    case QType::F16:
      for_rows(w, pool, [&](int64_t a, int64_t b) {
        for (int64_t r = a; r < b; ++r)
          y[r] = dot_f16_f32(reinterpret_cast<const uint16_t*>(w.row(r)), x, n);
      });
      return;
    case QType::Q8_0:
      if (profile == Profile::Ds4) {
        std::vector<float> d(n / 32);
        std::vector<int8_t> q(n);
        quantize_act_q8_0(x, n, d.data(), q.data());
        for_rows(w, pool, [&](int64_t a, int64_t b) {
          for (int64_t r = a; r < b; ++r) y[r] = dot_q8_0_q8_0act(w.row(r), d.data(), q.data(), n);
        });
        return;
      }
      break;
    case QType::Q2_K:
    case QType::Q4_K:
    case QType::IQ2_XXS:
      if (profile == Profile::Ds4) {
        std::vector<BlockQ8K> act(n / 256);
        quantize_act_q8_k(x, n, act.data());
        const QType t = w.type;
        for_rows(w, pool, [&](int64_t a, int64_t b) {
          for (int64_t r = a; r < b; ++r) {
            y[r] = t == QType::Q2_K   ? dot_q2_k_q8_k(w.row(r), act.data(), n)
                   : t == QType::Q4_K ? dot_q4_k_q8_k(w.row(r), act.data(), n)
                                      : dot_iq2_xxs_q8_k(w.row(r), act.data(), n);
          }
        });
        return;
      }
      break;
    case QType::BF16:
      break;
    default:
      fail(std::string("matvec: unsupported weight type ") + qtype_name(w.type));
  }
  // Plain numerics for quantised types (and BF16): dequantise each row, F32 dot in index order.
  for_rows(w, pool, [&](int64_t a, int64_t b) {
    std::vector<float> row(n);
    for (int64_t r = a; r < b; ++r) {
      weight_row_f32(w, r, row.data());
      y[r] = dot_f32_f32(row.data(), x, n);
    }
  });
}

}  // namespace ds4
