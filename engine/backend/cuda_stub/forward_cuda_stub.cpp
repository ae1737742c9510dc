// The CUDA Session without CUDA (-DDS4_CUDA=OFF): creating one throws a one-line error.
// DS4_HAVE_CUDA is set (0 or 1) by engine/CMakeLists.txt.
#if !DS4_HAVE_CUDA
#include "backend/cuda/forward_cuda.h"
#include "ds4/error.h"

namespace ds4 {

std::unique_ptr<CudaSession> CudaSession::create(std::shared_ptr<const Model>, const SessionOptions&, TapSink**) {
  fail("--backend cuda: CUDA backend not built (configure with -DDS4_CUDA=ON)");
}

}  // namespace ds4
#endif
