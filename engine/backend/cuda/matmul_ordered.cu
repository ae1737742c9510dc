// F16 and F32 weight matmul kernels in the ordered-chunks order: y (n_rows, groups*out) = x · Wᵀ.
// ds4-dispatch.md §1.2 rows F1 (router 4096->256, HC mixers 16384->24, compressor and indexer
// projections, output_hc_fn) and F3 (F32 "plain" tensors of the MTP GGUF).
//
// Variants (style.md rule 3; check: tests/unit/cuda_matmul_test, time: tests/bench/
// cuda_matmul_bench):
//   matvec_f16__ordered / matvec_f32__ordered  Strategy: the N=1 decode kernel, launched once
//       per activation row: one warp per output, 8 outputs per 256-thread block; lane l owns the
//       contiguous chunk [l*c, (l+1)*c) of the input, c = ceil(in/32) (ds4's
//       matmul_f16_ordered_chunks_kernel; ds4 runs a 256-thread tree for F32, we use the same
//       ordered order for both types). Weights and activations are read 16 bytes at a time when
//       c and in are multiples of the vector width (8 halves / 4 floats), else one at a time;
//       the order is the same either way.
//       Numerics: per lane p = fma(w[i], x[i], p) for i ascending, F32, each fma rounded once
//       (__fmaf_rn: explicit, so the result does not depend on -fmad); then lane 0's total =
//       0 + p[0] + p[1] + ... + p[31] in lane order (the 32 partials broadcast by shuffles).
//       No atomics; deterministic. Equal to ds4::dot_f16_ordered_chunks_ref /
//       dot_f32_ordered_chunks_ref (engine/ops/matmul/matmul_cuda_ref.h): the __exact variants.
//   matvec_f16__ordered_batch / matvec_f32__ordered_batch  Strategy: one launch for all rows;
//       each lane keeps T <= 16 chunk accumulators (one per activation row of the tile) and
//       reads each weight element once per tile. Differs from the decode kernel only in that
//       reuse. Numerics: per row the same fma sequence and the same lane-order total: per row
//       bit-equal to the decode kernel for every n_rows (by construction).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/matmul_impl.h"
#include "ds4/error.h"

namespace ds4 {
namespace cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarp * kWarps;
constexpr int kMaxTile = 16;
constexpr unsigned kFullMask = 0xffffffffu;

struct OrderedArgs {
  const void* w = nullptr;   // (rows, in) F16 or F32
  const float* x = nullptr;  // (n_rows, x_stride) F32, 16-byte aligned
  float* y = nullptr;        // (n_rows, rows) F32
  int64_t in = 0;            // per group
  int64_t out_g = 0;         // output rows per group
  int64_t rows = 0;          // groups * out_g
  int64_t x_stride = 0;      // groups * in
  int64_t n_rows = 0;
  bool vec = false;  // 16-byte loads (chunk and in multiples of the vector width)
};

template <class W>
struct Weights;

template <>
struct Weights<__half> {
  static constexpr int kVec = 8;  // elements per 16-byte load
  __device__ static float one(const __half* p) { return __half2float(*p); }
  __device__ static void vec(const __half* p, float (&f)[kVec]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      f[2 * k] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[k] & 0xffffu)));
      f[2 * k + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[k] >> 16)));
    }
  }
};

template <>
struct Weights<float> {
  static constexpr int kVec = 4;
  __device__ static float one(const float* p) { return *p; }
  __device__ static void vec(const float* p, float (&f)[kVec]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x;
    f[1] = v.y;
    f[2] = v.z;
    f[3] = v.w;
  }
};

// grid ceil(rows / 8), 256 threads; T activation rows per pass over the weights.
template <class W, int T>
__global__ void __launch_bounds__(kThreads) ordered_chunks_kernel(const OrderedArgs a) {
  using Wt = Weights<W>;
  constexpr int V = Wt::kVec;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarp;
  if (row >= a.rows) return;  // warp-uniform: the shuffles below see whole warps
  const int lane = threadIdx.x % kWarp;
  const int64_t g = row / a.out_g;
  const int64_t chunk = (a.in + kWarp - 1) / kWarp;
  int64_t k0 = lane * chunk < a.in ? lane * chunk : a.in;
  int64_t k1 = k0 + chunk < a.in ? k0 + chunk : a.in;
  // Lanes past the end own nothing; point them at element 0. Loads are plain (coherent) loads:
  // compute-sanitizer caught ptxas hoisting __ldg (ld.global.nc) loads of the next element
  // above the loop test, one element past a row's end.
  if (k0 == k1) k0 = k1 = 0;
  const W* wr = static_cast<const W*>(a.w) + row * a.in;
  for (int64_t t0 = 0; t0 < a.n_rows; t0 += T) {
    const int nt = static_cast<int>(a.n_rows - t0 < T ? a.n_rows - t0 : T);
    const float* xr = a.x + t0 * a.x_stride + g * a.in;
    float s[T];
#pragma unroll
    for (int t = 0; t < T; ++t) s[t] = 0.0f;
    if (a.vec) {
#pragma unroll 4
      for (int64_t i = k0; i < k1; i += V) {
        float wv[V];
        Wt::vec(wr + i, wv);
#pragma unroll
        for (int t = 0; t < T; ++t) {
          if (t < nt) {
            float xv[V];
#pragma unroll
            for (int k = 0; k < V / 4; ++k) {
              const float4 v = *(reinterpret_cast<const float4*>(xr + t * a.x_stride + i) + k);
              xv[4 * k] = v.x;
              xv[4 * k + 1] = v.y;
              xv[4 * k + 2] = v.z;
              xv[4 * k + 3] = v.w;
            }
#pragma unroll
            for (int j = 0; j < V; ++j) s[t] = __fmaf_rn(wv[j], xv[j], s[t]);
          }
        }
      }
    } else {
      for (int64_t i = k0; i < k1; ++i) {
        const float wv = Wt::one(wr + i);
#pragma unroll
        for (int t = 0; t < T; ++t) {
          if (t < nt) s[t] = __fmaf_rn(wv, xr[t * a.x_stride + i], s[t]);
        }
      }
    }
    // Lane 0 adds the 32 chunk sums in lane order, starting from 0 (ds4's thread-0 loop).
#pragma unroll
    for (int t = 0; t < T; ++t) {
      if (t < nt) {
        float total = 0.0f;
#pragma unroll
        for (int j = 0; j < kWarp; ++j) total = __fadd_rn(total, __shfl_sync(kFullMask, s[t], j));
        if (lane == 0) a.y[(t0 + t) * a.rows + row] = total;
      }
    }
  }
}

template <class W, int T>
void launch_one(const OrderedArgs& a, const char* name) {
  const int64_t blocks = (a.rows + kWarps - 1) / kWarps;
  if (blocks > 0x7fffffff) fail(std::string(name) + ": too many output rows");
  ordered_chunks_kernel<W, T><<<static_cast<unsigned>(blocks), kThreads>>>(a);
  check(cudaGetLastError(), name);
}

template <class W>
void launch_typed(OrderedArgs a, bool batch, const char* decode_name, const char* batch_name) {
  constexpr int V = Weights<W>::kVec;
  const int64_t chunk = (a.in + kWarp - 1) / kWarp;
  a.vec = chunk % V == 0 && a.in % V == 0;
  if (!batch) {
    // One launch per activation row, exactly as N=1 decode runs it.
    const int64_t n = a.n_rows;
    float* y = a.y;
    const float* x = a.x;
    a.n_rows = 1;
    for (int64_t r = 0; r < n; ++r) {
      a.x = x + r * a.x_stride;
      a.y = y + r * a.rows;
      launch_one<W, 1>(a, decode_name);
    }
    return;
  }
  int tile = 1;
  while (tile < a.n_rows && tile < kMaxTile) tile *= 2;
  switch (tile) {
    case 1:
      return launch_one<W, 1>(a, batch_name);
    case 2:
      return launch_one<W, 2>(a, batch_name);
    case 4:
      return launch_one<W, 4>(a, batch_name);
    case 8:
      return launch_one<W, 8>(a, batch_name);
    default:
      return launch_one<W, 16>(a, batch_name);
  }
}

}  // namespace

void launch_ordered(const CudaMatrix::Impl& w, const float* x, int64_t n_rows, float* y,
                    bool batch) {
  OrderedArgs a;
  a.w = w.data.get();
  a.x = x;
  a.y = y;
  a.in = w.in;
  a.out_g = w.out;
  a.rows = w.rows();
  a.x_stride = w.groups * w.in;
  a.n_rows = n_rows;
  if (w.type == CudaWeightType::f16) {
    launch_typed<__half>(a, batch, "matvec_f16__ordered launch",
                         "matvec_f16__ordered_batch launch");
  } else {
    launch_typed<float>(a, batch, "matvec_f32__ordered launch", "matvec_f32__ordered_batch launch");
  }
}

}  // namespace cuda
}  // namespace ds4
