// The reduction order of the CUDA warp-per-row Q8_0 kernels, on the CPU, for bit-exact checks.
//
// Variant: matvec_q8_0__warp_order_ref. The CUDA kernels matvec_q8_0__decode_warp8 and
// matvec_q8_0__batch_warp8 (engine/backend/cuda/matvec_q8_0.cu) must equal it bit for bit.
// It differs from matvec__ref / ds4::dot_q8_0_q8_0act (one F32 accumulator over blocks
// 0..nb-1 in order) only in the order of the F32 additions; the products are the same.
#pragma once
#include <cstdint>

namespace ds4 {

// Dot of one Q8_0 weight row (n/32 blocks of 34 bytes: f16 d, int8 q[32]) with a Q8_0
// activation (act_d: n/32 F32 scales, act_q: n int8 quants, as ds4::quantize_act_q8_0 makes).
// Order, all F32, no fused multiply-add:
//   for lane = 0..31: v[lane] = 0;
//     for b = lane, lane+32, lane+64, ... < n/32:
//       isum = Σ_{i<32} qw[b][i] * qx[b][i]             (int32, exact)
//       v[lane] = v[lane] + (wd[b] * act_d[b]) * (float)isum
//                 (wd = f16 -> f32 of the block scale; each product rounded to F32)
//   for offset = 16, 8, 4, 2, 1: for lane < offset: v[lane] = v[lane] + v[lane + offset]
//   return v[0]
// (the second loop is what __shfl_down_sync with those offsets leaves in lane 0).
// n must be a multiple of 32 (throws ds4::Error otherwise).
float q8_0_dot_warp_order_ref(const void* w_row, const float* act_d, const int8_t* act_q,
                              int64_t n);

// y[r*out + o] = q8_0_dot_warp_order_ref(W row o, quantize_act_q8_0(x row r)) for all r, o.
//   w: (out, in) Q8_0;  x: (n_rows, in) F32;  y: (n_rows, out) F32.
// The CPU twin of ds4::cuda_matvec_q8_0 (ds4/cuda_backend.h), single-threaded.
void matvec_q8_0_warp_order_ref(const void* w, int64_t in, int64_t out, const float* x,
                                int64_t n_rows, float* y);

}  // namespace ds4
