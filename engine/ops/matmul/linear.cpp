#include "ops/matmul/linear.h"

#include <Eigen/Dense>
#include <cstdio>
#include <cstring>

#include "backend/cpu/thread_pool.h"
#include "ds4/error.h"

namespace ds4 {

namespace {
std::string size_text(int64_t bytes) {
  char buf[32];
  if (bytes < (int64_t{1} << 20)) std::snprintf(buf, sizeof buf, "%lld KiB", static_cast<long long>(bytes >> 10));
  else std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}
}  // namespace

WeightCache::Buffer WeightCache::take_buffer(size_t n_floats) {
  const int64_t need = static_cast<int64_t>(n_floats * sizeof(float));
  for (;;) {
    // The smallest spare that holds the copy.
    auto best = spare_.end();
    for (auto it = spare_.begin(); it != spare_.end(); ++it)
      if ((*it)->capacity() >= n_floats && (best == spare_.end() || (*it)->capacity() < (*best)->capacity())) best = it;
    if (best != spare_.end()) {
      Buffer b = std::move(*best);
      spare_.erase(best);
      b->resize(n_floats);
      return b;
    }
    if (held_ + need <= budget_) {
      held_ += need;
      auto b = std::make_shared<std::vector<float>>();
      b->reserve(n_floats);
      b->resize(n_floats);
      held_ += bytes_of(b) - need;
      return b;
    }
    if (!spare_.empty()) {  // spares too small for this copy: free one and try again
      held_ -= bytes_of(spare_.back());
      spare_.pop_back();
      continue;
    }
    // Drop the least recently used copy (a linear scan: the cache holds a few dozen entries at
    // most, and every drop is followed by a dequantisation that costs far more). Its buffer is
    // recycled unless a caller still holds it; then it is no longer counted and is freed when
    // that caller lets go.
    auto oldest = entries_.begin();
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    Buffer dropped = std::move(oldest->second.data);
    entries_.erase(oldest);
    if (dropped.use_count() == 1) spare_.push_back(std::move(dropped));
    else held_ -= bytes_of(dropped);
  }
}

WeightCache::Entry WeightCache::get(const void* key, int kind, size_t n_floats, const Fill& fill) {
  const int64_t need = static_cast<int64_t>(n_floats * sizeof(float));
  std::lock_guard<std::mutex> lock(mutex_);
  const Key k{key, kind};
  if (auto it = entries_.find(k); it != entries_.end()) {
    it->second.last_use = ++clock_;
    return it->second.data;
  }
  if (need > budget_)
    fail("DS4_CPU_DEQUANT_CACHE_MB: a dequantised weight copy needs " + size_text(need) +
         ", more than the CPU dequantisation cache budget of " + size_text(budget_) +
         "; raise DS4_CPU_DEQUANT_CACHE_MB or run the gate exact");
  Buffer b = take_buffer(n_floats);
  fill(b->data());
  entries_[k] = Slot{b, ++clock_};
  return b;
}

int64_t WeightCache::bytes_held() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_;
}

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
enum CacheKind { kF32Exact = 0, kF16Rounded = 1 };

size_t n_weights(const WeightRef& w) { return static_cast<size_t>(w.out) * static_cast<size_t>(w.in); }

// W as floats into `out` (out x in): exact dequantisation, or (Q8_0) with d*q rounded to F16 as
// ds4's expansion does.
void dequantize_all(const WeightRef& w, bool f16_round, float* out) {
  for (int64_t r = 0; r < w.out; ++r) {
    float* dst = out + static_cast<size_t>(r) * w.in;
    weight_row_f32(w, r, dst);
    if (f16_round)
      for (int64_t i = 0; i < w.in; ++i) dst[i] = round_f16(dst[i]);
  }
}

// Y = X W^T over fixed 256-output column blocks (so results do not depend on the thread count).
void gemm_blocks(const float* Wf, int64_t out, int64_t in, const float* X, int64_t n, float* Y,
                 ThreadPool* pool) {
  constexpr int64_t kBlock = 256;
  const int64_t n_blocks = (out + kBlock - 1) / kBlock;
  auto run = [&](int64_t b0, int64_t b1) {
    Eigen::Map<const RowMatrix> Xm(X, n, in);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o0 = b * kBlock, cnt = std::min(kBlock, out - o0);
      Eigen::Map<const RowMatrix> Wm(Wf + o0 * in, cnt, in);
      RowMatrix Yb = Xm * Wm.transpose();
      for (int64_t r = 0; r < n; ++r) std::memcpy(Y + r * out + o0, &Yb(r, 0), cnt * sizeof(float));
    }
  };
  if (pool) pool->parallel_for(n_blocks, run, 1);
  else run(0, n_blocks);
}

const char* gemm_variant(const WeightRef& w, const float* X, int64_t n, float* Y, const ExecCtx& ctx,
                         bool round_act) {
  const bool q8 = w.type == QType::Q8_0;
  const WeightCache::Entry Wf = ctx.cache->get(w.data, q8 ? kF16Rounded : kF32Exact, n_weights(w),
                                               [&](float* out) { dequantize_all(w, q8, out); });
  std::vector<float> Xr;
  const float* Xin = X;
  if (round_act) {
    Xr.assign(X, X + n * w.in);
    for (float& v : Xr) v = round_f16(v);
    Xin = Xr.data();
  }
  gemm_blocks(Wf->data(), w.out, w.in, Xin, n, Y, ctx.pool);
  if (q8) return "matmul_q8__gemm_f16";
  if (w.type == QType::F16) return "matmul_f16__gemm_f16act";
  return "matmul_f32__gemm";
}

}  // namespace

void gemm_f32_dequant(const WeightRef& w, const float* X, int64_t n_rows, float* Y, const ExecCtx& ctx) {
  const WeightCache::Entry Wf =
      ctx.cache->get(w.data, kF32Exact, n_weights(w), [&](float* out) { dequantize_all(w, false, out); });
  gemm_blocks(Wf->data(), w.out, w.in, X, n_rows, Y, ctx.pool);
}

const char* linear_gemm(const WeightRef& w, const float* X, int64_t n_rows, float* Y, const ExecCtx& ctx) {
  const bool round_act = w.type == QType::Q8_0 || w.type == QType::F16;
  return gemm_variant(w, X, n_rows, Y, ctx, round_act);
}

// ds4's matmul_q8_0_preq_kernel order: lane t (of 256) sums blocks t, t+256, ... of
// (dw*dx)*isum in F32, then a shared-memory halving tree (stride 128, 64, ..., 1).
const char* linear_preq_tree(const WeightRef& w, const float* X, int64_t n, float* Y, const ExecCtx& ctx) {
  const int64_t nb = w.in / 32;
  for (int64_t r = 0; r < n; ++r) {
    std::vector<float> d(nb);
    std::vector<int8_t> q(w.in);
    quantize_act_q8_0(X + r * w.in, w.in, d.data(), q.data());
    auto rows = [&](int64_t o0, int64_t o1) {
      float lane[256];
      for (int64_t o = o0; o < o1; ++o) {
        const uint8_t* row = w.row(o);
        for (int t = 0; t < 256; ++t) lane[t] = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
          const uint8_t* blk = row + b * 34;
          uint16_t dh;
          std::memcpy(&dh, blk, 2);
          const int8_t* qw = reinterpret_cast<const int8_t*>(blk + 2);
          int32_t isum = 0;
          for (int i = 0; i < 32; ++i) isum += int32_t(qw[i]) * int32_t(q[b * 32 + i]);
          const float dd = f16_to_f32(dh) * d[b];
          lane[b % 256] += dd * static_cast<float>(isum);
        }
        for (int stride = 128; stride >= 1; stride /= 2)
          for (int t = 0; t < stride; ++t) lane[t] += lane[t + stride];
        Y[r * w.out + o] = lane[0];
      }
    };
    if (ctx.pool) ctx.pool->parallel_for(w.out, rows, 64);
    else rows(0, w.out);
  }
  return "matmul_q8__preq_tree";
}

const char* linear_exact(const WeightRef& w, const float* X, int64_t n, float* Y, const ExecCtx& ctx) {
  for (int64_t r = 0; r < n; ++r) matvec_ref(w, X + r * w.in, Y + r * w.out, ctx.profile, ctx.pool);
  return "matvec__ref";
}

}  // namespace ds4
