// Device memory helpers and the small glue kernels of the CUDA forward (forward_cuda*.cpp).
// No CUDA types: the forward's host code is plain C++ in libds4_engine; these definitions live
// in libds4_cuda (forward_cuda_kernels.cu). Everything runs on the default stream.
//
// Variants (style.md rule 3; one each, all row-independent and deterministic):
//   swiglu_clamped__rows   h = silu(min(g, L)) * clamp(u, -L, L), as swiglu_clamped_ref
//                          (exp as (float)exp(double): see ops_cuda.h for the exp tier)
//   add__rows              y += x elementwise (F32, the CPU's Y[i] += S[i])
//   ape_add__rows          G[r][j] += ape[(pos0 + r) mod ratio][j] (the CPU's g = g_in + ape_u)
//   cand_indexed__rows     candidate rows of indexed attention: cand[r][n_raw[r] + j] =
//                          base + idx[r][j] for j < count[r] (the top-k order, unchanged)
//   scale_rows__rows       x[r][j] *= w[r] (F32, the CPU's h[i] *= weight in expert_ffn_ref)
//   copy_rows__rows        dst[dst_idx[r]] = src[src_idx[r]] row copies (gather/scatter; bits kept)
#pragma once
#include <cstddef>
#include <cstdint>

namespace ds4::cuda {

// cudaMalloc; nullptr on failure (the caller names the allocation in its error).
void* device_malloc_or_null(size_t bytes) noexcept;
void device_free(void* p) noexcept;
// Throw ds4::Error naming the call. copy_h2d: queued on the default stream, the (pageable)
// source may be reused when it returns; copy_d2h: waits for the queue and the copy.
void copy_h2d(void* dst, const void* src, size_t bytes);
void copy_d2h(void* dst, const void* src, size_t bytes);
// Asynchronous on the default stream.
void copy_d2d(void* dst, const void* src, size_t bytes);
void memset_async(void* dst, int value, size_t bytes);
// Fills n floats with v (asynchronous).
void fill_f32(float* dst, float v, int64_t n);

void swiglu_clamped(const float* g, const float* u, float* h, int64_t n, float limit);
void add_inplace(float* y, const float* x, int64_t n);
void ape_add(float* G, const float* ape, int64_t n_rows, int width, int ratio, int64_t pos0);
// x (n_rows, width) F32 in place, w (n_rows) F32.
void scale_rows(float* x, const float* w, int64_t n_rows, int64_t width);
// Row r of n_rows: dst (.., width) row dst_idx[r] = src (.., width) row src_idx[r]; a null index
// array means the identity. Device int32 indices; asynchronous.
void copy_rows(float* dst, const int32_t* dst_idx, const float* src, const int32_t* src_idx, int64_t n_rows,
               int64_t width);
void cand_indexed(int32_t* cand, int max_cand, const int32_t* n_raw, const int32_t* idx, int k,
                  const int32_t* count, int64_t n_rows, int32_t base);

}  // namespace ds4::cuda
