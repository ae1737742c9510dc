// Q8_0 matmul kernels on the planes layout: y (n_rows, groups*out) = x · Wᵀ per group.
// ds4-dispatch.md §1.2 rows Q1 (projections), Q1 preq (output head) and A1 (grouped out A).
//
// Variants (style.md rule 3; check: tests/unit/cuda_matmul_test, time: tests/bench/
// cuda_matmul_bench; all listed in ds4/cuda_matmul.h):
//   matvec_q8_0__decode_planes  Strategy: the N=1 decode kernel. Each block quantises the
//       activation row into shared memory itself (no separate quantiser launch), then its warps
//       walk R weight rows at a time (R = 4 for tall matrices, 1 otherwise; a persistent grid of
//       at most 4 blocks per SM loops over row groups; after the prologue each warp bulk-prefetches
//       its first row tasks into L2, up to 3/4 of L2 for the grid). Lane l owns blocks l, l+32,
//       ... and reads each as two 16-byte loads of its quants plus its f16 scale; the activation
//       block comes from shared memory in a bank-conflict-free swizzle and is reused for the R
//       rows. Differs from matvec_q8_0__decode_warp8 (matvec_q8_0.cu): planes layout and 16-byte
//       loads instead of ten 2/4-byte loads per 34-byte block, fused quantiser, R rows per warp,
//       and a packed shuffle tree (R sums in fewer shuffles).
//       Numerics: identical to decode_warp8: activation Q8_0 with F32 scale per 32 (the
//       quantize_act_q8_0 formula), exact int32 block dot (8 __dp4a), per lane
//       acc = acc + (wd*xd)*float(isum) in F32 with every operation rounded (__fmul_rn /
//       __fadd_rn; float(isum) through an exact integer-add trick, |isum| < 2^22), then the
//       shuffle tree over offsets 16, 8, 4, 2, 1. The packed tree pairs the same lanes in the
//       same order (a+b == b+a in IEEE). No atomics; deterministic. Bit-equal to
//       ds4::q8_0_dot_warp_order_ref (engine/ops/matmul/matvec_warp_order.h), i.e. __exact.
//   matvec_q8_0__batch_planes   Strategy: one launch for all rows: activations quantised once
//       (quantize_act_q8_0_device), a tile of T <= 16 activation rows staged in shared memory,
//       and each warp keeps R x T lane accumulators, so every weight block is read once per
//       tile instead of once per row (ds4's preq_batch_warp8 gives each token its own grid row).
//       Numerics: per (row, lane) the same helper calls in the same block order as decode_planes,
//       the same tree; per row bit-equal to decode_planes for every n_rows (by construction).
//       Cost: __dp4a issues at ~16 per clock per SM on an H100, so from N ~ 8 this kernel is
//       bound by the int8 dots, not by HBM (reports/h100/cuda_matmul_bench.README.md).
//   matvec_q8_0__batch_imma     Strategy: the block dots on the int8 tensor cores: one
//       mma.m16n8k32 gives the exact int32 dots of one 32-weight block for 16 weight rows x 8
//       tokens; a persistent grid walks m-tiles of 16 rows with an L2 prefetch two tiles ahead;
//       token tiles of 8 or 16. Differs from batch_planes: who computes isum (tensor cores, with
//       the k order permuted identically in both operands: the integer sum is the same) and how
//       the 32 lane accumulators are laid out (warp w keeps logical lanes w, w+16, w+8, w+24;
//       shared memory adds the rest). Numerics: the same F32 lane updates in the same block
//       order and the same tree pairing as decode_planes: per row bit-equal to it (tested).
//       Cost: the F32 epilogue (one update per block, row and token) bounds it at large N.
//   matmul_q8__preq_tree        Strategy: ds4's matmul_q8_0_preq_kernel, the fast path for
//       Q8_0 matrices outside ds4's F16 allow-list (the vocab head): one 256-thread block per
//       (output, row); thread t sums blocks t, t+256, ... then a shared-memory halving tree
//       (stride 128 .. 1). Numerics: the same block products as decode (rounded, no fma) but
//       another summation order: NOT bit-equal to __exact (|diff| ~1e-5 relative). Equal to
//       ds4::q8_0_dot_preq_tree_ref (engine/ops/matmul/matmul_cuda_ref.h). Deterministic.
//   (matmul_q8__gemm_f16, the cuBLAS path, lives in matmul.cu; its F16 weight copy comes from
//    q8_expand_f16_kernel below: d*q computed in half precision as ds4's expansion does.)
//
// Planes layout (CudaMatrix::Impl): quants (rows, in) int8 in natural order, so block b of row o
// is the 32 bytes at (o*in/32 + b)*32, 16-byte aligned; scales (rows, in/32) f16 bits.
// Shared-memory activation layout ("swizzle"): per activation row, for block b the low 16 quants
// at ((b/32)*2 + 0)*512 + (b%32)*16 and the high 16 at ((b/32)*2 + 1)*512 + (b%32)*16, so lanes
// l = 0..31 reading block 32r + l touch 512 consecutive bytes (no bank conflicts); scales are
// F32 at index b.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "backend/cuda/device.h"
#include "backend/cuda/matmul_impl.h"
#include "ds4/error.h"

namespace ds4 {
namespace cuda {

namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 8;                            // warps per block
constexpr int kThreads = kWarp * kWarps;             // 256
constexpr int kPreqThreads = 256;                    // threads per output in matmul_q8__preq_tree
constexpr int kRoundBytes = 1024;                    // swizzled quants of 32 blocks (one "round")
constexpr int kRoundSmem = kRoundBytes + kWarp * 4;  // + 32 F32 scales
constexpr int kMaxTile = 16;                         // activation rows per tile (batch)
constexpr size_t kTileSmemBudget = 80 * 1024;        // batch tiles are shrunk to fit this
constexpr int kDecodeBlocksPerSm = 4;                // resident-block caps of the planes kernels
constexpr int kBatchBlocksPerSm = 2;
constexpr unsigned kFullMask = 0xffffffffu;

// Arguments of the planes kernels (all device pointers). Shapes: rows = groups*out_g.
struct Q8Args {
  const int8_t* q = nullptr;    // (rows, in) weight quants
  const uint16_t* d = nullptr;  // (rows, nb) weight scales, f16 bits
  const float* x = nullptr;     // (n_rows, x_stride) F32 activations (decode)
  const int8_t* xq = nullptr;   // (n_rows, x_stride) int8 quantised activations (batch, preq)
  const float* xd = nullptr;    // (n_rows, x_stride/32) F32 activation scales (batch, preq)
  float* y = nullptr;           // (n_rows, y_stride) F32
  int64_t x_stride = 0;         // groups*in
  int64_t y_stride = 0;         // groups*out_g
  int64_t out_g = 0;            // output rows per group
  int64_t n_rows = 0;           // activation rows
  int in = 0;                   // per group, multiple of 32
  int nb = 0;                   // in/32
  int rounds = 0;               // ceil(nb/32)
  int prefetch_tasks = 1;       // row tasks per warp prefetched into L2 at the start
};

// ============================================================================================
// Building blocks: loads, the exact block dot, the lane update, the packed shuffle tree
// ============================================================================================

__device__ __forceinline__ int swizzle(int b, int half) {
  return (((b >> 5) * 2 + half) << 9) + ((b & 31) << 4);
}

struct Block {
  int4 lo, hi;  // quants 0..15 and 16..31, little endian, 4 per word
  float d;      // scale
};

// Weight block b of (global) row `row` from the planes.
__device__ __forceinline__ Block load_weight(const Q8Args& a, int64_t row, int b) {
  const int64_t blk = row * a.nb + b;
  const int4* p = reinterpret_cast<const int4*>(a.q) + blk * 2;
  Block w;
  w.lo = __ldg(p);
  w.hi = __ldg(p + 1);
  w.d = __half2float(__ushort_as_half(__ldg(a.d + blk)));
  return w;
}

// Activation block b from a swizzled shared-memory row.
__device__ __forceinline__ Block load_act(const uint8_t* xq_s, const float* xd_s, int b) {
  Block x;
  x.lo = *reinterpret_cast<const int4*>(xq_s + swizzle(b, 0));
  x.hi = *reinterpret_cast<const int4*>(xq_s + swizzle(b, 1));
  x.d = xd_s[b];
  return x;
}

// Exact int32 dot of two 32-element int8 blocks (integer: any order gives the same value).
__device__ __forceinline__ int32_t block_dot(const Block& w, const Block& x) {
  int32_t s = __dp4a(w.lo.x, x.lo.x, 0);
  s = __dp4a(w.lo.y, x.lo.y, s);
  s = __dp4a(w.lo.z, x.lo.z, s);
  s = __dp4a(w.lo.w, x.lo.w, s);
  s = __dp4a(w.hi.x, x.hi.x, s);
  s = __dp4a(w.hi.y, x.hi.y, s);
  s = __dp4a(w.hi.z, x.hi.z, s);
  s = __dp4a(w.hi.w, x.hi.w, s);
  return s;
}

// (float)v for |v| < 2^22, exactly as __int2float_rn: 1.5*2^23 + v has ulp 1, so the integer
// add on its bit pattern is exact, and subtracting 1.5*2^23 is exact. An IADD + FADD instead of
// the quarter-rate I2F. |isum| <= 32*128*128 = 2^19.
__device__ __forceinline__ float small_int_to_float(int32_t v) {
  return __fsub_rn(__int_as_float(0x4B400000 + v), 12582912.0f);
}

// acc + (wd * xd) * isum with every operation rounded to F32 (never contracted into an fma).
__device__ __forceinline__ float lane_update(float acc, float wd, float xd, int32_t isum) {
  return __fadd_rn(acc, __fmul_rn(__fmul_rn(wd, xd), small_int_to_float(isum)));
}

// K = 2^k <= 32 shuffle-down trees at once, in (K-1) + (5-k) shuffles instead of 5K. At offset
// 16, lanes with bit 4 clear keep the even-indexed values and receive their partner's, lanes
// with bit 4 set keep the odd ones; each sum is still lane j + lane j+16 of one value, as in the
// tree (IEEE addition is commutative, bit for bit). After k such steps each lane carries one
// value; the remaining offsets are plain xor steps. Lane l ends with the sum of value
// packed_index<K>(l); every lane of its group of 32/K holds it.
template <int K>
__device__ __forceinline__ float packed_tree_sum(float (&v)[K], int lane) {
  static_assert(K >= 1 && K <= 32 && (K & (K - 1)) == 0, "K must be a power of two <= 32");
  int offset = 16;
#pragma unroll
  for (int count = K; count > 1; count /= 2) {
    const bool upper = (lane & offset) != 0;
#pragma unroll
    for (int i = 0; i < count / 2; ++i) {
      const float send = upper ? v[2 * i] : v[2 * i + 1];
      const float keep = upper ? v[2 * i + 1] : v[2 * i];
      v[i] = __fadd_rn(keep, __shfl_xor_sync(kFullMask, send, offset));
    }
    offset /= 2;
  }
  float s = v[0];
#pragma unroll
  for (; offset > 0; offset /= 2) s = __fadd_rn(s, __shfl_xor_sync(kFullMask, s, offset));
  return s;
}

// Which value lane `lane` holds after packed_tree_sum<K>: bit s of the index is bit 4-s of lane.
template <int K>
__device__ __forceinline__ int packed_index(int lane) {
  int m = 0;
#pragma unroll
  for (int s = 0; (1 << s) < K; ++s) m |= ((lane >> (4 - s)) & 1) << s;
  return m;
}

// ============================================================================================
// Activation staging: quantise one F32 row (decode) or copy a quantised tile (batch)
// ============================================================================================

__device__ __forceinline__ uint32_t quant_byte(float v, float id) {
  int q = __float2int_rn(__fmul_rn(v, id));  // round half to even, as lrintf
  q = q > 127 ? 127 : (q < -128 ? -128 : q);
  return static_cast<uint32_t>(q) & 0xffu;
}

// x: (in) F32, 16-byte aligned -> swizzled xq_s, xd_s. Eight threads per 32-element block,
// four elements each; the block's amax via xor shuffles within the 8 lanes (max is exact and
// order-free). Same formula as quantize_act_q8_0_kernel / ds4::quantize_act_q8_0:
// d = amax / 127, q = rint(x * (1/d)) clamped, d == 0 gives q = 0. All lanes take part in the
// shuffles (in % 32 == 0, so validity is uniform per 8 lanes).
__device__ void quantize_row_to_smem(const float* __restrict__ x, int in, uint8_t* xq_s,
                                     float* xd_s) {
#pragma unroll 4
  for (int base = 0; base < in; base += kThreads * 4) {
    const int e = base + static_cast<int>(threadIdx.x) * 4;
    const bool valid = e < in;
    const float4 v =
        valid ? __ldg(reinterpret_cast<const float4*>(x + e)) : make_float4(0.f, 0.f, 0.f, 0.f);
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
    amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 2));
    amax = fmaxf(amax, __shfl_xor_sync(kFullMask, amax, 4));
    const float d = __fdiv_rn(amax, 127.0f);
    uint32_t packed = 0;
    if (d != 0.0f) {
      const float id = __fdiv_rn(1.0f, d);
      packed = quant_byte(v.x, id) | (quant_byte(v.y, id) << 8) | (quant_byte(v.z, id) << 16) |
               (quant_byte(v.w, id) << 24);
    }
    if (valid) {
      const int b = e >> 5, j = e & 31;
      *reinterpret_cast<uint32_t*>(xq_s + swizzle(b, j >> 4) + (j & 15)) = packed;
      if (j == 0) xd_s[b] = d;
    }
  }
}

// Rows t0 .. t0+nt-1 of the group-g slice of (xq, xd) -> swizzled shared memory.
__device__ void copy_tile_to_smem(const Q8Args& a, int g, int64_t t0, int nt, uint8_t* xq_s,
                                  float* xd_s, int act_bytes, int act_scales) {
  const int chunks = a.in / 16;  // 16-byte pieces of one row's quants
  for (int c = threadIdx.x; c < nt * chunks; c += kThreads) {
    const int t = c / chunks, k = c - t * chunks;
    const int4* src = reinterpret_cast<const int4*>(a.xq + (t0 + t) * a.x_stride +
                                                    static_cast<int64_t>(g) * a.in);
    *reinterpret_cast<int4*>(xq_s + t * act_bytes + swizzle(k >> 1, k & 1)) = __ldg(src + k);
  }
  const int64_t xd_stride = a.x_stride / 32;
  for (int c = threadIdx.x; c < nt * a.nb; c += kThreads) {
    const int t = c / a.nb, b = c - t * a.nb;
    xd_s[t * act_scales + b] =
        __ldg(a.xd + (t0 + t) * xd_stride + static_cast<int64_t>(g) * a.nb + b);
  }
}

// ============================================================================================
// matvec_q8_0__decode_planes (kQuantize, T = 1) and matvec_q8_0__batch_planes
// ============================================================================================

// One warp: weight rows row0 .. row0+nr-1 (global row index) against the nt activation rows
// staged in shared memory; y_col0 points at y[t0][row0], so row r of tile row t goes to
// y_col0[t*y_stride + r].
template <int T, int R>
__device__ __forceinline__ void rows_task(const Q8Args& a, const uint8_t* xq_s, const float* xd_s,
                                          int act_bytes, int act_scales, int64_t row0, int nr,
                                          int nt, float* y_col0, int lane) {
  constexpr int K = R * T;  // lane accumulators, index r*T + t
  constexpr int kUnroll = K <= 4 ? 4 : (K <= 16 ? 2 : 1);
  float acc[K];
#pragma unroll
  for (int i = 0; i < K; ++i) acc[i] = 0.0f;
#pragma unroll kUnroll
  for (int b = lane; b < a.nb; b += kWarp) {
    Block w[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r < nr) w[r] = load_weight(a, row0 + r, b);
    }
#pragma unroll
    for (int t = 0; t < T; ++t) {
      if (t < nt) {
        const Block x = load_act(xq_s + t * act_bytes, xd_s + t * act_scales, b);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r < nr) acc[r * T + t] = lane_update(acc[r * T + t], w[r].d, x.d, block_dot(w[r], x));
        }
      }
    }
  }
  constexpr int KC = K < 32 ? K : 32;  // values per packed tree
#pragma unroll
  for (int c = 0; c < K / KC; ++c) {
    float part[KC];
#pragma unroll
    for (int i = 0; i < KC; ++i) part[i] = acc[c * KC + i];
    const float s = packed_tree_sum<KC>(part, lane);
    const int m = c * KC + packed_index<KC>(lane);
    const int r = m / T, t = m % T;
    if ((lane & (32 / KC - 1)) == 0 && r < nr && t < nt) y_col0[t * a.y_stride + r] = s;
  }
}

// Asks the copy engine to pull `bytes` (multiple of 16, 16-byte aligned) into L2; a hint, no
// completion to wait for.
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Prefetches the quants and scales of the warp's first a.prefetch_tasks row tasks (lane k
// issues task k; rows of a task are contiguous in the planes; the scale range is widened to
// 16-byte bounds, inside the padded scale plane). The host sizes a.prefetch_tasks so that the
// whole grid prefetches at most ~3/4 of L2: small and medium matrices then stream from HBM at
// full rate while the compute loop runs, whatever its memory-level parallelism.
template <int R>
__device__ __forceinline__ void prefetch_tasks(const Q8Args& a, int g, int warp, int lane) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int k = lane; k < a.prefetch_tasks; k += kWarp) {
    const int64_t o0 = (first + k * stride) * R;
    if (o0 >= a.out_g) break;
    const int nr = static_cast<int>(a.out_g - o0 < R ? a.out_g - o0 : R);
    const int64_t row0 = static_cast<int64_t>(g) * a.out_g + o0;
    prefetch_l2(a.q + row0 * a.in, static_cast<uint32_t>(nr) * static_cast<uint32_t>(a.in));
    const uintptr_t s0 = reinterpret_cast<uintptr_t>(a.d + row0 * a.nb) & ~uintptr_t{15};
    const uintptr_t s1 = reinterpret_cast<uintptr_t>(a.d + (row0 + nr) * a.nb);
    prefetch_l2(reinterpret_cast<const void*>(s0),
                static_cast<uint32_t>((s1 - s0 + 15) & ~uintptr_t{15}));
  }
}

// grid (ctas per group, groups), kThreads threads, dynamic shared memory T * rounds * kRoundSmem.
template <int T, int R, bool kQuantize>
__global__ void __launch_bounds__(kThreads) q8_planes_kernel(const Q8Args a) {
  static_assert(!kQuantize || T == 1, "the fused quantiser stages one row");
  extern __shared__ int4 smem_i4[];
  uint8_t* xq_s = reinterpret_cast<uint8_t*>(smem_i4);
  const int act_bytes = a.rounds * kRoundBytes;
  const int act_scales = a.rounds * kWarp;
  float* xd_s = reinterpret_cast<float*>(xq_s + T * act_bytes);
  const int g = blockIdx.y;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t tasks = (a.out_g + R - 1) / R;
  for (int64_t t0 = 0; t0 < a.n_rows; t0 += T) {
    const int nt = static_cast<int>(a.n_rows - t0 < T ? a.n_rows - t0 : T);
    if (t0 > 0) __syncthreads();  // every warp is done with the previous tile
    if constexpr (kQuantize) {
      quantize_row_to_smem(a.x + t0 * a.x_stride + static_cast<int64_t>(g) * a.in, a.in, xq_s,
                           xd_s);
    } else {
      copy_tile_to_smem(a, g, t0, nt, xq_s, xd_s, act_bytes, act_scales);
    }
    __syncthreads();
    // After the activation loads: issued before them, up to 3/4 of L2 of prefetch queued ahead
    // of the activations and delayed the whole block (run 2 on the H100: out_b decode 22.9 us).
    if (t0 == 0) prefetch_tasks<R>(a, g, warp, lane);
    for (int64_t task = static_cast<int64_t>(blockIdx.x) * kWarps + warp; task < tasks;
         task += static_cast<int64_t>(gridDim.x) * kWarps) {
      const int64_t o0 = task * R;
      const int nr = static_cast<int>(a.out_g - o0 < R ? a.out_g - o0 : R);
      const int64_t row0 = static_cast<int64_t>(g) * a.out_g + o0;
      rows_task<T, R>(a, xq_s, xd_s, act_bytes, act_scales, row0, nr, nt,
                      a.y + t0 * a.y_stride + row0, lane);
    }
  }
}

// ============================================================================================
// matvec_q8_0__batch_imma
// ============================================================================================

// One m16n8k32 int8 tensor-core product, int32 accumulate from zero: c = A (16x32) * B (32x8),
// exact (integer). Fragments (PTX ISA, mma.m16n8k32 .s8): with g = lane/4, q = lane%4,
//   a0 = A[g][4q..4q+3], a1 = A[g+8][4q..], a2 = A[g][16+4q..], a3 = A[g+8][16+4q..]
//   b0 = B[4q..4q+3][g], b1 = B[16+4q..][g]
//   c0 = C[g][2q], c1 = C[g][2q+1], c2 = C[g+8][2q], c3 = C[g+8][2q+1]
__device__ __forceinline__ void mma_s8(const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                       int32_t (&c)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};"
      : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
#endif
}

constexpr int kImmaRows = 16;  // weight rows per block (one m-tile)

// grid (min(ceil(out_g/16), resident blocks), groups), 256 threads; m-tiles of 16 weight rows,
// token tiles of 8*NTT activation rows.
//
// Which products: the k dimension of a block is permuted the same way in A and B (thread q
// feeds bytes 8q..8q+3 as k-slots 4q..4q+3 and bytes 8q+4..8q+7 as 16+4q..), which leaves the
// integer dot unchanged: c = isum of block b for (row, token), exactly as 8 __dp4a give it.
// Which order: the decode kernel's lane l sums blocks l, l+32, ... in order and the warp tree
// adds lanes (16, then 8, 4, 2, 1 apart). Here warp w owns the four logical lanes w, w+16, w+8,
// w+24 (one accumulator set each, blocks in order), adds S_w + S_w+16 and S_w+8 + S_w+24 (tree
// offset 16), then those two (offset 8); shared memory finishes offsets 4, 2, 1 across warps.
// Every F32 operation and its operands are the decode kernel's: bit-equal for every row.
template <int NTT>
__global__ void __launch_bounds__(kThreads) q8_imma_kernel(const Q8Args a) {
  constexpr int NT = 8 * NTT;            // tokens per tile
  constexpr int kOut = NTT * 4 * kWarp;  // results per (warp, tile): NTT n-tiles x 4 x lanes
  __shared__ float part[kWarps][kOut];
  const int g = blockIdx.y;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int gq = lane >> 2, q = lane & 3;
  const int64_t xd_stride = a.x_stride / 32;
  const int64_t m_tiles = (a.out_g + kImmaRows - 1) / kImmaRows;
  // Quants of m-tile mt into L2 (warp 0, lane 0). The grid is persistent: each block walks
  // m-tiles blockIdx.x, +gridDim.x, ...; it prefetches two tiles ahead so that HBM streams
  // while the tensor cores and the F32 epilogue work on the current one.
  const auto prefetch_tile = [&](int64_t mt) {
    if (warp != 0 || lane != 0 || mt >= m_tiles) return;
    const int64_t first = static_cast<int64_t>(g) * a.out_g + mt * kImmaRows;
    const int64_t nrows =
        a.out_g - mt * kImmaRows < kImmaRows ? a.out_g - mt * kImmaRows : kImmaRows;
    prefetch_l2(a.q + first * a.in, static_cast<uint32_t>(nrows * a.in));
  };
  prefetch_tile(blockIdx.x);
  prefetch_tile(blockIdx.x + static_cast<int64_t>(gridDim.x));
  for (int64_t mt = blockIdx.x; mt < m_tiles; mt += gridDim.x) {
    prefetch_tile(mt + 2 * static_cast<int64_t>(gridDim.x));
    const int64_t m0 = mt * kImmaRows;
    // The two weight rows of this lane (clamped inside the group; clamped rows are not stored).
    const int64_t ra =
        static_cast<int64_t>(g) * a.out_g + (m0 + gq < a.out_g ? m0 + gq : a.out_g - 1);
    const int64_t rb =
        static_cast<int64_t>(g) * a.out_g + (m0 + gq + 8 < a.out_g ? m0 + gq + 8 : a.out_g - 1);
    const int8_t* qa = a.q + ra * a.in + 8 * q;
    const int8_t* qb = a.q + rb * a.in + 8 * q;
    const uint16_t* da = a.d + ra * a.nb;
    const uint16_t* db = a.d + rb * a.nb;
    for (int64_t t0 = 0; t0 < a.n_rows; t0 += NT) {
      // This lane's B rows (token t0 + 8n + gq) and scale columns (tokens t0 + 8n + 2q, +1).
      const int8_t* xrow[NTT];
      const float* xda[NTT];
      const float* xdb[NTT];
      bool tok_b[NTT], tok_d0[NTT], tok_d1[NTT];
#pragma unroll
      for (int n = 0; n < NTT; ++n) {
        const int64_t tb = t0 + 8 * n + gq, td = t0 + 8 * n + 2 * q;
        tok_b[n] = tb < a.n_rows;
        tok_d0[n] = td < a.n_rows;
        tok_d1[n] = td + 1 < a.n_rows;
        xrow[n] = a.xq + (tok_b[n] ? tb : 0) * a.x_stride + static_cast<int64_t>(g) * a.in + 8 * q;
        xda[n] = a.xd + (tok_d0[n] ? td : 0) * xd_stride + static_cast<int64_t>(g) * a.nb;
        xdb[n] = a.xd + (tok_d1[n] ? td + 1 : 0) * xd_stride + static_cast<int64_t>(g) * a.nb;
      }
      float acc[4][NTT][4];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int n = 0; n < NTT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[j][n][e] = 0.0f;
      for (int r = 0; r < a.rounds; ++r) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int b = 32 * r + warp + (j & 1) * 16 + (j >> 1) * 8;  // lanes w, w+16, w+8, w+24
          if (b >= a.nb) continue;                                    // warp-uniform
          const uint2 wa = __ldg(reinterpret_cast<const uint2*>(qa + 32 * b));
          const uint2 wb = __ldg(reinterpret_cast<const uint2*>(qb + 32 * b));
          const uint32_t af[4] = {wa.x, wb.x, wa.y, wb.y};
          const float wda = __half2float(__ushort_as_half(__ldg(da + b)));
          const float wdb = __half2float(__ushort_as_half(__ldg(db + b)));
#pragma unroll
          for (int n = 0; n < NTT; ++n) {
            uint2 xv = make_uint2(0u, 0u);
            if (tok_b[n]) xv = __ldg(reinterpret_cast<const uint2*>(xrow[n] + 32 * b));
            const float x0 = tok_d0[n] ? __ldg(xda[n] + b) : 0.0f;
            const float x1 = tok_d1[n] ? __ldg(xdb[n] + b) : 0.0f;
            int32_t c[4];
            mma_s8(af, xv.x, xv.y, c);
            acc[j][n][0] = lane_update(acc[j][n][0], wda, x0, c[0]);
            acc[j][n][1] = lane_update(acc[j][n][1], wda, x1, c[1]);
            acc[j][n][2] = lane_update(acc[j][n][2], wdb, x0, c[2]);
            acc[j][n][3] = lane_update(acc[j][n][3], wdb, x1, c[3]);
          }
        }
      }
      // Tree offsets 16 and 8 inside the warp, then 4, 2, 1 across warps through shared memory.
#pragma unroll
      for (int n = 0; n < NTT; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x16 = __fadd_rn(acc[0][n][e], acc[1][n][e]);  // S_w + S_w+16
          const float y16 = __fadd_rn(acc[2][n][e], acc[3][n][e]);  // S_w+8 + S_w+24
          part[warp][(n * 4 + e) * kWarp + lane] = __fadd_rn(x16, y16);
        }
      }
      __syncthreads();
      for (int i = threadIdx.x; i < kOut; i += kThreads) {
        const float v0 = __fadd_rn(part[0][i], part[4][i]);
        const float v1 = __fadd_rn(part[1][i], part[5][i]);
        const float v2 = __fadd_rn(part[2][i], part[6][i]);
        const float v3 = __fadd_rn(part[3][i], part[7][i]);
        const float v = __fadd_rn(__fadd_rn(v0, v2), __fadd_rn(v1, v3));
        const int n = i / (4 * kWarp), e = (i / kWarp) % 4, l = i % kWarp;
        const int64_t m = m0 + (l >> 2) + (e >= 2 ? 8 : 0);
        const int64_t t = t0 + 8 * n + 2 * (l & 3) + (e & 1);
        if (m < a.out_g && t < a.n_rows) {
          a.y[t * a.y_stride + static_cast<int64_t>(g) * a.out_g + m] = v;
        }
      }
      __syncthreads();  // part is rewritten by the next tile
    }
  }
}

// ============================================================================================
// matmul_q8__preq_tree
// ============================================================================================

// grid (rows, n_rows), 256 threads. Activations from global memory (natural layout).
__global__ void __launch_bounds__(kPreqThreads) q8_preq_tree_kernel(const Q8Args a) {
  __shared__ float partial[kPreqThreads];
  const int64_t row = blockIdx.x;
  const int64_t tok = blockIdx.y;
  const int64_t g = row / a.out_g;
  const int8_t* xq = a.xq + tok * a.x_stride + g * a.in;
  const float* xd = a.xd + tok * (a.x_stride / 32) + g * a.nb;
  const int tid = threadIdx.x;
  float acc = 0.0f;
  for (int b = tid; b < a.nb; b += kPreqThreads) {
    const Block w = load_weight(a, row, b);
    Block x;
    x.lo = __ldg(reinterpret_cast<const int4*>(xq) + 2 * b);
    x.hi = __ldg(reinterpret_cast<const int4*>(xq) + 2 * b + 1);
    x.d = __ldg(xd + b);
    acc = lane_update(acc, w.d, x.d, block_dot(w, x));
  }
  partial[tid] = acc;
  __syncthreads();
  for (int stride = kPreqThreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) partial[tid] = __fadd_rn(partial[tid], partial[tid + stride]);
    __syncthreads();
  }
  if (tid == 0) a.y[tok * a.y_stride + row] = partial[0];
}

// ============================================================================================
// F16 expansion (cuBLAS path) and activation conversion
// ============================================================================================

// out (rows*in) F16: element i = d * q in half precision (__hmul rounds the exact product
// once), ds4's dequant_q8_0_to_f16_kernel. 8 elements (one quarter block) per thread.
__global__ void q8_expand_f16_kernel(const int8_t* __restrict__ q, const uint16_t* __restrict__ d,
                                     __half* __restrict__ out, int64_t n8) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  const int2 qq = __ldg(reinterpret_cast<const int2*>(q) + i);
  const __half s = __ushort_as_half(__ldg(d + i / 4));
  const int words[2] = {qq.x, qq.y};
  __align__(16) __half h[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int v = static_cast<int8_t>((words[k / 4] >> (8 * (k % 4))) & 0xff);
    h[k] = __hmul(s, __int2half_rn(v));
  }
  reinterpret_cast<uint4*>(out)[i] = *reinterpret_cast<const uint4*>(h);
}

__global__ void f32_to_f16_kernel(const float* __restrict__ x, __half* __restrict__ h, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) h[i] = __float2half_rn(x[i]);
}

// ============================================================================================
// Host side
// ============================================================================================

Q8Args make_args(const CudaMatrix::Impl& w, int64_t n_rows, float* y) {
  Q8Args a;
  a.q = w.quants();
  a.d = w.scales();
  a.y = y;
  a.x_stride = w.groups * w.in;
  a.y_stride = w.groups * w.out;
  a.out_g = w.out;
  a.n_rows = n_rows;
  a.in = static_cast<int>(w.in);
  a.nb = static_cast<int>(w.in / 32);
  a.rounds = (a.nb + kWarp - 1) / kWarp;
  return a;
}

// R = 4 rows per warp when that still leaves two row tasks per warp slot of one wave.
bool tall(const CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w) {
  return w.rows() / 4 >= 2LL * ctx.sm_count * kWarps;
}

// Sets a.prefetch_tasks for a grid of grid_x * groups blocks of kWarps warps, R rows a task.
void set_prefetch(const CudaMatmulContext::Impl& ctx, Q8Args& a, int64_t grid_x, int64_t groups,
                  int R) {
  const double budget = 0.75 * static_cast<double>(ctx.l2_bytes);
  const double per_task =
      static_cast<double>(grid_x * groups * kWarps) * R * (static_cast<double>(a.in) + 2.0 * a.nb);
  a.prefetch_tasks = static_cast<int>(std::max(1.0, std::min(1024.0, budget / per_task)));
}

template <int T, int R, bool kQuantize>
void launch_planes(CudaMatmulContext::Impl& ctx, Q8Args a, int64_t groups, const char* name) {
  const auto kernel = q8_planes_kernel<T, R, kQuantize>;
  const size_t smem = static_cast<size_t>(T) * a.rounds * kRoundSmem;
  const int per_sm = ctx.blocks_per_sm(reinterpret_cast<const void*>(kernel), smem, name);
  const int64_t tasks = (a.out_g + R - 1) / R;
  const int64_t wanted = (tasks + kWarps - 1) / kWarps;
  // A resident-block cap per SM: 16-32 warps keep enough loads in flight, and fewer blocks
  // means fewer activation prologues (each block quantises or stages its own copy).
  const int cap = kQuantize ? kDecodeBlocksPerSm : kBatchBlocksPerSm;
  const int64_t resident =
      std::max<int64_t>(1, static_cast<int64_t>(ctx.sm_count) * std::min(per_sm, cap) / groups);
  const int64_t grid_x = std::min(wanted, resident);
  set_prefetch(ctx, a, grid_x, groups, R);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(groups));
  kernel<<<grid, kThreads, smem>>>(a);
  check(cudaGetLastError(), name);
}

template <int R>
void launch_batch_r(CudaMatmulContext::Impl& ctx, const Q8Args& a, int64_t groups, int tile) {
  const char* name = "matvec_q8_0__batch_planes launch";
  switch (tile) {
    case 1:
      return launch_planes<1, R, false>(ctx, a, groups, name);
    case 2:
      return launch_planes<2, R, false>(ctx, a, groups, name);
    case 4:
      return launch_planes<4, R, false>(ctx, a, groups, name);
    case 8:
      return launch_planes<8, R, false>(ctx, a, groups, name);
    default:
      return launch_planes<16, R, false>(ctx, a, groups, name);
  }
}

void check_groups(const CudaMatrix::Impl& w, const char* what) {
  if (w.groups > 65535) fail(std::string(what) + ": more than 65535 groups");
  if (w.in > (1 << 30)) fail(std::string(what) + ": in too large");
}

}  // namespace

void launch_q8_decode(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const float* x,
                      int64_t n_rows, float* y) {
  check_groups(w, "matvec_q8_0__decode_planes");
  const char* name = "matvec_q8_0__decode_planes launch";
  const bool r4 = tall(ctx, w);
  // One launch per activation row, exactly as N=1 decode runs it.
  for (int64_t r = 0; r < n_rows; ++r) {
    Q8Args a = make_args(w, 1, y + r * w.groups * w.out);
    a.x = x + r * w.groups * w.in;
    if (r4) {
      launch_planes<1, 4, true>(ctx, a, w.groups, name);
    } else {
      launch_planes<1, 1, true>(ctx, a, w.groups, name);
    }
  }
}

void launch_q8_batch(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const int8_t* xq,
                     const float* xd, int64_t n_rows, float* y) {
  check_groups(w, "matvec_q8_0__batch_planes");
  Q8Args a = make_args(w, n_rows, y);
  a.xq = xq;
  a.xd = xd;
  // Smallest power-of-two tile >= n_rows (at most 16), shrunk until the tile fits the budget.
  int tile = 1;
  while (tile < n_rows && tile < kMaxTile) tile *= 2;
  while (tile > 1 && static_cast<size_t>(tile) * a.rounds * kRoundSmem > kTileSmemBudget) tile /= 2;
  if (tall(ctx, w)) {
    launch_batch_r<4>(ctx, a, w.groups, tile);
  } else {
    launch_batch_r<1>(ctx, a, w.groups, tile);
  }
}

template <int NTT>
void launch_imma(CudaMatmulContext::Impl& ctx, const Q8Args& a, int64_t groups) {
  const char* name = "matvec_q8_0__batch_imma launch";
  const auto kernel = q8_imma_kernel<NTT>;
  const int per_sm = ctx.blocks_per_sm(reinterpret_cast<const void*>(kernel), 0, name);
  const int64_t m_tiles = (a.out_g + kImmaRows - 1) / kImmaRows;
  const int64_t resident =
      std::max<int64_t>(1, static_cast<int64_t>(ctx.sm_count) * per_sm / groups);
  const dim3 grid(static_cast<unsigned>(std::min(m_tiles, resident)),
                  static_cast<unsigned>(groups));
  kernel<<<grid, kThreads>>>(a);
  check(cudaGetLastError(), name);
}

void launch_q8_batch_imma(CudaMatmulContext::Impl& ctx, const CudaMatrix::Impl& w, const int8_t* xq,
                          const float* xd, int64_t n_rows, float* y) {
  check_groups(w, "matvec_q8_0__batch_imma");
  Q8Args a = make_args(w, n_rows, y);
  a.xq = xq;
  a.xd = xd;
  // Token tiles of 8 or 16 rows (16: 100 registers, two blocks per SM; 32 would need 200).
  if (n_rows <= 8) {
    launch_imma<1>(ctx, a, w.groups);
  } else {
    launch_imma<2>(ctx, a, w.groups);
  }
}

void launch_q8_preq_tree(const CudaMatrix::Impl& w, const int8_t* xq, const float* xd,
                         int64_t n_rows, float* y) {
  check_groups(w, "matmul_q8__preq_tree");
  if (n_rows > 65535) fail("matmul_q8__preq_tree: n_rows > 65535 (grid.y)");
  if (w.rows() > 0x7fffffff) fail("matmul_q8__preq_tree: too many output rows");
  Q8Args a = make_args(w, n_rows, y);
  a.xq = xq;
  a.xd = xd;
  const dim3 grid(static_cast<unsigned>(w.rows()), static_cast<unsigned>(n_rows));
  q8_preq_tree_kernel<<<grid, kPreqThreads>>>(a);
  check(cudaGetLastError(), "matmul_q8__preq_tree launch");
}

void launch_q8_expand_f16(const CudaMatrix::Impl& w, void* dst_f16) {
  const int64_t n8 = w.rows() * w.in / 8;
  const int64_t blocks = (n8 + 255) / 256;
  if (blocks > 0x7fffffff) fail("q8_expand_f16: matrix too large");
  q8_expand_f16_kernel<<<static_cast<unsigned>(blocks), 256>>>(w.quants(), w.scales(),
                                                               static_cast<__half*>(dst_f16), n8);
  check(cudaGetLastError(), "q8_expand_f16_kernel launch");
}

void launch_f32_to_f16(const float* x, void* h, int64_t n) {
  if (n == 0) return;
  const int64_t blocks = (n + 255) / 256;
  if (blocks > 0x7fffffff) fail("f32_to_f16: too many elements");
  f32_to_f16_kernel<<<static_cast<unsigned>(blocks), 256>>>(x, static_cast<__half*>(h), n);
  check(cudaGetLastError(), "f32_to_f16_kernel launch");
}

}  // namespace cuda
}  // namespace ds4
