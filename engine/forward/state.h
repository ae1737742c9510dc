// Per-session state: every cache a decode step writes, so that a batched forward can be checked
// to leave exactly what N decodes leave (SessionState is compared bytewise).
#pragma once
#include <cstdint>
#include <vector>

#include "ops/compressor/compressor.h"

namespace ds4 {

struct LayerState {
  // Raw sliding window: a ring of `window` rows of head_dim floats; the row of position p lives
  // in slot p mod window. Values are what attention reads (FP8/F16-rounded in the ds4 profile).
  std::vector<float> raw;
  CompressorState comp;             // ratio != 0
  std::vector<float> comp_rows;     // emitted compressed rows, n x head_dim
  CompressorState idx_comp;         // ratio 4
  std::vector<float> idx_rows;      // emitted indexer rows, n x idx_head_dim
};

}  // namespace ds4

namespace ds4 {
struct SessionState {
  int64_t pos = 0;                  // next position
  std::vector<LayerState> layers;   // trunk
  std::vector<float> last_hc;       // trunk final HC state of position pos-1 (n_hc * d)
  std::vector<LayerState> mtp;      // MTP block raw window (its own positions)
  int64_t mtp_pos = 0;
};
}  // namespace ds4
