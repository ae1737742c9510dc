// Tail RoPE on the GPU (ds4-model.md §4.4 step 4; ds4-dispatch.md §1.2 row X). Host API:
// engine/backend/cuda/ops_cuda.h. Check: tests/unit/cuda_ops_test --gtest_filter='*rope*'.
//
// Variants:
//   rope_tail__pairs  one thread per rotated pair (row, head, i). The frequencies are the CPU's
//       ds4::rope_params (plain or YaRN-blended, computed in double on the host) uploaded as F32,
//       so the GPU never recomputes them. Per pair, as rope_tail_ref: theta = float(pos) *
//       inv_freq[i] (F32 multiply), c = float(cos(double theta)), s = float(sin(double theta)),
//       negated for the inverse rotation; x0' = x0*c - x1*s, x1' = x0*s + x1*c with every
//       product and sum rounded separately (no FMA). Elementwise: bitwise against rope_tail_ref
//       except where CUDA's and glibc's double cos/sin (both within 2 ulp of double) round to
//       different floats (probability about 1e-8 per angle). One kernel for N=1 and N rows.
#include <cuda_runtime.h>

#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kThreads = 256;

// x: (n_rows, n_head, head_dim) F32 in place; pos: (n_rows) int64; inv_freq: (n_rot/2) F32.
// Thread g handles pair i = g % (n_rot/2) of head (g / (n_rot/2)) (a flat row*n_head + head).
__global__ void __launch_bounds__(kThreads)
    rope_tail_kernel(float* __restrict__ x, int64_t n_pairs, int n_head, int head_dim, int n_rot,
                     const int64_t* __restrict__ pos, const float* __restrict__ inv_freq,
                     bool inverse) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (g >= n_pairs) return;
  const int half = n_rot / 2;
  const int i = static_cast<int>(g % half);
  const int64_t head = g / half;  // row * n_head + h
  const int64_t row = head / n_head;
  float* t = x + head * head_dim + (head_dim - n_rot);
  const float p = static_cast<float>(pos[row]);  // int64 -> float, round to nearest (as the CPU)
  const float theta = __fmul_rn(p, inv_freq[i]);
  const float c = static_cast<float>(cos(static_cast<double>(theta)));
  float s = static_cast<float>(sin(static_cast<double>(theta)));
  if (inverse) s = -s;
  const float x0 = t[2 * i], x1 = t[2 * i + 1];
  t[2 * i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  t[2 * i + 1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

}  // namespace

void rope_tail(float* x, int64_t n_rows, int n_head, int head_dim, int n_rot, const int64_t* pos,
               const float* inv_freq, bool inverse) {
  if (n_rows < 0 || n_head <= 0 || head_dim <= 0 || n_rot <= 0 || n_rot % 2 != 0 ||
      n_rot > head_dim) {
    fail("rope_tail__pairs: bad shape n_rows = " + std::to_string(n_rows) + ", n_head = " +
         std::to_string(n_head) + ", head_dim = " + std::to_string(head_dim) + ", n_rot = " +
         std::to_string(n_rot) + " (need n_rot even, 0 < n_rot <= head_dim)");
  }
  const int64_t n_pairs = n_rows * n_head * (n_rot / 2);
  if (n_pairs == 0) return;
  const int64_t blocks = (n_pairs + kThreads - 1) / kThreads;
  if (blocks > 2147483647) fail("rope_tail__pairs: too many pairs");
  rope_tail_kernel<<<static_cast<unsigned>(blocks), kThreads>>>(x, n_pairs, n_head, head_dim,
                                                                n_rot, pos, inv_freq, inverse);
  check(cudaGetLastError(), "rope_tail__pairs launch");
}

}  // namespace ds4::cuda
