// Glue kernels and memory helpers of the CUDA forward; see forward_cuda_kernels.h.
#include <cuda_runtime.h>

#include <cmath>

#include "backend/cuda/device.h"
#include "backend/cuda/forward_cuda_kernels.h"

namespace ds4::cuda {

void* device_malloc_or_null(size_t bytes) noexcept {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error state of a failed allocation
    return nullptr;
  }
  return p;
}
void device_free(void* p) noexcept {
  if (p) (void)cudaFree(p);
}
// Pageable host -> device with cudaMemcpyAsync: the source is copied to a staging buffer before
// the call returns (so the caller may free it), and unlike cudaMemcpy no device synchronisation
// is performed first: the forward's small uploads (positions, candidate lists, routing) do not
// drain the queue.
void copy_h2d(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, 0), "forward: cudaMemcpyAsync H2D");
}
void copy_d2h(void* dst, const void* src, size_t bytes) {
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "forward: cudaMemcpy D2H");
}
void copy_d2d(void* dst, const void* src, size_t bytes) {
  if (bytes)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0), "forward: cudaMemcpyAsync D2D");
}
void memset_async(void* dst, int value, size_t bytes) {
  if (bytes) check(cudaMemsetAsync(dst, value, bytes, 0), "forward: cudaMemsetAsync");
}

namespace {
constexpr int kT = 256;
unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kT - 1) / kT); }

__global__ void fill_kernel(float* y, float v, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = v;
}

// As swiglu_clamped_ref: gi/(1+exp(-gi))*ui, F32 operations in the same order, no contraction.
__global__ void swiglu_kernel(const float* g, const float* u, float* h, int64_t n, float limit) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float gi = g[i], ui = u[i];
  if (limit > 1e-6f) {
    gi = fminf(gi, limit);
    ui = fmaxf(fminf(ui, limit), -limit);
  }
  const float e = static_cast<float>(exp(static_cast<double>(-gi)));
  h[i] = __fmul_rn(__fdiv_rn(gi, __fadd_rn(1.0f, e)), ui);
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = __fadd_rn(y[i], x[i]);
}

__global__ void ape_kernel(float* G, const float* ape, int64_t n_rows, int width, int ratio, int64_t pos0) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n_rows * width) return;
  const int64_t r = i / width;
  const int j = static_cast<int>(i % width);
  const int u = static_cast<int>((pos0 + r) % ratio);
  G[i] = __fadd_rn(G[i], ape[static_cast<int64_t>(u) * width + j]);
}

__global__ void cand_kernel(int32_t* cand, int max_cand, const int32_t* n_raw, const int32_t* idx, int k,
                            const int32_t* count, int64_t n_rows, int32_t base) {
  const int64_t r = blockIdx.x;
  if (r >= n_rows) return;
  for (int j = threadIdx.x; j < count[r]; j += blockDim.x)
    cand[r * max_cand + n_raw[r] + j] = base + idx[r * k + j];
}

__global__ void scale_rows_kernel(float* x, const float* w, int64_t n_rows, int64_t width) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n_rows * width) x[i] = __fmul_rn(x[i], w[i / width]);
}

__global__ void copy_rows_kernel(float* dst, const int32_t* dst_idx, const float* src, const int32_t* src_idx,
                                 int64_t n_rows, int64_t width) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n_rows * width) return;
  const int64_t r = i / width, j = i % width;
  const int64_t rd = dst_idx ? dst_idx[r] : r, rs = src_idx ? src_idx[r] : r;
  dst[rd * width + j] = src[rs * width + j];
}
}  // namespace

void scale_rows(float* x, const float* w, int64_t n_rows, int64_t width) {
  if (n_rows <= 0 || width <= 0) return;
  scale_rows_kernel<<<blocks_for(n_rows * width), kT>>>(x, w, n_rows, width);
  check(cudaGetLastError(), "scale_rows__rows launch");
}
void copy_rows(float* dst, const int32_t* dst_idx, const float* src, const int32_t* src_idx, int64_t n_rows,
               int64_t width) {
  if (n_rows <= 0 || width <= 0) return;
  copy_rows_kernel<<<blocks_for(n_rows * width), kT>>>(dst, dst_idx, src, src_idx, n_rows, width);
  check(cudaGetLastError(), "copy_rows__rows launch");
}

void fill_f32(float* dst, float v, int64_t n) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kT>>>(dst, v, n);
  check(cudaGetLastError(), "fill_f32 launch");
}
void swiglu_clamped(const float* g, const float* u, float* h, int64_t n, float limit) {
  if (n <= 0) return;
  swiglu_kernel<<<blocks_for(n), kT>>>(g, u, h, n, limit);
  check(cudaGetLastError(), "swiglu_clamped__rows launch");
}
void add_inplace(float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<blocks_for(n), kT>>>(y, x, n);
  check(cudaGetLastError(), "add__rows launch");
}
void ape_add(float* G, const float* ape, int64_t n_rows, int width, int ratio, int64_t pos0) {
  if (n_rows <= 0) return;
  ape_kernel<<<blocks_for(n_rows * width), kT>>>(G, ape, n_rows, width, ratio, pos0);
  check(cudaGetLastError(), "ape_add__rows launch");
}
void cand_indexed(int32_t* cand, int max_cand, const int32_t* n_raw, const int32_t* idx, int k,
                  const int32_t* count, int64_t n_rows, int32_t base) {
  if (n_rows <= 0) return;
  cand_kernel<<<static_cast<unsigned>(n_rows), 256>>>(cand, max_cand, n_raw, idx, k, count, n_rows, base);
  check(cudaGetLastError(), "cand_indexed__rows launch");
}

}  // namespace ds4::cuda
