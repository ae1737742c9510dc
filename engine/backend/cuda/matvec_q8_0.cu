// Q8_0 matrix-vector kernels: y (n_rows, out) = x (n_rows, in) · Wᵀ, W (out, in) in Q8_0.
// The N=1 decode projection of ds4 (ds4-dispatch.md §1.2 row Q1) and its bit-equal batched twin.
//
// Variants (names as in style.md rule 3; run/check: tests/unit/cuda_matvec_test,
// time: tests/bench/cuda_matvec_bench):
//   matvec_q8_0__decode_warp8  Strategy: one warp per output row, 8 rows per 256-thread block,
//       one launch per activation row (ds4's matmul_q8_0_preq_warp8_kernel). Lane l owns weight
//       blocks l, l+32, l+64, ...
//       Numerics: activations pre-quantised to Q8_0 with an F32 scale (quantize_act_q8_0_kernel,
//       bit-equal to ds4::quantize_act_q8_0); per block an exact int32 dot (8 × __dp4a); per lane
//       acc = acc + (wd * xd) * (float)isum in F32 with every product rounded (__fmul_rn /
//       __fadd_rn, so no fma contraction); then a __shfl_down tree over offsets 16,8,4,2,1.
//       No atomics, deterministic. Bit-equal to ds4::q8_0_dot_warp_order_ref (the __exact
//       reference of this family, engine/ops/matmul/matvec_warp_order.h).
//   matvec_q8_0__batch_warp8   Strategy: one launch for all rows; one warp per output row walks
//       its weight blocks once per group of kBatchGroup (8) activation rows, keeping 8 lane
//       accumulators in registers. Differs from decode_warp8: reads W ceil(n_rows/8) times
//       instead of n_rows times, and one launch instead of n_rows. Numerics: the same helper
//       functions in the same order per (row, lane); per row bit-equal to decode_warp8 by
//       construction, for every n_rows and in.
//
// Memory layout: W rows are in/32 blocks of 34 bytes (f16 d, int8 q[32]); a block starts at a
// 2-byte but not always 4-byte boundary, so a lane reads its block as 8 aligned 32-bit words plus
// one 32-bit tail assembled from two 16-bit loads, and funnel-shifts the quants into place
// (load_weight_block). Nothing outside the matrix is read.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/matvec_q8_0.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"

namespace ds4 {
namespace cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;                 // warps (= output rows) per thread block
constexpr int kThreads = kWarp * kRowsPerBlock;  // 256
constexpr int kBatchGroup = 8;                   // activation rows per weight pass (batch)
constexpr int kQ8Elems = 32;                     // elements per Q8_0 block
constexpr int kQ8Bytes = 34;                     // bytes per Q8_0 weight block
constexpr unsigned kFullMask = 0xffffffffu;

// ============================================================================================
// Activation quantisation (both variants)
// ============================================================================================

// One warp per 32-element block, lane i owns element i; blocks of all rows are numbered
// globally (g = row * in/32 + b), so x + g*32 and xq + g*32 address the same elements.
//   x: (n_rows*in) F32   xq: (n_rows*in) int8   xd: (n_rows*in/32) F32
// Bit-equal to ds4::quantize_act_q8_0: amax via fmaxf (order-free), d = amax / 127 (IEEE
// division), q = rint(x * (1/d)) ties to even, clamped to [-128, 127]; d == 0 gives q = 0.
__global__ void __launch_bounds__(kThreads)
    quantize_act_q8_0_kernel(const float* __restrict__ x, int8_t* __restrict__ xq,
                             float* __restrict__ xd, int64_t total_blocks) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x / kWarp);
  const int lane = threadIdx.x % kWarp;
  if (g >= total_blocks) return;  // warp-uniform
  const float v = x[g * kQ8Elems + lane];
  float amax = fabsf(v);
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, offset));
  }
  const float d = __fdiv_rn(amax, 127.0f);
  int q = 0;
  if (d != 0.0f) {
    const float id = __fdiv_rn(1.0f, d);
    q = __float2int_rn(__fmul_rn(v, id));  // round to nearest, ties to even (as lrintf)
    q = q > 127 ? 127 : (q < -128 ? -128 : q);
  }
  xq[g * kQ8Elems + lane] = static_cast<int8_t>(q);
  if (lane == 0) xd[g] = d;
}

// ============================================================================================
// Shared pieces of the warp kernels: one weight block, its int32 dot, the lane update, the tree
// ============================================================================================

struct WeightBlock {
  float d;       // f16 scale, widened exactly
  int32_t q[8];  // the 32 int8 quants, 4 per word, little endian
};

// Block `index` (counted from the start of the matrix) of a 4-byte aligned Q8_0 matrix.
// A block starts at index*34: 4-aligned (shift 0) or 2 mod 4 (shift 16 bits).
//   words u[0..7] cover bytes [start - shift/8, start - shift/8 + 32): the scale and quants 0..27
//   (shift 0) or 0..29 (shift 16); the last quant word (bytes 30..33) is always read as two
//   aligned 16-bit halves so that nothing past the block's end is touched.
__device__ __forceinline__ WeightBlock load_weight_block(const uint8_t* __restrict__ w,
                                                         int64_t index) {
  const uint64_t start = static_cast<uint64_t>(index) * kQ8Bytes;
  const uint32_t shift = static_cast<uint32_t>(start & 3u) * 8u;  // 0 or 16
  const uint32_t* words = reinterpret_cast<const uint32_t*>(w + (start & ~uint64_t{3}));
  uint32_t u[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) u[k] = __ldg(words + k);
  const uint16_t* tail = reinterpret_cast<const uint16_t*>(w + start + 30);
  const uint32_t last =
      static_cast<uint32_t>(__ldg(tail)) | (static_cast<uint32_t>(__ldg(tail + 1)) << 16);
  WeightBlock blk;
  blk.d = __half2float(__ushort_as_half(static_cast<unsigned short>((u[0] >> shift) & 0xffffu)));
  // Quant word j is block bytes 2+4j .. 5+4j: bytes 2..3 of u[j] and 0..1 of u[j+1] when
  // shift == 0, all of u[j+1] when shift == 16 (__funnelshift_rc clamps the shift at 32).
#pragma unroll
  for (int j = 0; j < 7; ++j) {
    blk.q[j] = static_cast<int32_t>(__funnelshift_rc(u[j], u[j + 1], shift + 16u));
  }
  blk.q[7] = static_cast<int32_t>(last);
  return blk;
}

// Exact int32 dot of a weight block with one activation block (32 int8, 16-byte aligned).
__device__ __forceinline__ int32_t block_dot(const WeightBlock& blk,
                                             const int8_t* __restrict__ xq_block) {
  const int4 a = __ldg(reinterpret_cast<const int4*>(xq_block));
  const int4 b = __ldg(reinterpret_cast<const int4*>(xq_block) + 1);
  int32_t s = 0;
  s = __dp4a(blk.q[0], a.x, s);
  s = __dp4a(blk.q[1], a.y, s);
  s = __dp4a(blk.q[2], a.z, s);
  s = __dp4a(blk.q[3], a.w, s);
  s = __dp4a(blk.q[4], b.x, s);
  s = __dp4a(blk.q[5], b.y, s);
  s = __dp4a(blk.q[6], b.z, s);
  s = __dp4a(blk.q[7], b.w, s);
  return s;
}

// acc + (wd * xd) * isum, each operation rounded to F32: the _rn intrinsics are never contracted
// into an fma, which is what keeps this equal to the CPU reference.
__device__ __forceinline__ float lane_update(float acc, float wd, float xd, int32_t isum) {
  return __fadd_rn(acc, __fmul_rn(__fmul_rn(wd, xd), __int2float_rn(isum)));
}

// Lane 0 gets Σ over lanes in the tree order of q8_0_dot_warp_order_ref.
__device__ __forceinline__ float warp_tree_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    v = __fadd_rn(v, __shfl_down_sync(kFullMask, v, offset));
  }
  return v;
}

// ============================================================================================
// matvec_q8_0__decode_warp8
// ============================================================================================

//   w: (out, blocks*34) bytes   xq: (blocks*32) int8 of one row   xd: (blocks) F32
//   y: (out) F32 of that row
__global__ void __launch_bounds__(kThreads)
    matvec_q8_0_decode_warp8_kernel(const uint8_t* __restrict__ w, const int8_t* __restrict__ xq,
                                    const float* __restrict__ xd, float* __restrict__ y,
                                    int64_t out, int64_t blocks) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x / kWarp);
  const int lane = threadIdx.x % kWarp;
  if (row >= out) return;  // warp-uniform, so the shuffles below see all 32 lanes
  float acc = 0.0f;
  for (int64_t b = lane; b < blocks; b += kWarp) {
    const WeightBlock blk = load_weight_block(w, row * blocks + b);
    acc = lane_update(acc, blk.d, xd[b], block_dot(blk, xq + b * kQ8Elems));
  }
  acc = warp_tree_sum(acc);
  if (lane == 0) y[row] = acc;
}

// ============================================================================================
// matvec_q8_0__batch_warp8
// ============================================================================================

//   w: (out, blocks*34) bytes   xq: (n_rows, blocks*32) int8   xd: (n_rows, blocks) F32
//   y: (n_rows, out) F32
__global__ void __launch_bounds__(kThreads)
    matvec_q8_0_batch_warp8_kernel(const uint8_t* __restrict__ w, const int8_t* __restrict__ xq,
                                   const float* __restrict__ xd, float* __restrict__ y, int64_t out,
                                   int64_t blocks, int64_t n_rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x / kWarp);
  const int lane = threadIdx.x % kWarp;
  if (row >= out) return;
  const int64_t in = blocks * kQ8Elems;
  for (int64_t r0 = 0; r0 < n_rows; r0 += kBatchGroup) {
    const int64_t nr = n_rows - r0 < kBatchGroup ? n_rows - r0 : kBatchGroup;  // warp-uniform
    float acc[kBatchGroup];
#pragma unroll
    for (int g = 0; g < kBatchGroup; ++g) acc[g] = 0.0f;
    for (int64_t b = lane; b < blocks; b += kWarp) {
      const WeightBlock blk = load_weight_block(w, row * blocks + b);  // once per row group
#pragma unroll
      for (int g = 0; g < kBatchGroup; ++g) {
        if (g < nr) {
          const int64_t r = r0 + g;
          acc[g] = lane_update(acc[g], blk.d, xd[r * blocks + b],
                               block_dot(blk, xq + r * in + b * kQ8Elems));
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kBatchGroup; ++g) {
      if (g < nr) {
        const float v = warp_tree_sum(acc[g]);
        if (lane == 0) y[(r0 + g) * out + row] = v;
      }
    }
  }
}

// ============================================================================================
// Host side
// ============================================================================================

void check_shape(int64_t in, int64_t out, int64_t n_rows, const char* what) {
  if (in <= 0 || in % kQ8Elems != 0) {
    fail(std::string(what) + ": in = " + std::to_string(in) +
         " must be a positive multiple of 32 (Q8_0 block)");
  }
  if (out < 1) fail(std::string(what) + ": out = " + std::to_string(out) + " must be >= 1");
  if (n_rows < 0) fail(std::string(what) + ": n_rows = " + std::to_string(n_rows) + " is negative");
}

bool aligned(const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

unsigned grid_for(int64_t warps) {
  const int64_t blocks = (warps + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks > 0x7fffffff) fail("matvec_q8_0: grid of " + std::to_string(blocks) + " too large");
  return static_cast<unsigned>(blocks);
}

}  // namespace

void quantize_act_q8_0_device(const float* x, int64_t n_rows, int64_t in, int8_t* xq, float* xd) {
  check_shape(in, 1, n_rows, "quantize_act_q8_0_device");
  if (n_rows == 0) return;
  if (!x || !xq || !xd) fail("quantize_act_q8_0_device: null device pointer");
  const int64_t total_blocks = n_rows * (in / kQ8Elems);
  quantize_act_q8_0_kernel<<<grid_for(total_blocks), kThreads>>>(x, xq, xd, total_blocks);
  check(cudaGetLastError(), "quantize_act_q8_0_kernel launch");
}

void matvec_q8_0_device(const MatvecQ8_0Args& a, CudaMatvecVariant v) {
  const char* name = cuda_matvec_variant_name(v);
  check_shape(a.in, a.out, a.n_rows, name);
  if (a.n_rows == 0) return;
  if (!a.w || !a.x || !a.y || !a.xq || !a.xd) fail(std::string(name) + ": null device pointer");
  if (!aligned(a.w, 4) || !aligned(a.xq, 16) || !aligned(a.x, 4) || !aligned(a.xd, 4) ||
      !aligned(a.y, 4)) {
    fail(std::string(name) + ": misaligned device pointer (w needs 4 bytes, xq 16)");
  }
  const int64_t blocks = a.in / kQ8Elems;
  const auto* w = static_cast<const uint8_t*>(a.w);
  quantize_act_q8_0_device(a.x, a.n_rows, a.in, a.xq, a.xd);

  const unsigned grid = grid_for(a.out);
  switch (v) {
    case CudaMatvecVariant::decode_warp8:
      // One launch per activation row, exactly as N=1 decode runs it.
      for (int64_t r = 0; r < a.n_rows; ++r) {
        matvec_q8_0_decode_warp8_kernel<<<grid, kThreads>>>(w, a.xq + r * a.in, a.xd + r * blocks,
                                                            a.y + r * a.out, a.out, blocks);
        check(cudaGetLastError(), "matvec_q8_0__decode_warp8 launch");
      }
      return;
    case CudaMatvecVariant::batch_warp8:
      matvec_q8_0_batch_warp8_kernel<<<grid, kThreads>>>(w, a.xq, a.xd, a.y, a.out, blocks,
                                                         a.n_rows);
      check(cudaGetLastError(), "matvec_q8_0__batch_warp8 launch");
      return;
  }
  fail("matvec_q8_0_device: unknown variant " + std::to_string(static_cast<int>(v)));
}

}  // namespace cuda

void cuda_matvec_q8_0(const void* w_q8_0, int64_t in, int64_t out, const float* x, int64_t n_rows,
                      float* y, CudaMatvecVariant v) {
  cuda::check_shape(in, out, n_rows, "cuda_matvec_q8_0");
  if (n_rows > 0 && (!w_q8_0 || !x || !y)) fail("cuda_matvec_q8_0: null host pointer");
  cuda::require_device("cuda_matvec_q8_0");
  if (n_rows == 0) return;
  const size_t blocks = static_cast<size_t>(in / 32);
  const size_t rows = static_cast<size_t>(n_rows);
  const size_t w_bytes = cuda::q8_0_matrix_bytes(in, out);
  cuda::DeviceBuffer dw(w_bytes);
  cuda::DeviceBuffer dx(rows * static_cast<size_t>(in) * sizeof(float));
  cuda::DeviceBuffer dy(rows * static_cast<size_t>(out) * sizeof(float));
  cuda::DeviceBuffer dxq(rows * static_cast<size_t>(in));
  cuda::DeviceBuffer dxd(rows * blocks * sizeof(float));
  dw.upload(w_q8_0, w_bytes);
  dx.upload(x, dx.size());
  cuda::MatvecQ8_0Args a;
  a.w = dw.get();
  a.x = dx.as<float>();
  a.y = dy.as<float>();
  a.xq = dxq.as<int8_t>();
  a.xd = dxd.as<float>();
  a.in = in;
  a.out = out;
  a.n_rows = n_rows;
  cuda::matvec_q8_0_device(a, v);
  cuda::synchronize(cuda_matvec_variant_name(v));
  dy.download(y, dy.size());
}

}  // namespace ds4
