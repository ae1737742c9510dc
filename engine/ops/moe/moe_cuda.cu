// Routed MoE experts on the GPU: Q8_K activation quantisation, IQ2_XXS / Q2_K / Q4_K gate/up,
// clamped SwiGLU, IQ2_XXS / Q2_K / Q4_K down, slot sum (ds4-model.md §3 and §4.7 step 4;
// ds4-dispatch.md §1.2 rows M1, M2 and §5). Host API and argument shapes:
// engine/backend/cuda/ops_cuda.h (MoeArgs, ExpertType).
// Check: tests/unit/cuda_ops_test --gtest_filter='*moe*:*quantize_q8_k*' and tests/unit/cuda_moe_test.
//
// Expert types: gate/up share MoeArgs::gate_up_type, down has down_type; every kernel below is a
// template on the type (dot_warp<T, M> for the Q8_K dots, expert_value<T> for dequantised values),
// chosen at launch by with_type. Dots (all: exact int32 block sums, F32 block terms in block
// order from acc = 0, no FMA):
//   IQ2_XXS  8 lanes per block, lane = sub-block: dp4a on sign-applied grid bytes times 2s+1;
//            acc += (f16(d)*y.d)*bsum; times 0.125 at the end (dot_iq2_xxs_q8_k).
//   Q2_K     16 lanes per block, lane = group of 16: (sc&15)*sum(q*q8), bsums*(sc>>4);
//            acc += (y.d*d)*isum - (y.d*dmin)*summs (dot_q2_k_q8_k).
//   Q4_K     16 lanes per block, lane = half sub-block: sc*sum(q*q8), bsums*m (6-bit scales of
//            get_scale_min_k4); acc += (d*y.d)*isum - (dmin*y.d)*summs (dot_q4_k_q8_k).
//
// Variants:
//   quantize_q8_k__block256  one 256-thread block per 256-value block: the value of largest
//       magnitude (first index on ties: an exact (|x|, index) reduction), iscale = -127/max,
//       q = rint(iscale*x) clamped, bsums by 16-lane integer shuffles, d = 1/iscale. Bitwise
//       against quantize_act_q8_k.
//   moe__decode_lut  (M1/M2 exact; N=1 decode, and its per-token-equal batched form)
//       1. x rows -> Q8_K.
//       2. gate/up: grid (ff/8, token-slot pairs), one warp per output row computes the Q8_K
//          dots of the gate row and the up row (dot_warp<T, 1>, the type's dot above).
//          h = silu(min(G, L)) * clamp(U, -L, L) * weight (exp as float(exp(double))).
//       3. mid rows -> Q8_K.
//       4. down + sum: grid (d/8, tokens), one warp per output row; per slot in slot order the
//          down dot, y = ((0 + y_0) + y_1) + ... as ffn_layer's slot loop.
//       Same operation order as expert_ffn_ref + the slot sum (only the SwiGLU exp rounding
//       differs). Tokens are independent grid rows: per token bit-equal to n_tok = 1. ds4's
//       decode kernel uses a LUT and lane-strided F32 partial sums; ours keeps the CPU order.
//   moe__sorted_exact  (M1/M2 exact, batched: each expert's weights read once per tile)
//       x -> Q8_K; pairs sorted by expert (moe_sort_kernel, stable); gate/up grid (ff/8,
//       n_expert): per tile of up to kTile = 8 pairs of the expert, one warp per row reads the
//       gate and up rows once and computes every pair's dots with dot_warp<T, 8>, whose per-pair
//       operations are dot_warp<T, 1>'s (each pair has its own integer sums and accumulator);
//       same swiglu_weighted into mid; mid -> Q8_K as decode_lut; down grid (d/8, n_expert):
//       per tile one warp per row computes each pair's down dot into Ye (pairs, d); then
//       y = ((0 + Ye_slot0) + Ye_slot1) + ... in slot order. Bit-equal to decode_lut (y and
//       mid) for every token and every N, by construction.
//   moe__expert_tiles  (M1 fast) pairs sorted by expert with a stable single-block counting
//       sort; per (expert, 8 output rows) block, tiles of 8 pairs: one warp per weight row
//       dequantises it exactly (the F32 operations of dequantize_row, expert_value<T>) and
//       accumulates F32 dots with the F32 activations (lane l: elements l, l+32, ...; then a
//       __shfl_down tree); H = swiglu * weight; down the same way on H; each token's outputs
//       summed in (expert id, slot) order starting from 0, as moe_expert_tiles. No atomics:
//       deterministic for every N (ds4's N >= 128 atomicAdd down projection is not reproduced).
//       Its F32 dot order differs from the CPU's Eigen GEMM: nmse tier.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/error.h"

namespace ds4::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;  // 8 warps = 8 output rows
constexpr int kQK = 256;
constexpr int kIq2Bytes = 66;
constexpr int kQ2KBytes = 84;
constexpr int kQ4KBytes = 144;
constexpr int kTile = 8;  // pairs per weight pass (expert tiles)
constexpr int kMaxUsed = 16;

// ds4::BlockQ8K (ds4/quant.h), the same 292-byte layout.
struct Q8KBlock {
  float d;
  int8_t qs[256];
  int16_t bsums[16];
};
static_assert(sizeof(Q8KBlock) == 292, "Q8KBlock must match ds4::BlockQ8K");

__device__ __forceinline__ float exp_f32(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

__device__ __forceinline__ float load_f16(const uint8_t* p) {  // 2-byte aligned
  return __half2float(*reinterpret_cast<const __half*>(p));
}

__device__ __forceinline__ uint32_t load_u32_2aligned(const uint8_t* p) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(s[0]) | (static_cast<uint32_t>(s[1]) << 16);
}

// iq2_sign_mask: the 7 stored sign bits plus their parity in bit 7.
__device__ __forceinline__ uint32_t iq2_signs(uint32_t index7) {
  return index7 | ((__popc(index7) & 1u) << 7);
}

// swiglu_clamped_ref for one element, times the routing weight (expert_ffn_ref: h *= weight).
__device__ __forceinline__ float swiglu_weighted(float g, float u, float limit, float weight) {
  if (limit > 1e-6f) {
    g = fminf(g, limit);
    u = fmaxf(fminf(u, limit), -limit);
  }
  const float h = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, exp_f32(-g))), u);
  return __fmul_rn(h, weight);
}

// =============================================================================================
// Q8_K activation quantisation
// =============================================================================================

// x: (n_blocks * 256) F32; y: (n_blocks) Q8KBlock. Grid n_blocks, 256 threads (thread = element).
__global__ void __launch_bounds__(kQK)
    quantize_q8_k_kernel(const float* __restrict__ x, Q8KBlock* __restrict__ y) {
  __shared__ float s_ax[kQK / kWarp];
  __shared__ int s_idx[kQK / kWarp];
  __shared__ float s_max;
  __shared__ float s_amax;
  const int64_t b = blockIdx.x;
  const int i = threadIdx.x, lane = i % kWarp, warp = i / kWarp;
  const float v = x[b * kQK + i];
  // Largest |x|, lowest index on ties (quantize_act_q8_k's strict '>' scan from index 0).
  float ax = fabsf(v);
  int idx = i;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ax2 = __shfl_xor_sync(kFullMask, ax, off);
    const int idx2 = __shfl_xor_sync(kFullMask, idx, off);
    if (ax2 > ax || (ax2 == ax && idx2 < idx)) {
      ax = ax2;
      idx = idx2;
    }
  }
  if (lane == 0) {
    s_ax[warp] = ax;
    s_idx[warp] = idx;
  }
  __syncthreads();
  if (i == 0) {
    float best = s_ax[0];
    int bi = s_idx[0];
    for (int w = 1; w < kQK / kWarp; ++w) {
      if (s_ax[w] > best) {  // warps hold increasing index ranges: ties keep the earlier one
        best = s_ax[w];
        bi = s_idx[w];
      }
    }
    s_amax = best;
    s_max = x[b * kQK + bi];
  }
  __syncthreads();
  Q8KBlock& out = y[b];
  if (s_amax == 0.0f) {
    out.qs[i] = 0;
    if (i < 16) out.bsums[i] = 0;
    if (i == 0) out.d = 0.0f;
    return;
  }
  const float iscale = __fdiv_rn(-127.0f, s_max);
  int q = __float2int_rn(__fmul_rn(iscale, v));  // ties to even, as lrintf
  q = q > 127 ? 127 : (q < -128 ? -128 : q);
  out.qs[i] = static_cast<int8_t>(q);
  int sum = q;  // groups of 16 = half-warps
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) sum += __shfl_xor_sync(kFullMask, sum, off);
  if (i % 16 == 0) out.bsums[i / 16] = static_cast<int16_t>(sum);
  if (i == 0) out.d = __fdiv_rn(1.0f, iscale);
}

// =============================================================================================
// Expert types: warp dots (exact integer block sums, F32 block terms in block order) and single
// values (dequantize_row's F32 operations), one template per type behind dot_warp / expert_value
// =============================================================================================

template <ExpertType T>
constexpr int kBlockBytes =
    T == ExpertType::iq2_xxs ? kIq2Bytes : T == ExpertType::q2_k ? kQ2KBytes : kQ4KBytes;

// The warp dots take M activation rows at once (act[m], m < mc; mc warp-uniform): the weight
// row's bytes are read and decoded once per step, then each row gets its own integer sums and its
// own F32 accumulator. Row m's operations do not depend on M or on the other rows, so the M = 1
// call (decode_lut) and the M = kTile call (sorted_exact) give the same bits per row. All 32
// lanes call; every lane gets every out[m].

// dot_iq2_xxs_q8_k, nb blocks of 66 bytes. grid: the 256-entry lattice (shared memory).
// Lane l takes sub-block l%8 of block 4k + l/8: its exact int32 sum (dp4a on sign-applied grid
// bytes) times the sub-block scale 2s+1; 8-lane xor-shuffles give each block's bsum; the F32
// block terms (f16(d_w)*d_x)*bsum are added in block order and scaled by 0.125 at the end.
template <int M>
__device__ __forceinline__ void dot_iq2_xxs_warp(const uint8_t* __restrict__ row,
                                                 const Q8KBlock* const (&act)[M], int mc, int nb,
                                                 const uint64_t* grid, int lane, float (&out)[M]) {
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  const int ib = lane & 7, sub = lane >> 3;
  for (int b0 = 0; b0 < nb; b0 += 4) {
    const int b = b0 + sub;
    int w[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // the 32 signed weights of the sub-block, 4 per word
    int scale = 0;
    if (b < nb) {
      const uint8_t* sb = row + static_cast<int64_t>(b) * kIq2Bytes + 2 + 8 * ib;
      const uint32_t a0 = load_u32_2aligned(sb);
      const uint32_t a1 = load_u32_2aligned(sb + 4);
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const uint64_t gv = grid[(a0 >> (8 * l)) & 255u];
        const uint32_t signs = iq2_signs((a1 >> (7 * l)) & 127u);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          int g0 = static_cast<int>((gv >> (8 * j)) & 255u);
          int g1 = static_cast<int>((gv >> (8 * (j + 4))) & 255u);
          if ((signs >> j) & 1u) g0 = -g0;
          if ((signs >> (j + 4)) & 1u) g1 = -g1;
          w[2 * l] |= (g0 & 255) << (8 * j);
          w[2 * l + 1] |= (g1 & 255) << (8 * j);
        }
      }
      scale = static_cast<int>(2 * (a1 >> 28) + 1);
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (m >= mc) continue;  // warp-uniform
      int part = 0;
      if (b < nb) {
        const int32_t* q4 = reinterpret_cast<const int32_t*>(act[m][b].qs + 32 * ib);
        int sumi = 0;
#pragma unroll
        for (int k = 0; k < 8; ++k) sumi = __dp4a(w[k], q4[k], sumi);
        part = sumi * scale;
      }
      part += __shfl_xor_sync(kFullMask, part, 1);
      part += __shfl_xor_sync(kFullMask, part, 2);
      part += __shfl_xor_sync(kFullMask, part, 4);
      for (int s = 0; s < 4; ++s) {
        const int bb = b0 + s;
        if (bb >= nb) break;  // warp-uniform
        const int bsum = __shfl_sync(kFullMask, part, 8 * s);
        const float d = __fmul_rn(load_f16(row + static_cast<int64_t>(bb) * kIq2Bytes), act[m][bb].d);
        acc[m] = __fadd_rn(acc[m], __fmul_rn(d, static_cast<float>(bsum)));
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) out[m] = __fmul_rn(0.125f, acc[m]);
}

// get_scale_min_k4: the 6-bit (scale, min) of Q4_K sub-block j from scales[12].
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// dot_q2_k_q8_k (84-byte blocks) and dot_q4_k_q8_k (144-byte blocks): 16 lanes per block, two
// blocks per step. Lane g = l%16 owns elements 16g..16g+15 (Q2_K: group g, scale/min byte g;
// Q4_K: half g%2 of sub-block g/2, 6-bit scale/min of sub-block g/2): isum part sc*sum(q*q8)
// (dp4a on the unpacked weights) and summs part bsums[g]*m, summed over the 16 lanes by integer
// shuffles; then per block in block order acc += (d*y.d)*isum - (dmin*y.d)*summs, acc from 0.
template <ExpertType T, int M>
__device__ __forceinline__ void dot_kquant_warp(const uint8_t* __restrict__ row,
                                                const Q8KBlock* const (&act)[M], int mc, int nb,
                                                int lane, float (&out)[M]) {
  static_assert(T == ExpertType::q2_k || T == ExpertType::q4_k, "K-quant types only");
  constexpr int kBytes = kBlockBytes<T>;
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0f;
  const int g = lane & 15, sub = lane >> 4;
  for (int b0 = 0; b0 < nb; b0 += 2) {
    const int b = b0 + sub;
    uint32_t w[4] = {0, 0, 0, 0};  // the lane's 16 unsigned weights, 4 per word
    int sc = 0, mn = 0;
    if (b < nb) {
      const uint8_t* blk = row + static_cast<int64_t>(b) * kBytes;
      if constexpr (T == ExpertType::q2_k) {
        // Group g: bytes 16 + 32*(g>>3) + 16*(g&1) + i, bits 2*((g&7)>>1).
        const uint32_t* q = reinterpret_cast<const uint32_t*>(blk + 16 + 32 * (g >> 3) + 16 * (g & 1));
        const int shift = 2 * ((g & 7) >> 1);
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (q[k] >> shift) & 0x03030303u;
        sc = blk[g] & 15;
        mn = blk[g] >> 4;
      } else {
        // Element e = 16g + i: byte 32*(e/64) + e%32 of qs (at 16), high nibble when (e%64) >= 32.
        const int s = g >> 1;
        const uint32_t* q = reinterpret_cast<const uint32_t*>(blk + 16 + 32 * (s >> 1) + 16 * (g & 1));
        const int shift = 4 * (s & 1);
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (q[k] >> shift) & 0x0f0f0f0fu;
        scale_min_k4(s, blk + 4, sc, mn);
      }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (m >= mc) continue;  // warp-uniform
      int pi = 0, pm = 0;
      if (b < nb) {
        const Q8KBlock& y = act[m][b];
        const int32_t* q8 = reinterpret_cast<const int32_t*>(y.qs + 16 * g);
        int s = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) s = __dp4a(static_cast<int>(w[k]), q8[k], s);
        pi = sc * s;
        pm = y.bsums[g] * mn;
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) {
        pi += __shfl_xor_sync(kFullMask, pi, off);
        pm += __shfl_xor_sync(kFullMask, pm, off);
      }
      for (int s = 0; s < 2; ++s) {
        const int bb = b0 + s;
        if (bb >= nb) break;  // warp-uniform
        const int isum = __shfl_sync(kFullMask, pi, 16 * s);
        const int summs = __shfl_sync(kFullMask, pm, 16 * s);
        const uint8_t* blk = row + static_cast<int64_t>(bb) * kBytes;
        const float yd = act[m][bb].d;
        // Q2_K: f16 d, dmin at 80, 82; Q4_K: at 0, 2.
        const int doff = T == ExpertType::q2_k ? 80 : 0;
        const float dall = __fmul_rn(load_f16(blk + doff), yd);
        const float dmin = __fmul_rn(load_f16(blk + doff + 2), yd);
        acc[m] = __fadd_rn(acc[m], __fsub_rn(__fmul_rn(dall, static_cast<float>(isum)),
                                             __fmul_rn(dmin, static_cast<float>(summs))));
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) out[m] = acc[m];
}

template <ExpertType T, int M>
__device__ __forceinline__ void dot_warp(const uint8_t* __restrict__ row,
                                         const Q8KBlock* const (&act)[M], int mc, int nb,
                                         const uint64_t* grid, int lane, float (&out)[M]) {
  if constexpr (T == ExpertType::iq2_xxs) {
    dot_iq2_xxs_warp<M>(row, act, mc, nb, grid, lane, out);
  } else {
    dot_kquant_warp<T, M>(row, act, mc, nb, lane, out);
  }
}

// Element i of an IQ2_XXS row, as dequantize_iq2_xxs: db = (d*(0.5+s))*0.25, (db*grid)*sign.
__device__ __forceinline__ float iq2_xxs_value(const uint8_t* row, int64_t i, const uint64_t* grid) {
  const uint8_t* blk = row + (i >> 8) * kIq2Bytes;
  const int r = static_cast<int>(i & 255);
  const int ib = r >> 5, l = (r >> 3) & 3, j = r & 7;
  const uint8_t* sb = blk + 2 + 8 * ib;
  const uint32_t a1 = load_u32_2aligned(sb + 4);
  const float db =
      __fmul_rn(__fmul_rn(load_f16(blk), __fadd_rn(0.5f, static_cast<float>(a1 >> 28))), 0.25f);
  const int gval = static_cast<int>((grid[sb[l]] >> (8 * j)) & 255u);
  const float sign = (iq2_signs((a1 >> (7 * l)) & 127u) >> j) & 1u ? -1.0f : 1.0f;
  return __fmul_rn(__fmul_rn(db, static_cast<float>(gval)), sign);
}

// Element i of a Q2_K row, as dequantize_q2_k: (d*sc)*q - dmin*m.
__device__ __forceinline__ float q2_k_value(const uint8_t* row, int64_t i) {
  const uint8_t* blk = row + (i >> 8) * kQ2KBytes;
  const int e = static_cast<int>(i & 255);
  const uint8_t sc = blk[e / 16];
  const float dl = __fmul_rn(load_f16(blk + 80), static_cast<float>(sc & 15));
  const float ml = __fmul_rn(load_f16(blk + 82), static_cast<float>(sc >> 4));
  const int q = (blk[16 + 32 * (e >> 7) + (e & 31)] >> (2 * ((e & 127) >> 5))) & 3;
  return __fsub_rn(__fmul_rn(dl, static_cast<float>(q)), ml);
}

// Element i of a Q4_K row, as dequantize_q4_k: dl = d*sc, ml = dmin*m, dl*q - ml.
__device__ __forceinline__ float q4_k_value(const uint8_t* row, int64_t i) {
  const uint8_t* blk = row + (i >> 8) * kQ4KBytes;
  const int e = static_cast<int>(i & 255);
  int sc, m;
  scale_min_k4(e >> 5, blk + 4, sc, m);
  const float dl = __fmul_rn(load_f16(blk), static_cast<float>(sc));
  const float ml = __fmul_rn(load_f16(blk + 2), static_cast<float>(m));
  const int q = (blk[16 + 32 * (e >> 6) + (e & 31)] >> (4 * ((e >> 5) & 1))) & 15;
  return __fsub_rn(__fmul_rn(dl, static_cast<float>(q)), ml);
}

template <ExpertType T>
__device__ __forceinline__ float expert_value(const uint8_t* row, int64_t i, const uint64_t* grid) {
  if constexpr (T == ExpertType::iq2_xxs) return iq2_xxs_value(row, i, grid);
  else if constexpr (T == ExpertType::q2_k) return q2_k_value(row, i);
  else return q4_k_value(row, i);
}

// The IQ2_XXS lattice into shared memory (only kernels instantiated for iq2_xxs call this).
__device__ __forceinline__ void load_grid(const uint64_t* __restrict__ src, uint64_t* dst) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) dst[i] = src[i];
  __syncthreads();
}

// =============================================================================================
// moe__decode_lut and moe__sorted_exact
// =============================================================================================

// Pairs of the block's expert. order == nullptr (decode_lut): block y is pair blockIdx.y alone.
// Otherwise (sorted_exact): block y is expert blockIdx.y, its pairs order[offsets[e] ..].
struct PairRange {
  int e, begin, cnt;
};
__device__ __forceinline__ PairRange pair_range(const MoeArgs& a, const int32_t* offsets,
                                                const int32_t* order) {
  if (!order) return {a.experts[blockIdx.y], static_cast<int>(blockIdx.y), 1};
  const int e = blockIdx.y;
  return {e, offsets[e], offsets[e + 1] - offsets[e]};
}
__device__ __forceinline__ int64_t pair_at(const int32_t* order, int k) {
  return order ? order[k] : k;
}

// Grid (ff/8, n_pairs) with M = 1 and order == nullptr (decode_lut), or (ff/8, n_expert) with
// M = kTile (sorted_exact). One warp per output row o: gate and up dots of M pairs per weight
// pass, h = swiglu * weight. xq: (n_tok, d/256) Q8_K; mid: (n_pairs, ff) F32.
template <ExpertType T, int M>
__global__ void __launch_bounds__(kThreads)
    moe_gate_up_kernel(MoeArgs a, const int32_t* __restrict__ offsets,
                       const int32_t* __restrict__ order, const Q8KBlock* __restrict__ xq,
                       float* __restrict__ mid) {
  const PairRange r = pair_range(a, offsets, order);
  if (r.cnt == 0) return;  // block-uniform
  __shared__ uint64_t grid[256];
  if constexpr (T == ExpertType::iq2_xxs) load_grid(a.iq2_grid, grid);
  const int lane = threadIdx.x % kWarp;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int nb = static_cast<int>(a.d / kQK);
  const size_t off = (static_cast<size_t>(r.e) * a.ff + o) * nb * kBlockBytes<T>;
  const uint8_t* grow = static_cast<const uint8_t*>(a.gate) + off;
  const uint8_t* urow = static_cast<const uint8_t*>(a.up) + off;
  for (int m0 = 0; m0 < r.cnt; m0 += M) {
    const int mc = min(M, r.cnt - m0);
    int64_t p[M];
    const Q8KBlock* act[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
      p[m] = m < mc ? pair_at(order, r.begin + m0 + m) : 0;
      act[m] = xq + (p[m] / a.n_used) * nb;
    }
    float G[M], U[M];
    dot_warp<T, M>(grow, act, mc, nb, grid, lane, G);
    dot_warp<T, M>(urow, act, mc, nb, grid, lane, U);
    if (lane == 0) {
#pragma unroll
      for (int m = 0; m < M; ++m)
        if (m < mc) mid[p[m] * a.ff + o] = swiglu_weighted(G[m], U[m], a.limit, a.weights[p[m]]);
    }
  }
}

// decode_lut down + sum. Grid (d/8, n_tok). midq: (n_pairs, ff/256) Q8_K. Per slot in slot
// order the down dot of output row o, y = ((0 + y_0) + y_1) + ...
template <ExpertType T>
__global__ void __launch_bounds__(kThreads)
    moe_down_sum_kernel(MoeArgs a, const Q8KBlock* __restrict__ midq) {
  __shared__ uint64_t grid[256];
  if constexpr (T == ExpertType::iq2_xxs) load_grid(a.iq2_grid, grid);
  const int lane = threadIdx.x % kWarp;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int64_t t = blockIdx.y;
  const int nb = static_cast<int>(a.ff / kQK);
  const size_t rb = static_cast<size_t>(nb) * kBlockBytes<T>;
  float y = 0.0f;
  for (int s = 0; s < a.n_used; ++s) {
    const int64_t p = t * a.n_used + s;
    const int64_t e = a.experts[p];
    const uint8_t* row = static_cast<const uint8_t*>(a.down) + (static_cast<size_t>(e) * a.d + o) * rb;
    const Q8KBlock* act[1] = {midq + p * nb};
    float v[1];
    dot_warp<T, 1>(row, act, 1, nb, grid, lane, v);
    y = __fadd_rn(y, v[0]);
  }
  if (lane == 0) a.y[t * a.d + o] = y;
}

// sorted_exact down. Grid (d/8, n_expert). Ye: (n_pairs, d) F32, the down dot of each pair
// (decode_lut's per-slot value, before the slot sum).
template <ExpertType T>
__global__ void __launch_bounds__(kThreads)
    moe_sorted_down_kernel(MoeArgs a, const int32_t* __restrict__ offsets,
                           const int32_t* __restrict__ order, const Q8KBlock* __restrict__ midq,
                           float* __restrict__ Ye) {
  const PairRange r = pair_range(a, offsets, order);
  if (r.cnt == 0) return;  // block-uniform
  __shared__ uint64_t grid[256];
  if constexpr (T == ExpertType::iq2_xxs) load_grid(a.iq2_grid, grid);
  const int lane = threadIdx.x % kWarp;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int nb = static_cast<int>(a.ff / kQK);
  const uint8_t* row = static_cast<const uint8_t*>(a.down) +
                       (static_cast<size_t>(r.e) * a.d + o) * nb * kBlockBytes<T>;
  for (int m0 = 0; m0 < r.cnt; m0 += kTile) {
    const int mc = min(kTile, r.cnt - m0);
    int64_t p[kTile];
    const Q8KBlock* act[kTile];
#pragma unroll
    for (int m = 0; m < kTile; ++m) {
      p[m] = m < mc ? order[r.begin + m0 + m] : 0;
      act[m] = midq + p[m] * nb;
    }
    float v[kTile];
    dot_warp<T, kTile>(row, act, mc, nb, grid, lane, v);
    if (lane == 0) {
#pragma unroll
      for (int m = 0; m < kTile; ++m)
        if (m < mc) Ye[p[m] * a.d + o] = v[m];
    }
  }
}

// Thread per (token, j): y = ((0 + Ye_slot0) + Ye_slot1) + ..., slot order (decode_lut's).
__global__ void moe_slot_sum_kernel(MoeArgs a, const float* __restrict__ Ye) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= a.n_tok * a.d) return;
  const int64_t t = g / a.d, j = g % a.d;
  float y = 0.0f;
  for (int s = 0; s < a.n_used; ++s) y = __fadd_rn(y, Ye[(t * a.n_used + s) * a.d + j]);
  a.y[g] = y;
}

// =============================================================================================
// moe__expert_tiles
// =============================================================================================

// Stable counting sort of the pairs by expert. One block. offsets: (n_expert + 1), order:
// (n_pairs) pair indices, expert-major, pair index ascending within an expert.
__global__ void moe_sort_kernel(const int32_t* __restrict__ experts, int64_t n_pairs, int n_expert,
                                int32_t* __restrict__ offsets, int32_t* __restrict__ order) {
  for (int e = threadIdx.x; e < n_expert; e += blockDim.x) {
    int c = 0;
    for (int64_t p = 0; p < n_pairs; ++p) c += experts[p] == e;
    offsets[e + 1] = c;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int e = 0; e < n_expert; ++e) offsets[e + 1] += offsets[e];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < n_expert; e += blockDim.x) {
    int k = offsets[e];
    for (int64_t p = 0; p < n_pairs; ++p) {
      if (experts[p] == e) order[k++] = static_cast<int32_t>(p);
    }
  }
}

__device__ __forceinline__ float warp_tree_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_down_sync(kFullMask, v, off));
  return v;  // lane 0
}

// Grid (ff/8, n_expert). H: (n_pairs, ff) F32 = swiglu(gate x, up x) * weight per pair.
template <ExpertType T>
__global__ void __launch_bounds__(kThreads)
    moe_tile_gate_up_kernel(MoeArgs a, const int32_t* __restrict__ offsets,
                            const int32_t* __restrict__ order, float* __restrict__ H) {
  const int e = blockIdx.y;
  const int begin = offsets[e], cnt = offsets[e + 1] - begin;
  if (cnt == 0) return;  // block-uniform
  __shared__ uint64_t grid[256];
  if constexpr (T == ExpertType::iq2_xxs) load_grid(a.iq2_grid, grid);
  const int lane = threadIdx.x % kWarp;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const size_t rb = static_cast<size_t>(a.d / kQK) * kBlockBytes<T>;
  const size_t off = (static_cast<size_t>(e) * a.ff + o) * rb;
  const uint8_t* grow = static_cast<const uint8_t*>(a.gate) + off;
  const uint8_t* urow = static_cast<const uint8_t*>(a.up) + off;
  for (int m0 = 0; m0 < cnt; m0 += kTile) {
    const int mc = min(kTile, cnt - m0);
    int64_t tok[kTile];
#pragma unroll
    for (int m = 0; m < kTile; ++m) tok[m] = m < mc ? order[begin + m0 + m] / a.n_used : 0;
    float pg[kTile], pu[kTile];
#pragma unroll
    for (int m = 0; m < kTile; ++m) pg[m] = pu[m] = 0.0f;
    for (int64_t i = lane; i < a.d; i += kWarp) {
      const float wg = expert_value<T>(grow, i, grid);
      const float wu = expert_value<T>(urow, i, grid);
#pragma unroll
      for (int m = 0; m < kTile; ++m) {
        if (m < mc) {
          const float xv = a.x[tok[m] * a.d + i];
          pg[m] = __fadd_rn(pg[m], __fmul_rn(wg, xv));
          pu[m] = __fadd_rn(pu[m], __fmul_rn(wu, xv));
        }
      }
    }
#pragma unroll
    for (int m = 0; m < kTile; ++m) {
      const float G = warp_tree_sum(pg[m]);
      const float U = warp_tree_sum(pu[m]);
      if (lane == 0 && m < mc) {
        const int64_t p = order[begin + m0 + m];
        H[p * a.ff + o] = swiglu_weighted(G, U, a.limit, a.weights[p]);
      }
    }
  }
}

// Grid (d/8, n_expert). Ye: (n_pairs, d) F32 = down_e H_p.
template <ExpertType T>
__global__ void __launch_bounds__(kThreads)
    moe_tile_down_kernel(MoeArgs a, const int32_t* __restrict__ offsets,
                         const int32_t* __restrict__ order, const float* __restrict__ H,
                         float* __restrict__ Ye) {
  const int e = blockIdx.y;
  const int begin = offsets[e], cnt = offsets[e + 1] - begin;
  if (cnt == 0) return;
  __shared__ uint64_t grid[256];
  if constexpr (T == ExpertType::iq2_xxs) load_grid(a.iq2_grid, grid);
  const int lane = threadIdx.x % kWarp;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const size_t rb = static_cast<size_t>(a.ff / kQK) * kBlockBytes<T>;
  const uint8_t* row = static_cast<const uint8_t*>(a.down) + (static_cast<size_t>(e) * a.d + o) * rb;
  for (int m0 = 0; m0 < cnt; m0 += kTile) {
    const int mc = min(kTile, cnt - m0);
    int64_t pr[kTile];
#pragma unroll
    for (int m = 0; m < kTile; ++m) pr[m] = m < mc ? order[begin + m0 + m] : 0;
    float acc[kTile];
#pragma unroll
    for (int m = 0; m < kTile; ++m) acc[m] = 0.0f;
    for (int64_t i = lane; i < a.ff; i += kWarp) {
      const float w = expert_value<T>(row, i, grid);
#pragma unroll
      for (int m = 0; m < kTile; ++m) {
        if (m < mc) acc[m] = __fadd_rn(acc[m], __fmul_rn(w, H[pr[m] * a.ff + i]));
      }
    }
#pragma unroll
    for (int m = 0; m < kTile; ++m) {
      const float v = warp_tree_sum(acc[m]);
      if (lane == 0 && m < mc) Ye[pr[m] * a.d + o] = v;
    }
  }
}

// Thread per (token, j): y = 0 + Ye of the token's slots in (expert id, slot) order.
__global__ void moe_tile_sum_kernel(MoeArgs a, const float* __restrict__ Ye) {
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= a.n_tok * a.d) return;
  const int64_t t = g / a.d, j = g % a.d;
  int slot[kMaxUsed];
  for (int s = 0; s < a.n_used; ++s) {  // insertion sort by (expert, slot): stable
    const int e = a.experts[t * a.n_used + s];
    int k = s;
    while (k > 0 && a.experts[t * a.n_used + slot[k - 1]] > e) {
      slot[k] = slot[k - 1];
      --k;
    }
    slot[k] = s;
  }
  float y = 0.0f;
  for (int k = 0; k < a.n_used; ++k) y = __fadd_rn(y, Ye[(t * a.n_used + slot[k]) * a.d + j]);
  a.y[g] = y;
}

// ---- host side ----
size_t align256(size_t n) { return (n + 255) / 256 * 256; }

struct Scratch {
  size_t xq = 0, mid = 0, midq = 0, offsets = 0, order = 0, ye = 0, total = 0;
};

// decode_lut: mid, xq, midq; expert_tiles: mid, offsets, order, ye; sorted_exact: all six.
Scratch scratch_layout(int64_t n_tok, int n_used, int n_expert, int64_t d, int64_t ff,
                       MoeVariant v) {
  const size_t pairs = static_cast<size_t>(n_tok) * n_used;
  Scratch s;
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align256(bytes);
    return here;
  };
  s.mid = take(pairs * ff * sizeof(float));
  if (v != MoeVariant::expert_tiles) {
    s.xq = take(static_cast<size_t>(n_tok) * (d / kQK) * sizeof(Q8KBlock));
    s.midq = take(pairs * (ff / kQK) * sizeof(Q8KBlock));
  }
  if (v != MoeVariant::decode_lut) {
    s.offsets = take((static_cast<size_t>(n_expert) + 1) * sizeof(int32_t));
    s.order = take(pairs * sizeof(int32_t));
    s.ye = take(pairs * d * sizeof(float));
  }
  s.total = at;
  return s;
}

const char* type_name(ExpertType t) {
  switch (t) {
    case ExpertType::iq2_xxs: return "iq2_xxs";
    case ExpertType::q2_k: return "q2_k";
    case ExpertType::q4_k: return "q4_k";
  }
  return nullptr;  // not an ExpertType value
}

// Calls f(std::integral_constant<ExpertType, t>{}): the kernel template for a runtime type.
template <class F>
void with_type(ExpertType t, F&& f) {
  switch (t) {
    case ExpertType::iq2_xxs: f(std::integral_constant<ExpertType, ExpertType::iq2_xxs>{}); return;
    case ExpertType::q2_k: f(std::integral_constant<ExpertType, ExpertType::q2_k>{}); return;
    case ExpertType::q4_k: f(std::integral_constant<ExpertType, ExpertType::q4_k>{}); return;
  }
}

}  // namespace

const char* variant_name(MoeVariant v) {
  switch (v) {
    case MoeVariant::decode_lut: return "moe__decode_lut";
    case MoeVariant::expert_tiles: return "moe__expert_tiles";
    case MoeVariant::sorted_exact: return "moe__sorted_exact";
  }
  return "moe__unknown";
}

void quantize_q8_k(const float* x, int64_t n_rows, int64_t n, void* y) {
  if (n_rows < 0 || n <= 0 || n % kQK != 0) {
    fail("quantize_q8_k__block256: n = " + std::to_string(n) +
         " must be a positive multiple of 256 (n_rows = " + std::to_string(n_rows) + ")");
  }
  const int64_t blocks = n_rows * (n / kQK);
  if (blocks == 0) return;
  if (blocks > 2147483647) fail("quantize_q8_k__block256: too many blocks");
  quantize_q8_k_kernel<<<static_cast<unsigned>(blocks), kQK>>>(x, static_cast<Q8KBlock*>(y));
  check(cudaGetLastError(), "quantize_q8_k__block256 launch");
}

size_t moe_scratch_bytes(int64_t n_tok, int n_used, int n_expert, int64_t d, int64_t ff,
                         MoeVariant v) {
  return scratch_layout(n_tok, n_used, n_expert, d, ff, v).total;
}

void moe(const MoeArgs& a, MoeVariant v) {
  const char* what = variant_name(v);
  if (v != MoeVariant::decode_lut && v != MoeVariant::expert_tiles && v != MoeVariant::sorted_exact)
    fail("moe: unknown MoeVariant " + std::to_string(static_cast<int>(v)));
  const int64_t pairs = a.n_tok * a.n_used;
  if (a.n_tok < 0 || a.n_used <= 0 || a.n_used > kMaxUsed || a.n_expert <= 0 || a.d <= 0 ||
      a.ff <= 0 || a.d % kQK != 0 || a.ff % kQK != 0 || pairs > 65535 || a.n_tok > 65535) {
    fail(std::string(what) + ": bad shape n_tok = " + std::to_string(a.n_tok) + ", n_used = " +
         std::to_string(a.n_used) + " (1..16, n_tok*n_used <= 65535), n_expert = " +
         std::to_string(a.n_expert) + ", d = " + std::to_string(a.d) + ", ff = " +
         std::to_string(a.ff) + " (multiples of 256)");
  }
  const char* gu_name = type_name(a.gate_up_type);
  const char* down_name = type_name(a.down_type);
  if (!gu_name || !down_name) {
    fail(std::string(what) + ": unknown expert type (gate_up_type = " +
         std::to_string(static_cast<int>(a.gate_up_type)) + ", down_type = " +
         std::to_string(static_cast<int>(a.down_type)) + "; iq2_xxs, q2_k or q4_k)");
  }
  const bool any_iq2 = a.gate_up_type == ExpertType::iq2_xxs || a.down_type == ExpertType::iq2_xxs;
  if ((any_iq2 && !a.iq2_grid) || !a.scratch) {
    fail(std::string(what) + ": scratch is required, and iq2_grid with iq2_xxs experts (gate/up " +
         gu_name + ", down " + down_name + ")");
  }
  // The K-quant dots load 32-bit words (blocks of 84 and 144 bytes keep 4-byte alignment).
  auto misaligned = [](const void* p, ExpertType t) {
    const uintptr_t u = reinterpret_cast<uintptr_t>(p);
    return t == ExpertType::iq2_xxs ? (u % 2 != 0) : (u % 4 != 0);
  };
  if (misaligned(a.gate, a.gate_up_type) || misaligned(a.up, a.gate_up_type) ||
      misaligned(a.down, a.down_type)) {
    fail(std::string(what) + ": expert tensors must be 2-byte (iq2_xxs) or 4-byte (q2_k, q4_k) "
         "aligned (gate/up " + gu_name + ", down " + down_name + ")");
  }
  if (a.n_tok == 0) return;
  const Scratch s = scratch_layout(a.n_tok, a.n_used, a.n_expert, a.d, a.ff, v);
  char* base = static_cast<char*>(a.scratch);
  float* mid = a.mid ? a.mid : reinterpret_cast<float*>(base + s.mid);
  auto* xq = reinterpret_cast<Q8KBlock*>(base + s.xq);
  auto* midq = reinterpret_cast<Q8KBlock*>(base + s.midq);
  auto* offsets = reinterpret_cast<int32_t*>(base + s.offsets);
  auto* order = reinterpret_cast<int32_t*>(base + s.order);
  auto* ye = reinterpret_cast<float*>(base + s.ye);
  const std::string w(what);
  const unsigned ff_blocks = static_cast<unsigned>(a.ff / kRowsPerBlock);
  const unsigned d_blocks = static_cast<unsigned>(a.d / kRowsPerBlock);
  const unsigned experts = static_cast<unsigned>(a.n_expert);
  if (v != MoeVariant::decode_lut) {
    moe_sort_kernel<<<1, kThreads>>>(a.experts, pairs, a.n_expert, offsets, order);
    check(cudaGetLastError(), (w + " sort launch").c_str());
  }
  if (v == MoeVariant::expert_tiles) {
    with_type(a.gate_up_type, [&](auto t) {
      moe_tile_gate_up_kernel<decltype(t)::value><<<dim3(ff_blocks, experts), kThreads>>>(
          a, offsets, order, mid);
    });
    check(cudaGetLastError(), (w + " gate/up launch").c_str());
    with_type(a.down_type, [&](auto t) {
      moe_tile_down_kernel<decltype(t)::value><<<dim3(d_blocks, experts), kThreads>>>(
          a, offsets, order, mid, ye);
    });
    check(cudaGetLastError(), (w + " down launch").c_str());
    const int64_t total = a.n_tok * a.d;
    moe_tile_sum_kernel<<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads>>>(a, ye);
    check(cudaGetLastError(), (w + " sum launch").c_str());
    return;
  }
  // decode_lut and sorted_exact: the same Q8_K activations and the same warp dots.
  const bool sorted = v == MoeVariant::sorted_exact;
  quantize_q8_k(a.x, a.n_tok, a.d, xq);
  with_type(a.gate_up_type, [&](auto t) {
    constexpr ExpertType T = decltype(t)::value;
    if (sorted) {
      moe_gate_up_kernel<T, kTile><<<dim3(ff_blocks, experts), kThreads>>>(a, offsets, order, xq, mid);
    } else {
      moe_gate_up_kernel<T, 1><<<dim3(ff_blocks, static_cast<unsigned>(pairs)), kThreads>>>(
          a, nullptr, nullptr, xq, mid);
    }
  });
  check(cudaGetLastError(), (w + " gate/up launch").c_str());
  quantize_q8_k(mid, pairs, a.ff, midq);
  with_type(a.down_type, [&](auto t) {
    constexpr ExpertType T = decltype(t)::value;
    if (sorted) {
      moe_sorted_down_kernel<T><<<dim3(d_blocks, experts), kThreads>>>(a, offsets, order, midq, ye);
    } else {
      moe_down_sum_kernel<T><<<dim3(d_blocks, static_cast<unsigned>(a.n_tok)), kThreads>>>(a, midq);
    }
  });
  check(cudaGetLastError(), (w + " down launch").c_str());
  if (sorted) {
    const int64_t total = a.n_tok * a.d;
    moe_slot_sum_kernel<<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads>>>(a, ye);
    check(cudaGetLastError(), (w + " sum launch").c_str());
  }
}

}  // namespace ds4::cuda
