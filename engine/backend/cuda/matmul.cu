// CUDA matmul family, host side: the context (one cuBLAS handle, scratch, occupancy table), the
// device weight matrix, dispatch of ds4::cuda_matmul to the variants, and the cuBLAS variants.
// The exact kernels are in matmul_q8_0.cu (Q8_0) and matmul_ordered.cu (F16/F32); every
// variant is listed with its numerics in ds4/cuda_matmul.h.
//
// cuBLAS variants (ds4-dispatch.md §1.2 Q1, F1, F3, A1; all deterministic on one GPU and
// cuBLAS version, none bit-equal to __exact):
//   matmul_q8__gemm_f16      Strategy: activations rounded to F16 (f32_to_f16_kernel), then
//       cublasGemmEx on the matrix's F16 copy (d*q rounded to F16), CUBLAS_COMPUTE_32F, default
//       math and algorithm: tensor-core tiles with F32 accumulation in cuBLAS's order. Grouped
//       matrices (out A) use cublasGemmStridedBatchedEx over the groups, as ds4 does.
//       Numerics: both inputs of the products differ from decode (no int8 activation
//       quantisation, half-rounded weights), and the order differs. Reads 2 bytes per weight.
//   matmul_f16__gemm_f16act  Strategy: the same GemmEx on the F16 weights as stored.
//   matmul_f32__gemm         Strategy: cublasGemmEx in F32 (CUBLAS_COMPUTE_32F: no TF32).
//   matmul_f32__gemm_tf32    Strategy: cublasGemmEx with CUBLAS_COMPUTE_32F_FAST_TF32 (inputs
//       rounded to TF32 inside the tensor cores), ds4's default cuBLAS math for SGEMM.
//
// Row-major y (n, out) = x (n, in) · Wᵀ is, in cuBLAS's column-major terms, Y (out x n) =
// Wc (in x out)ᵀ · Xc (in x n) with lda = ldb = in (groups: ldb = groups*in), ldc = out.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/matmul_impl.h"
#include "backend/cuda/matvec_q8_0.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"

namespace ds4 {

namespace {

constexpr int kQ8Elems = 32;
constexpr int kQ8Bytes = 34;
constexpr size_t kPlaneAlign = 256;

void check_cublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail(std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(s)) + " (" +
       cublasGetStatusString(s) + ")");
}

size_t elem_bytes(CudaWeightType t) { return t == CudaWeightType::f16 ? 2 : 4; }

int to_int(int64_t v, const char* what) {
  if (v > INT_MAX) fail(std::string(what) + " = " + std::to_string(v) + " exceeds cuBLAS's int");
  return static_cast<int>(v);
}

}  // namespace

// ============================================================================================
// CudaMatmulContext
// ============================================================================================

CudaMatmulContext::Impl::~Impl() {
  if (cublas) (void)cublasDestroy(static_cast<cublasHandle_t>(cublas));
}

int CudaMatmulContext::Impl::blocks_per_sm(const void* kernel, size_t smem, const char* name) {
  const auto key = std::make_pair(kernel, smem);
  const auto it = occupancy_.find(key);
  if (it != occupancy_.end()) return it->second;
  if (smem > static_cast<size_t>(smem_optin)) {
    fail(std::string(name) + ": needs " + std::to_string(smem) +
         " bytes of shared memory, the device allows " + std::to_string(smem_optin));
  }
  if (smem > 48 * 1024) {
    cuda::check(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  }
  int n = 0;
  cuda::check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, 256, smem),
              "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (n < 1) fail(std::string(name) + ": no block fits on a multiprocessor");
  occupancy_.emplace(key, n);
  return n;
}

void* CudaMatmulContext::Impl::scratch(cuda::DeviceBuffer& buf, size_t bytes) {
  if (buf.size() < bytes) {
    buf = cuda::DeviceBuffer();  // free first: the peak is the new size, not old + new
    buf = cuda::DeviceBuffer(bytes + bytes / 4);
  }
  return buf.get();
}

CudaMatmulContext::CudaMatmulContext() : impl_(std::make_unique<Impl>()) {
  cuda::require_device("CudaMatmulContext");
  int dev = 0;
  cuda::check(cudaGetDevice(&dev), "cudaGetDevice");
  cuda::check(cudaDeviceGetAttribute(&impl_->sm_count, cudaDevAttrMultiProcessorCount, dev),
              "cudaDeviceGetAttribute(MultiProcessorCount)");
  cuda::check(
      cudaDeviceGetAttribute(&impl_->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
      "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  cuda::check(cudaDeviceGetAttribute(&impl_->l2_bytes, cudaDevAttrL2CacheSize, dev),
              "cudaDeviceGetAttribute(L2CacheSize)");
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "cublasCreate");
  impl_->cublas = h;
  // Default math (no TF32 unless a call asks for it by compute type); default stream.
  check_cublas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

CudaMatmulContext::~CudaMatmulContext() = default;
CudaMatmulContext::CudaMatmulContext(CudaMatmulContext&&) noexcept = default;
CudaMatmulContext& CudaMatmulContext::operator=(CudaMatmulContext&&) noexcept = default;

// ============================================================================================
// CudaMatrix
// ============================================================================================

CudaMatrix::CudaMatrix(CudaWeightType type, int64_t in, int64_t out, int64_t groups,
                       const void* host, bool gemm_copy)
    : impl_(std::make_unique<Impl>()) {
  const std::string what = std::string("CudaMatrix(") + cuda_weight_type_name(type) + ", in " +
                           std::to_string(in) + ", out " + std::to_string(out) + ", groups " +
                           std::to_string(groups) + ")";
  if (in < 1 || out < 1 || groups < 1) fail(what + ": dimensions must be >= 1");
  if (type == CudaWeightType::q8_0 && in % kQ8Elems != 0) {
    fail(what + ": Q8_0 needs in to be a multiple of 32");
  }
  if (!host) fail(what + ": null host data");
  cuda::require_device(what.c_str());
  Impl& m = *impl_;
  m.type = type;
  m.in = in;
  m.out = out;
  m.groups = groups;
  const int64_t rows = m.rows();
  if (type != CudaWeightType::q8_0) {
    const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(in) * elem_bytes(type);
    m.data = cuda::DeviceBuffer(bytes);
    m.data.upload(host, bytes);
    return;
  }
  // Q8_0: split the GGUF blocks into the quant plane and the scale plane on the host.
  const int64_t nb = in / kQ8Elems;
  const size_t quant_bytes = static_cast<size_t>(rows) * static_cast<size_t>(in);
  m.scales_offset = (quant_bytes + kPlaneAlign - 1) / kPlaneAlign * kPlaneAlign;
  // The scale plane is padded to 256 bytes: kernels prefetch it in 16-byte aligned pieces.
  const size_t scale_bytes = static_cast<size_t>(rows) * nb * 2;
  const size_t total =
      m.scales_offset + (scale_bytes + kPlaneAlign - 1) / kPlaneAlign * kPlaneAlign;
  std::vector<uint8_t> planes(total);
  const auto* src = static_cast<const uint8_t*>(host);
  uint8_t* q = planes.data();
  uint8_t* d = planes.data() + m.scales_offset;
  const size_t blocks = static_cast<size_t>(rows) * nb;
  for (size_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = src + b * kQ8Bytes;
    d[2 * b] = blk[0];
    d[2 * b + 1] = blk[1];
    std::memcpy(q + b * kQ8Elems, blk + 2, kQ8Elems);
  }
  m.data = cuda::DeviceBuffer(total);
  m.data.upload(planes.data(), total);
  if (gemm_copy) {
    m.gemm = cuda::DeviceBuffer(quant_bytes * 2);
    cuda::launch_q8_expand_f16(m, m.gemm.get());
    cuda::synchronize("CudaMatrix: F16 expansion");
  }
}

CudaMatrix::~CudaMatrix() = default;
CudaMatrix::CudaMatrix(CudaMatrix&&) noexcept = default;
CudaMatrix& CudaMatrix::operator=(CudaMatrix&&) noexcept = default;

CudaWeightType CudaMatrix::type() const { return impl_->type; }
int64_t CudaMatrix::in() const { return impl_->in; }
int64_t CudaMatrix::out() const { return impl_->out; }
int64_t CudaMatrix::groups() const { return impl_->groups; }

size_t CudaMatrix::stored_bytes() const {
  const Impl& m = *impl_;
  const size_t n = static_cast<size_t>(m.rows()) * static_cast<size_t>(m.in);
  return m.type == CudaWeightType::q8_0 ? n / kQ8Elems * kQ8Bytes : n * elem_bytes(m.type);
}

size_t CudaMatrix::gemm_bytes() const {
  const Impl& m = *impl_;
  if (m.type != CudaWeightType::q8_0) return stored_bytes();
  return m.gemm.size();
}

// ============================================================================================
// cuBLAS variants
// ============================================================================================

namespace {

// y (n, groups*out) = a (rows, in) · b (n, groups*in)ᵀ per group.
void gemm(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const void* a,
          cudaDataType_t a_type, const void* b, cudaDataType_t b_type, int64_t n, float* y,
          cublasComputeType_t compute, const char* name) {
  auto h = static_cast<cublasHandle_t>(ctx.cublas);
  const float alpha = 1.0f, beta = 0.0f;
  const int m_ = to_int(w.out, "out"), n_ = to_int(n, "n_rows"), k_ = to_int(w.in, "in");
  const int ldb = to_int(w.groups * w.in, "groups*in");
  const int ldc = to_int(w.groups * w.out, "groups*out");
  if (w.groups == 1) {
    check_cublas(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m_, n_, k_, &alpha, a, a_type, k_, b,
                              b_type, ldb, &beta, y, CUDA_R_32F, ldc, compute, CUBLAS_GEMM_DEFAULT),
                 name);
  } else {
    check_cublas(
        cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m_, n_, k_, &alpha, a, a_type, k_,
                                   static_cast<long long>(w.out) * w.in, b, b_type, ldb,
                                   static_cast<long long>(w.in), &beta, y, CUDA_R_32F, ldc,
                                   static_cast<long long>(w.out), to_int(w.groups, "groups"),
                                   compute, CUBLAS_GEMM_DEFAULT),
        name);
  }
}

// x rounded to F16 into the context's scratch.
const void* f16_activations(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const float* x,
                            int64_t n_rows) {
  const int64_t count = n_rows * w.groups * w.in;
  void* h = ctx.scratch(ctx.xh, static_cast<size_t>(count) * 2);
  cuda::launch_f32_to_f16(x, h, count);
  return h;
}

// x quantised to Q8_0 (F32 scales) into the context's scratch: quantize_act_q8_0_device, the
// quantiser bit-equal to ds4::quantize_act_q8_0 (backend/cuda/matvec_q8_0.h).
void q8_activations(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const float* x,
                    int64_t n_rows, int8_t** xq, float** xd) {
  const int64_t cols = w.groups * w.in;
  *xq = static_cast<int8_t*>(ctx.scratch(ctx.xq, static_cast<size_t>(n_rows * cols)));
  *xd = static_cast<float*>(ctx.scratch(ctx.xd, static_cast<size_t>(n_rows * cols / 32) * 4));
  cuda::quantize_act_q8_0_device(x, n_rows, cols, *xq, *xd);
}

bool aligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

}  // namespace

// ============================================================================================
// Dispatch
// ============================================================================================

void cuda_matmul(CudaMatmulContext& ctx, const CudaMatrix& w, const float* x, int64_t n_rows,
                 float* y, CudaMatmulVariant v) {
  const CudaMatmulVariantInfo& info = cuda_matmul_variant_info(v);
  const CudaMatrix::Impl& m = w.impl();
  if (info.type != m.type) {
    fail(std::string(info.name) + ": runs on " + cuda_weight_type_name(info.type) +
         " weights, the matrix is " + cuda_weight_type_name(m.type));
  }
  if (n_rows < 0) fail(std::string(info.name) + ": negative n_rows");
  if (n_rows == 0) return;
  if (!x || !y) fail(std::string(info.name) + ": null device pointer");
  if (!aligned(x, 16) || !aligned(y, 4)) {
    fail(std::string(info.name) + ": x must be 16-byte aligned and y 4-byte aligned");
  }
  CudaMatmulContext::Impl& c = ctx.impl();
  switch (v) {
    case CudaMatmulVariant::q8_decode:
      cuda::launch_q8_decode(c, m, x, n_rows, y);
      return;
    case CudaMatmulVariant::q8_batch: {
      int8_t* xq = nullptr;
      float* xd = nullptr;
      q8_activations(c, m, x, n_rows, &xq, &xd);
      cuda::launch_q8_batch(c, m, xq, xd, n_rows, y);
      return;
    }
    case CudaMatmulVariant::q8_batch_imma: {
      int8_t* xq = nullptr;
      float* xd = nullptr;
      q8_activations(c, m, x, n_rows, &xq, &xd);
      cuda::launch_q8_batch_imma(c, m, xq, xd, n_rows, y);
      return;
    }
    case CudaMatmulVariant::q8_preq_tree: {
      int8_t* xq = nullptr;
      float* xd = nullptr;
      q8_activations(c, m, x, n_rows, &xq, &xd);
      cuda::launch_q8_preq_tree(m, xq, xd, n_rows, y);
      return;
    }
    case CudaMatmulVariant::q8_gemm_f16:
      if (m.gemm.size() == 0) {
        fail(std::string(info.name) + ": the matrix has no F16 copy (CudaMatrix gemm_copy)");
      }
      gemm(c, m, m.gemm.get(), CUDA_R_16F, f16_activations(c, m, x, n_rows), CUDA_R_16F, n_rows, y,
           CUBLAS_COMPUTE_32F, info.name);
      return;
    case CudaMatmulVariant::f16_gemm:
      gemm(c, m, m.data.get(), CUDA_R_16F, f16_activations(c, m, x, n_rows), CUDA_R_16F, n_rows, y,
           CUBLAS_COMPUTE_32F, info.name);
      return;
    case CudaMatmulVariant::f32_gemm:
      gemm(c, m, m.data.get(), CUDA_R_32F, x, CUDA_R_32F, n_rows, y, CUBLAS_COMPUTE_32F, info.name);
      return;
    case CudaMatmulVariant::f32_gemm_tf32:
      gemm(c, m, m.data.get(), CUDA_R_32F, x, CUDA_R_32F, n_rows, y, CUBLAS_COMPUTE_32F_FAST_TF32,
           info.name);
      return;
    case CudaMatmulVariant::f16_decode:
    case CudaMatmulVariant::f32_decode:
      cuda::launch_ordered(m, x, n_rows, y, false);
      return;
    case CudaMatmulVariant::f16_batch:
    case CudaMatmulVariant::f32_batch:
      cuda::launch_ordered(m, x, n_rows, y, true);
      return;
  }
  fail("cuda_matmul: unknown variant " + std::to_string(static_cast<int>(v)));
}

}  // namespace ds4
