// Batched linear layers: Y[r][o] = sum_i W[o][i] X[r][i] for n_rows rows, one function per variant.
//
// Variants (names are the provenance strings; see engine/gates.def):
//   matvec__ref            exact: per row, matvec_ref (the N=1 arithmetic, ops/matmul/matvec.h).
//   matmul_q8__gemm_f16    q8_gemm fast (Q8_0): weights dequantised with d*q rounded to F16 (ds4's
//                          F16 expansion cache), activations rounded to F16, Eigen GEMM in F32 over
//                          fixed 256-output column blocks. No int8 activation quantisation: the
//                          dot's inputs differ, not just its order. Not bit-equal to exact.
//   matmul_f16__gemm_f16act f16_gemm fast (F16 weights): activations rounded to F16, Eigen GEMM.
//   matmul_f32__gemm       f32_gemm fast (F32/BF16 weights): Eigen GEMM (blocked order).
//   matmul_q8__preq_tree   output_head_preq fast (Q8_0): the ds4 profile's int8 activations, but
//                          per output a 256-lane strided block sum and a halving tree (ds4's
//                          matmul_q8_0_preq_kernel) instead of the warp8 order. Not bit-equal.
// Other weight types (IQ2_XXS, Q2_K, Q4_K) have no batched variant here: always per-row exact.
#pragma once
#include <cstdint>

#include "forward/exec.h"
#include "ops/matmul/matvec.h"

namespace ds4 {

// The variant of each kernel family (which one runs is the forward graph's choice from the gates,
// engine/forward/graph.cpp). Each returns its variant name.
// matvec__ref: per row, matvec_ref (bit-equal to N = 1 decode).
const char* linear_exact(const WeightRef& w, const float* X, int64_t n_rows, float* Y, const ExecCtx& ctx);
// matmul_q8__preq_tree (Q8_0 weights only).
const char* linear_preq_tree(const WeightRef& w, const float* X, int64_t n_rows, float* Y, const ExecCtx& ctx);

// The GEMM variant itself (used by gates whose fast path is "a GEMM" whatever the weight type,
// e.g. q8_pair and attn_out_a_gemm): F16-rounded weights and activations for Q8_0/F16 weights.
const char* linear_gemm(const WeightRef& w, const float* X, int64_t n_rows, float* Y, const ExecCtx& ctx);

// Exactly dequantised weights, F32 activations, Eigen GEMM (the MoE tile variant's matmul).
void gemm_f32_dequant(const WeightRef& w, const float* X, int64_t n_rows, float* Y, const ExecCtx& ctx);

}  // namespace ds4
