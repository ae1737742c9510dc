// What every CPU op of a forward needs besides its tensors: the profile, the thread pool and the
// cache of dequantised weight copies used by the GEMM variants. Which variant runs (the gates, and
// N = 1 always exact) is the graph's choice (engine/forward/graph.cpp), not the op's.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "ds4/engine.h"
#include "ds4/gates.h"

namespace ds4 {

class ThreadPool;

// Dequantised copies of weights for the GEMM variants (like ds4's Q8 -> F16 expansion cache):
// built on first use, keyed by the weight's data pointer and the conversion. The copies are F32,
// so keeping every one would hold ~4-16x the quantised model (about 1 TB for Flash): the cache
// keeps at most `budget_bytes` and drops the least recently used copies to make room. A dropped
// copy is rebuilt from the same bytes by the same code, so results never depend on the budget.
// A single copy larger than the budget is an error naming DS4_CPU_DEQUANT_CACHE_MB (it would
// otherwise have to be allocated anyway, unbounded).
class WeightCache {
 public:
  using Entry = std::shared_ptr<const std::vector<float>>;
  // Fills `out` (n_floats values) with the dequantised weight.
  using Fill = std::function<void(float* out)>;
  explicit WeightCache(int64_t budget_bytes = kDefaultBudgetBytes) : budget_(budget_bytes) {}
  // Returns W (out x in, row-major floats) for `key` (data pointer), building it with `fill`.
  // The returned pointer keeps the copy alive while the caller uses it, even if a later get()
  // drops it from the cache.
  Entry get(const void* key, int kind, size_t n_floats, const Fill& fill);
  int64_t bytes_held() const;  // copies and recycled buffers
  int64_t budget_bytes() const { return budget_; }
  static constexpr int64_t kDefaultBudgetBytes = int64_t{512} << 20;

 private:
  using Key = std::pair<const void*, int>;
  using Buffer = std::shared_ptr<std::vector<float>>;
  struct Slot {
    Buffer data;
    uint64_t last_use = 0;
  };
  static int64_t bytes_of(const Buffer& b) { return static_cast<int64_t>(b->capacity() * sizeof(float)); }
  Buffer take_buffer(size_t n_floats);  // a recycled buffer or a new one, within the budget

  mutable std::mutex mutex_;
  std::map<Key, Slot> entries_;
  // Buffers of dropped copies, reused for the next ones: copies are tens of MiB, and a fresh
  // allocation of that size is a fresh mmap whose every page faults in (most of a cold prefill's
  // time was the kernel zeroing pages).
  std::vector<Buffer> spare_;
  int64_t budget_;
  int64_t held_ = 0;  // bytes of entries_ and spare_ (by capacity)
  uint64_t clock_ = 0;
};

// DS4_CPU_DEQUANT_CACHE_MB in bytes (read in config.cpp, the only reader of the environment);
// WeightCache::kDefaultBudgetBytes when it is unset.
int64_t cpu_dequant_cache_budget_bytes();

struct ExecCtx {
  Profile profile = Profile::Ds4;
  ThreadPool* pool = nullptr;
  WeightCache* cache = nullptr;
};

}  // namespace ds4
