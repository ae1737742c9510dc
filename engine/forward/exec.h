// What every op of a forward needs besides its tensors: the profile, the gate settings, the thread
// pool, whether this call is batched (gates only apply at N >= 2: N = 1 is decode, always exact),
// and the cache of dequantised weight copies used by the GEMM variants.
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
// built on first use, keyed by the weight's data pointer and the conversion.
class WeightCache {
 public:
  // Returns W (out x in, row-major floats) for `key` (data pointer), building it with `build`.
  const std::vector<float>& get(const void* key, int kind, const std::function<std::vector<float>()>& build);

 private:
  std::mutex mutex_;
  std::map<std::pair<const void*, int>, std::unique_ptr<std::vector<float>>> entries_;
};

struct ExecCtx {
  Profile profile = Profile::Ds4;
  const GateSet* gates = nullptr;
  ThreadPool* pool = nullptr;
  WeightCache* cache = nullptr;
  bool batched = false;  // n_tokens >= 2
  // True when the gate's fast variant applies to this call.
  bool fast(Gate g) const { return batched && gates && gates->fast(g); }
};

}  // namespace ds4
