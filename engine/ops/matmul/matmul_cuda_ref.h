// The reduction orders of the CUDA matmul kernels that are not the Q8_0 warp order, on the CPU,
// for bit-exact checks (the Q8_0 warp order is in matvec_warp_order.h).
//
// Variants stated here (engine/backend/cuda/matmul_ordered.cu, matmul_q8_0.cu):
//   matvec_f16__ordered / matvec_f16__ordered_batch  -> dot_f16_ordered_chunks_ref
//   matvec_f32__ordered / matvec_f32__ordered_batch  -> dot_f32_ordered_chunks_ref
//   matmul_q8__preq_tree                              -> q8_0_dot_preq_tree_ref
// Each must equal the CUDA kernel bit for bit for every output.
#pragma once
#include <cstdint>

namespace ds4 {

// The ordered-chunks dot (ds4's matmul_f16_ordered_chunks order, with explicit fma):
//   chunk = ceil(n / 32); for lane = 0..31: p[lane] = 0;
//     for i = lane*chunk .. min((lane+1)*chunk, n) - 1 in order: p[lane] = fma(w[i], x[i], p[lane])
//       (w[i] widened exactly to F32; fma rounds once, as __fmaf_rn)
//   total = 0; for lane = 0..31 in order: total = total + p[lane]   (F32 adds)
// Lanes whose chunk starts at or past n keep p = 0. n >= 0.
float dot_f16_ordered_chunks_ref(const uint16_t* w_row_f16, const float* x, int64_t n);
float dot_f32_ordered_chunks_ref(const float* w_row, const float* x, int64_t n);

// The preq tree dot (ds4's matmul_q8_0_preq_kernel order) of one Q8_0 weight row (n/32 GGUF
// blocks of 34 bytes) with a Q8_0 activation (act_d: n/32 F32 scales, act_q: n int8, as
// ds4::quantize_act_q8_0 makes):
//   for t = 0..255: v[t] = 0; for b = t, t+256, ... < n/32:
//       v[t] = v[t] + (wd[b] * act_d[b]) * (float)isum[b]   (each product rounded, no fma)
//   for stride = 128, 64, ..., 1: for t < stride: v[t] = v[t] + v[t + stride]
//   return v[0]
// n must be a multiple of 32 (throws ds4::Error otherwise).
float q8_0_dot_preq_tree_ref(const void* w_row, const float* act_d, const int8_t* act_q, int64_t n);

}  // namespace ds4
