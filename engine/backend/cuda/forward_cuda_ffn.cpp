// The CUDA backend's routed experts (ds4-model.md §4.7), the launches of the graph's FFN sublayer
// (engine/forward/ffn_layer.cpp) that are not a weight matmul or an elementwise op: ds4::cuda::moe
// for the k-quant mixes (gate/up IQ2_XXS, Q2_K or Q4_K, down IQ2_XXS, Q2_K or Q4_K: the ds4 mix
// IQ2_XXS + Q2_K, the q4_k mix Q4_K + Q4_K) and the exact matmul kernels for any other mix
// (routed_experts_matvec below).
//
// Variants of the routed experts here (style.md rule 3):
//   moe__decode_lut                      ds4::cuda::moe (ops_cuda.h), the k-quant mixes only,
//                                        at every N (sorted_exact is bit-equal but slower)
//   moe__expert_tiles                    the moe_tiles gate's fast kernel, k-quant mixes
//   moe__matvec_exact                    F32/F16/Q8_0 experts, one CudaMatrix per expert slice:
//                                        expert_ffn_ref per (row, slot) with the exact matmul
//                                        kernels, slots summed in slot order; per row bit-equal
//                                        to N = 1 (the moe_tiles gate does not apply)
#include <algorithm>

#include "backend/cuda/forward_cuda_impl.h"
#include "ds4/error.h"

namespace ds4::cudafwd {

const char* CudaOps::routed_experts(const LayerWeights& L, const float* XN, int64_t N,
                                    const std::vector<int32_t>& experts, const std::vector<float>& weights, float clamp,
                                    const char* variant, float* Y) {
  const auto it = dw_->blocks.find(&L);
  if (it == dw_->blocks.end()) fail("CUDA forward: a block of the graph has no device weights");
  const DLayer& D = *it->second;
  int32_t* dexp = ibuf("moe_experts", experts.size());
  float* dwts = buf("moe_weights", weights.size());
  cuda::copy_h2d(dexp, experts.data(), experts.size() * sizeof(int32_t));
  cuda::copy_h2d(dwts, weights.data(), weights.size() * sizeof(float));
  if (D.kquant_experts) {
    const cuda::MoeVariant mv = cuda_variant<cuda::MoeVariant>(variant);
    kquant_routed_experts(D, XN, N, dexp, dwts, clamp, mv, Y);
    return cuda::variant_name(mv);
  }
  routed_experts_matvec(D, XN, N, experts, weights, clamp, Y);
  return "moe__matvec_exact";
}

// The k-quant mixes (raw GGUF bytes, types in D.gate_up_type / D.down_type): ds4::cuda::moe,
// decode_lut or (gate moe_tiles) expert_tiles. dexp, dwts: (N, n_used) device routing.
void CudaOps::kquant_routed_experts(const DLayer& D, const float* XN, int64_t N, const int32_t* dexp,
                                    const float* dwts, float clamp_exp, cuda::MoeVariant mv, float* Y) {
  const int64_t d = hp.n_embd;
  const int n_exp = static_cast<int>(hp.n_expert), n_used = static_cast<int>(hp.n_expert_used);
  // Exact stays decode_lut at every N. moe__sorted_exact (each expert's weights read once per
  // tile of its pairs, bit-equal to decode_lut; cuda_moe_test) was measured slower on an H100 at
  // the Flash MoE shape: 345 / 1612 / 7307 us against decode_lut's 123 / 798 / 6191 us at
  // N = 2 / 16 / 128 (reports/h100/issue12), so the strict path does not take it.
  cuda::MoeArgs ma;
  ma.gate = D.gate_exps.get();
  ma.up = D.up_exps.get();
  ma.down = D.down_exps.get();
  ma.gate_up_type = D.gate_up_type;
  ma.down_type = D.down_type;
  ma.x = XN;
  ma.experts = dexp;
  ma.weights = dwts;
  ma.iq2_grid = dw_->iq2_grid.as<uint64_t>();
  ma.y = Y;
  ma.n_tok = N;
  ma.n_expert = n_exp;
  ma.n_used = n_used;
  ma.d = d;
  ma.ff = hp.n_ff_exp;
  ma.limit = clamp_exp;
  ma.scratch = scratch("moe_scratch", cuda::moe_scratch_bytes(N, n_used, n_exp, d, hp.n_ff_exp, mv));
  cuda::moe(ma, mv);
}

// moe__matvec_exact: routed experts of any other mix (F32/F16/Q8_0 slices, one CudaMatrix each),
// as expert_ffn_ref per (row r, slot s): g = W_gate x, u = W_up x, h = swiglu_clamped(g, u),
// h *= weight, y_rs = W_down h, then Y[r] = 0 + y_r0 + y_r1 + ... in slot order (cpu_ops.cpp's
// Y[r*d+j] += ye[j]). The (row, slot) pairs routed to one expert are gathered into one batch of
// that expert's matrices; linear_exact's batch kernels are per row bit-equal to the N = 1 decode
// kernel, and every other step is elementwise, so each row gets the bits of its own decode.
// experts, weights: (N, n_used) host; XN (N, d) and Y (N, d) device F32.
void CudaOps::routed_experts_matvec(const DLayer& D, const float* XN, int64_t N, const std::vector<int32_t>& experts,
                                 const std::vector<float>& weights, float clamp, float* Y) {
  const int64_t d = hp.n_embd, n_used = hp.n_expert_used, n_exp = static_cast<int64_t>(D.gate_e.size());
  const int64_t ff = D.gate_e.at(0).out, M = N * n_used;
  // Pairs grouped by expert (ascending), rows and slots ascending inside a group.
  std::vector<int32_t> src, dst;
  std::vector<float> wts;
  std::vector<int64_t> start(n_exp + 1, 0);
  for (int64_t e = 0; e < n_exp; ++e) {
    start[e] = static_cast<int64_t>(src.size());
    for (int64_t r = 0; r < N; ++r)
      for (int64_t s = 0; s < n_used; ++s)
        if (experts[r * n_used + s] == e) {
          src.push_back(static_cast<int32_t>(r));
          dst.push_back(static_cast<int32_t>(s * N + r));
          wts.push_back(weights[r * n_used + s]);
        }
  }
  start[n_exp] = static_cast<int64_t>(src.size());
  if (start[n_exp] != M) fail("CUDA forward: routed expert id out of range");
  int32_t* dsrc = ibuf("moe_src", M);
  int32_t* ddst = ibuf("moe_dst", M);
  float* dw = buf("moe_w", M);
  cuda::copy_h2d(dsrc, src.data(), M * sizeof(int32_t));
  cuda::copy_h2d(ddst, dst.data(), M * sizeof(int32_t));
  cuda::copy_h2d(dw, wts.data(), M * sizeof(float));
  float* XE = buf("moe_xe", M * d);           // (M, d) gathered input rows
  float* G = buf("moe_g", M * ff);            // (M, ff)
  float* U = buf("moe_u", M * ff);            // (M, ff)
  float* H = buf("moe_h", M * ff);            // (M, ff)
  float* YE = buf("moe_ye", M * d);           // (M, d) per pair
  float* YS = buf("moe_ys", n_used * N * d);  // (n_used, N, d) per slot
  cuda::copy_rows(XE, nullptr, XN, dsrc, M, d);
  for (int64_t e = 0; e < n_exp; ++e) {
    const int64_t a = start[e], m = start[e + 1] - a;
    if (m == 0) continue;
    linear_exact(D.gate_e[e], XE + a * d, m, G + a * ff);
    linear_exact(D.up_e[e], XE + a * d, m, U + a * ff);
  }
  cuda::swiglu_clamped(G, U, H, M * ff, clamp);
  cuda::scale_rows(H, dw, M, ff);
  for (int64_t e = 0; e < n_exp; ++e) {
    const int64_t a = start[e], m = start[e + 1] - a;
    if (m > 0) linear_exact(D.down_e[e], H + a * ff, m, YE + a * d);
  }
  cuda::copy_rows(YS, ddst, YE, nullptr, M, d);
  cuda::memset_async(Y, 0, static_cast<size_t>(N) * d * sizeof(float));
  for (int64_t s = 0; s < n_used; ++s) cuda::add_inplace(Y, YS + s * N * d, N * d);
}

}  // namespace ds4::cudafwd
