// Internals of the CUDA matmul family shared by engine/backend/cuda/matmul*.cu: the state behind
// the opaque CudaMatmulContext / CudaMatrix handles of ds4/cuda_matmul.h and the kernel
// launchers. No CUDA types (the cuBLAS handle is kept as void*), so host-only code may include it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>

#include "backend/cuda/device.h"
#include "ds4/cuda_matmul.h"

namespace ds4 {

struct CudaMatrix::Impl {
  CudaWeightType type = CudaWeightType::f32;
  int64_t in = 0, out = 0, groups = 1;  // per-group (out, in); groups stacked along out
  // Q8_0: quant plane (rows, in) int8 at offset 0, scale plane (rows, in/32) f16 bits at
  // `scales_offset` (256-byte aligned). F16 / F32: (rows, in) row-major.
  cuda::DeviceBuffer data;
  size_t scales_offset = 0;
  cuda::DeviceBuffer gemm;  // Q8_0 only: (rows, in) F16, d*q rounded to F16 (cuBLAS path)

  int64_t rows() const { return out * groups; }
  int64_t blocks() const { return in / 32; }
  const int8_t* quants() const { return data.as<int8_t>(); }
  const uint16_t* scales() const {
    return reinterpret_cast<const uint16_t*>(static_cast<const char*>(data.get()) + scales_offset);
  }
};

struct CudaMatmulContext::Impl {
  Impl() = default;
  ~Impl();  // destroys the cuBLAS handle (matmul.cu)
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void* cublas = nullptr;  // cublasHandle_t
  int sm_count = 0;        // multiprocessors of the current device
  int smem_optin = 0;      // bytes of dynamic shared memory a block may opt in to
  int l2_bytes = 0;        // L2 cache size
  // Activation scratch, grown on demand (a regrow frees the old buffer; cudaFree waits for the
  // device, so kernels still reading it finish first).
  cuda::DeviceBuffer xq;  // (n_rows, groups*in) int8 quantised activations
  cuda::DeviceBuffer xd;  // (n_rows, groups*in/32) F32 activation scales
  cuda::DeviceBuffer xh;  // (n_rows, groups*in) F16 activations for cuBLAS

  // Resident blocks per SM of `kernel` at 256 threads and `smem` dynamic bytes, cached; raises
  // the kernel's dynamic shared memory limit to smem_optin first when smem > 48 KiB. Throws when
  // the kernel cannot run with that much shared memory.
  int blocks_per_sm(const void* kernel, size_t smem, const char* name);
  // `buf` grown to at least `bytes`; returns its device pointer.
  void* scratch(cuda::DeviceBuffer& buf, size_t bytes);

 private:
  std::map<std::pair<const void*, size_t>, int> occupancy_;
};

namespace cuda {

// ---- matmul_q8_0.cu ----
// Q8_0 planes kernels; all pointers are device memory; launches on the default stream.
// x: (n_rows, groups*in) F32 (decode); xq/xd: quantize_act_q8_0_device of x (batch, preq);
// y: (n_rows, groups*out) F32.
void launch_q8_decode(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const float* x,
                      int64_t n_rows, float* y);
void launch_q8_batch(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const int8_t* xq,
                     const float* xd, int64_t n_rows, float* y);
void launch_q8_batch_imma(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const int8_t* xq,
                          const float* xd, int64_t n_rows, float* y);
void launch_q8_preq_tree(const CudaMatrix::Impl& w, const int8_t* xq, const float* xd,
                         int64_t n_rows, float* y);
// w.gemm = F16 expansion of the planes (d*q rounded to F16, as ds4's expansion cache).
void launch_q8_expand_f16(const CudaMatrix::Impl& w, void* dst_f16);
// h[i] = F16 round-to-nearest of x[i], i < n.
void launch_f32_to_f16(const float* x, void* h, int64_t n);

// ---- matmul_ordered.cu ----
// F16 / F32 ordered-chunks kernels. batch = false: the N=1 kernel launched once per row.
void launch_ordered(const CudaMatrix::Impl& w, const float* x, int64_t n_rows, float* y,
                    bool batch);

}  // namespace cuda
}  // namespace ds4
