// The CUDA matmul API (ds4/cuda_matmul.h) and the benchmark helpers (backend/cuda/l2_flush.h)
// in a build without CUDA (-DDS4_CUDA=OFF): every constructor and call throws ds4::Error. With
// -DDS4_CUDA=ON the definitions come from engine/backend/cuda/{matmul*,l2_flush}.cu and this
// file compiles to nothing.
#if !DS4_HAVE_CUDA

#include <string>

#include "backend/cuda/l2_flush.h"
#include "ds4/cuda_matmul.h"
#include "ds4/error.h"

namespace ds4 {

namespace {

[[noreturn]] void not_built(const char* what) {
  fail(std::string(what) + ": CUDA backend not built (configure with -DDS4_CUDA=ON)");
}

}  // namespace

struct CudaMatmulContext::Impl {};
struct CudaMatrix::Impl {};

CudaMatmulContext::CudaMatmulContext() { not_built("CudaMatmulContext"); }
CudaMatmulContext::~CudaMatmulContext() = default;
CudaMatmulContext::CudaMatmulContext(CudaMatmulContext&&) noexcept = default;
CudaMatmulContext& CudaMatmulContext::operator=(CudaMatmulContext&&) noexcept = default;

CudaMatrix::CudaMatrix(CudaWeightType, int64_t, int64_t, int64_t, const void*, bool) {
  not_built("CudaMatrix");
}
CudaMatrix::~CudaMatrix() = default;
CudaMatrix::CudaMatrix(CudaMatrix&&) noexcept = default;
CudaMatrix& CudaMatrix::operator=(CudaMatrix&&) noexcept = default;
CudaWeightType CudaMatrix::type() const { not_built("CudaMatrix::type"); }
int64_t CudaMatrix::in() const { not_built("CudaMatrix::in"); }
int64_t CudaMatrix::out() const { not_built("CudaMatrix::out"); }
int64_t CudaMatrix::groups() const { not_built("CudaMatrix::groups"); }
size_t CudaMatrix::stored_bytes() const { not_built("CudaMatrix::stored_bytes"); }
size_t CudaMatrix::gemm_bytes() const { not_built("CudaMatrix::gemm_bytes"); }

void cuda_matmul(CudaMatmulContext&, const CudaMatrix&, const float*, int64_t, float*,
                 CudaMatmulVariant v) {
  not_built(cuda_matmul_variant_name(v));
}

namespace cuda {
void l2_read_pass(const void*, size_t, void*) { not_built("l2_read_pass"); }
void launch_noop() { not_built("launch_noop"); }
}  // namespace cuda

}  // namespace ds4

#endif  // !DS4_HAVE_CUDA
