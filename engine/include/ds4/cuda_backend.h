// CUDA backend: what the device is, and the first ops, behind a backend-neutral API.
//
// No CUDA types here and no #ifdef: with -DDS4_CUDA=ON these functions come from
// engine/backend/cuda/*.cu, with -DDS4_CUDA=OFF from engine/backend/cuda_stub/cuda_stub.cpp, which
// reports the backend as unavailable and throws from every op. Callers test
// cuda_device_info().available instead of a macro.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ds4 {

// The device the CUDA backend runs on (device 0 / the current device), for run manifests and
// test skips. When `available` is false only `why_unavailable` (and the versions that could be
// read) are meaningful.
struct CudaDeviceInfo {
  bool available = false;
  std::string name;                // e.g. "NVIDIA H100 80GB HBM3"
  int sm_count = 0;                // streaming multiprocessors
  int cc_major = 0, cc_minor = 0;  // compute capability (9, 0 for H100/H200)
  size_t total_mem = 0;            // bytes of device memory
  int cuda_runtime_version = 0;    // cudaRuntimeGetVersion, e.g. 13000 for 13.0
  int cublas_version = 0;          // major*10000 + minor*100 + patch, as CUBLAS_VERSION
  std::string why_unavailable;     // one line, e.g. "cudaGetDeviceCount: no CUDA-capable device
                                   // is detected" or "CUDA backend not built (...)"
};

// Queries the runtime; never throws (any failure becomes available = false with a reason).
CudaDeviceInfo cuda_device_info() noexcept;

// Kernel variants of the Q8_0 matrix-vector product (the names follow style.md rule 3; the
// header of engine/backend/cuda/matvec_q8_0.cu describes each one).
enum class CudaMatvecVariant {
  decode_warp8,  // matvec_q8_0__decode_warp8: the N=1 decode kernel, launched once per row
  batch_warp8,   // matvec_q8_0__batch_warp8: one launch for all rows, per-row bit-equal to decode
};

inline const char* cuda_matvec_variant_name(CudaMatvecVariant v) {
  return v == CudaMatvecVariant::decode_warp8 ? "matvec_q8_0__decode_warp8"
                                              : "matvec_q8_0__batch_warp8";
}

// y = W x for n_rows activation rows, host memory in and out (a test and benchmark entry point;
// the forward pass will use device-resident tensors).
//   w_q8_0: (out, in) Q8_0 weights, row o = in/32 blocks of 34 bytes (f16 d, int8 q[32])
//   x:      (n_rows, in) F32 activations
//   y:      (n_rows, out) F32, y[r*out + o] = dot(W row o, x row r)
// Numerics (ds4 profile, both variants): each activation row is quantised to Q8_0 with an F32
// scale per 32 (as ds4::quantize_act_q8_0); per block an exact int32 dot; per lane an F32
// accumulation over blocks lane, lane+32, ...; then a 32-lane shuffle-down tree. The result is
// bit-equal to ds4::q8_0_dot_warp_order_ref (engine/ops/matmul/matvec_warp_order.h).
// in must be a positive multiple of 32; out >= 1; n_rows >= 0.
// Throws ds4::Error (one line) for bad arguments, when CUDA is unavailable, or when a CUDA call
// fails (naming the call and the CUDA error string).
void cuda_matvec_q8_0(const void* w_q8_0, int64_t in, int64_t out, const float* x, int64_t n_rows,
                      float* y, CudaMatvecVariant v);

}  // namespace ds4
