// Device-resident entry point of the Q8_0 matrix-vector kernels (engine/backend/cuda/
// matvec_q8_0.cu), for benchmarks and, later, the forward pass. No CUDA types.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ds4/cuda_backend.h"

namespace ds4::cuda {

// All pointers are device memory. Shapes and dtypes:
struct MatvecQ8_0Args {
  const void* w = nullptr;   // (out, in) Q8_0 rows of in/32 blocks of 34 bytes; 4-byte aligned
  const float* x = nullptr;  // (n_rows, in) F32 activations
  float* y = nullptr;        // (n_rows, out) F32 result
  int8_t* xq = nullptr;      // (n_rows, in) int8 scratch: quantised activations; 16-byte aligned
  float* xd = nullptr;       // (n_rows, in/32) F32 scratch: activation block scales
  int64_t in = 0;            // positive multiple of 32
  int64_t out = 0;           // >= 1
  int64_t n_rows = 0;        // >= 0
};

// Bytes of a (out, in) Q8_0 weight matrix.
inline size_t q8_0_matrix_bytes(int64_t in, int64_t out) {
  return static_cast<size_t>(out) * static_cast<size_t>(in / 32) * 34u;
}

// The activation quantiser alone: x (n_rows, in) F32 -> xq (n_rows, in) int8, xd (n_rows, in/32)
// F32, bit-equal to ds4::quantize_act_q8_0 row by row (except blocks whose amax is below about
// 4e-37, where 1/d overflows and the CPU's lrintf(inf or NaN) is implementation-defined).
// Device pointers, asynchronous on the default stream; xq 16-byte aligned.
void quantize_act_q8_0_device(const float* x, int64_t n_rows, int64_t in, int8_t* xq, float* xd);

// Quantises x into (xq, xd), then runs variant v; asynchronous on the default stream (launch
// errors are checked, execution errors surface at the next synchronize). Throws ds4::Error on
// bad arguments.
void matvec_q8_0_device(const MatvecQ8_0Args& a, CudaMatvecVariant v);

}  // namespace ds4::cuda
