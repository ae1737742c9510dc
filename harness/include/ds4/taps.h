// Tap capture settings shared by the dump writer, the run drivers and `ds4-parity`: the capture
// level, the filter (layer / tap name / position), and the per-tensor statistics that a `stats`
// dump keeps instead of the data.
//
// Statistics are defined once here so that writer, reader and diff agree on them:
//   absmax    = max |x| over the finite elements (0 when there are none), fp64
//   mean      = sum of the finite elements / their count, summed in fp64 in index order
//               (0 when there are none)
//   nan_count = number of NaN elements, inf_count = number of +-Inf elements
//   hash      = FNV-1a 64 of the raw float32 bytes in memory order (little-endian on every
//               platform we build for), so equal hashes mean bit-equal tensors with overwhelming
//               probability and -0.0 vs +0.0 hash differently (metrics.md §1 counts it as a
//               bit difference).
// NaN and Inf are kept out of absmax/mean so that one Inf does not hide the magnitude of the
// rest; the counts report them separately.
#pragma once
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>

namespace ds4 {

enum class TapLevel { Off, Stats, Full };

const char* tap_level_name(TapLevel level);  // "off" | "stats" | "full"
// Throws ds4::Error "tap level 'x' is not one of off|stats|full".
TapLevel tap_level_from_name(const std::string& name);

// Which taps are captured. Empty sets mean "all"; positions are the half-open range
// [pos_begin, pos_end).
struct TapFilter {
  std::set<int> layers;
  std::set<std::string> names;
  int64_t pos_begin = 0, pos_end = INT64_MAX;

  bool matches(int layer, const std::string& name, int64_t pos) const;
  bool matches_all() const {
    return layers.empty() && names.empty() && pos_begin == 0 && pos_end == INT64_MAX;
  }

  // Parses the three command-line fields (each empty = all):
  //   layers    "0,2-3" (inclusive ranges; "-1" = the output head; negative numbers only alone)
  //   names     "q,kv,result_output" (tap names, ds4-model.md §12)
  //   positions "10-20" (inclusive), "5", or "100-" (from 100 on)
  // Throws ds4::Error naming the field and the bad item, e.g. "tap filter layers: bad item 'x2'".
  static TapFilter parse(const std::string& layers, const std::string& names,
                         const std::string& positions);
  // The canonical text form, "layers=0,2-3 names=kv,q positions=10-20" (fields at "all" are
  // omitted; "all" when nothing is filtered). parse() of the three fields gives the same filter.
  std::string to_string() const;
};

struct TensorStats {
  double absmax = 0, mean = 0;
  uint64_t nan_count = 0, inf_count = 0;
  uint64_t hash = 0;
  bool operator==(const TensorStats&) const = default;
};

// FNV-1a 64 of `n` bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
uint64_t fnv1a64(const void* data, size_t n);
// The statistics of one tensor of n floats, as defined at the top of this file.
TensorStats compute_stats(const float* data, size_t n);

}  // namespace ds4
