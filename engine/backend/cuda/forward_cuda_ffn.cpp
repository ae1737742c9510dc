// The MoE FFN sublayer (ds4-model.md §4.7) and the output head (§4.8) of the CUDA forward;
// mirrors engine/forward/ffn_layer.cpp. The router's logits are computed on the device and its
// top-k selection (route_ref, the CPU's) runs on the host over the downloaded N x n_expert
// logits; the routed experts run in ds4::cuda::moe for the k-quant mixes (gate/up IQ2_XXS, Q2_K
// or Q4_K, down IQ2_XXS, Q2_K or Q4_K: the ds4 mix IQ2_XXS + Q2_K, the q4_k mix Q4_K + Q4_K) and
// through the exact matmul kernels for any other mix (routed_experts_matvec below).
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
#include "ops/moe/moe.h"

namespace ds4::cudafwd {

void Impl::ffn_layer(int il, const LayerWeights& L, const DLayer& D, DRows& R, float clamp_exp, float clamp_sh) {
  const int64_t N = R.n, d = hp.n_embd;
  float* XN = buf("XN", N * d);
  hc_pre(il, "ffn", D.hc_ffn_fn, D.hc_ffn_scale, D.hc_ffn_base, D.ffn_norm, R, XN);

  // Router (device logits, host selection).
  const int n_exp = static_cast<int>(hp.n_expert), n_used = static_cast<int>(hp.n_expert_used);
  float* dlog = buf("router_logits", N * n_exp);
  const char* v_router = linear(D.router, XN, N, dlog);
  std::vector<float> logits(N * n_exp), probs(N * n_exp);
  cuda::copy_d2h(logits.data(), dlog, logits.size() * sizeof(float));
  for (int64_t r = 0; r < N; ++r)
    tap_host(il, "ffn_moe_logits", R.pos0 + r, &logits[r * n_exp], n_exp, v_router);
  std::vector<int32_t> experts(N * n_used);
  std::vector<float> weights(N * n_used);
  for (int64_t r = 0; r < N; ++r) {
    router_probs_ref(&logits[r * n_exp], n_exp, &probs[r * n_exp]);
    tap_host(il, "ffn_moe_probs", R.pos0 + r, &probs[r * n_exp], n_exp, "router__ref");
    const int32_t* hash_ids = L.hash ? &L.tid2eid[static_cast<size_t>(R.tokens[r]) * n_used] : nullptr;
    Routing rt = route_ref(&probs[r * n_exp], L.router_bias.empty() ? nullptr : L.router_bias.data(), n_exp, n_used,
                           hash_ids, hp.expert_norm, hp.expert_scale);
    if (tapping()) {
      std::vector<float> ids(rt.experts.begin(), rt.experts.end());
      tap_host(il, "ffn_moe_topk", R.pos0 + r, ids.data(), ids.size(), "router__ref");
      tap_host(il, "ffn_moe_weights_scaled", R.pos0 + r, rt.weights.data(), rt.weights.size(), "router__ref");
    }
    std::copy(rt.experts.begin(), rt.experts.end(), experts.begin() + r * n_used);
    std::copy(rt.weights.begin(), rt.weights.end(), weights.begin() + r * n_used);
  }
  int32_t* dexp = ibuf("moe_experts", N * n_used);
  float* dwts = buf("moe_weights", N * n_used);
  cuda::copy_h2d(dexp, experts.data(), experts.size() * sizeof(int32_t));
  cuda::copy_h2d(dwts, weights.data(), weights.size() * sizeof(float));

  // Routed experts.
  float* Y = buf("Y", N * d);
  if (D.kquant_experts) {
    kquant_routed_experts(il, D, XN, R, dexp, dwts, clamp_exp, Y);
  } else {
    routed_experts_matvec(D, XN, N, experts, weights, clamp_exp, Y);
    tap_dev(il, "ffn_moe_out", R.pos0, N, Y, d, "moe__matvec_exact");
  }

  // Shared expert: gate/up pair, SwiGLU, down.
  if (D.gate_sh) {
    const int64_t ff = D.gate_sh.out;
    float* G = buf("sh_g", N * ff);
    float* Uu = buf("sh_u", N * ff);
    float* H = buf("sh_h", N * ff);
    float* S = buf("sh_s", N * d);
    const GateInfo& pair = gate_info(Gate::q8_pair);
    const bool pf = fast(Gate::q8_pair, N);
    if (pf) {
      linear_gemm(D.gate_sh, XN, N, G);
      linear_gemm(D.up_sh, XN, N, Uu);
    } else {
      linear_exact(D.gate_sh, XN, N, G);
      linear_exact(D.up_sh, XN, N, Uu);
    }
    cuda::swiglu_clamped(G, Uu, H, N * ff, clamp_sh);
    tap_dev(il, "ffn_shexp_swiglu", R.pos0, N, H, ff, pf ? pair.fast_variant : pair.exact_variant);
    const char* v_down = linear(D.down_sh, H, N, S);
    tap_dev(il, "ffn_shexp", R.pos0, N, S, d, v_down);
    cuda::add_inplace(Y, S, N * d);
  }
  tap_dev(il, "ffn_out", R.pos0, N, Y, d, "add__rows");
  cuda::hc_post(R.X, Y, buf("hc_post", N * hp.n_hc), buf("hc_comb", N * hp.n_hc * hp.n_hc), R.X2, N,
                static_cast<int>(hp.n_hc), d);
  std::swap(R.X, R.X2);
  tap_dev(il, "l_out", R.pos0, N, R.X, static_cast<size_t>(hp.n_hc) * d, "hc_post__rows");
}

// The k-quant mixes (raw GGUF bytes, types in D.gate_up_type / D.down_type): ds4::cuda::moe,
// decode_lut or (gate moe_tiles) expert_tiles. dexp, dwts: (N, n_used) device routing.
void Impl::kquant_routed_experts(int il, const DLayer& D, const float* XN, const DRows& R, const int32_t* dexp,
                                 const float* dwts, float clamp_exp, float* Y) {
  const int64_t N = R.n, d = hp.n_embd;
  const int n_exp = static_cast<int>(hp.n_expert), n_used = static_cast<int>(hp.n_expert_used);
  // Exact stays decode_lut at every N. moe__sorted_exact (each expert's weights read once per
  // tile of its pairs, bit-equal to decode_lut; cuda_moe_test) was measured slower on an H100 at
  // the Flash MoE shape: 345 / 1612 / 7307 us against decode_lut's 123 / 798 / 6191 us at
  // N = 2 / 16 / 128 (reports/h100/issue12), so the strict path does not take it.
  const cuda::MoeVariant mv = fast(Gate::moe_tiles, N) ? cuda::MoeVariant::expert_tiles : cuda::MoeVariant::decode_lut;
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
  ma.scratch = raw("moe_scratch", cuda::moe_scratch_bytes(N, n_used, n_exp, d, hp.n_ff_exp, mv));
  cuda::moe(ma, mv);
  tap_dev(il, "ffn_moe_out", R.pos0, N, Y, d, cuda::variant_name(mv));
}

// moe__matvec_exact: routed experts of any other mix (F32/F16/Q8_0 slices, one CudaMatrix each),
// as expert_ffn_ref per (row r, slot s): g = W_gate x, u = W_up x, h = swiglu_clamped(g, u),
// h *= weight, y_rs = W_down h, then Y[r] = 0 + y_r0 + y_r1 + ... in slot order (ffn_layer.cpp's
// Y[r*d+j] += ye[j]). The (row, slot) pairs routed to one expert are gathered into one batch of
// that expert's matrices; linear_exact's batch kernels are per row bit-equal to the N = 1 decode
// kernel, and every other step is elementwise, so each row gets the bits of its own decode.
// experts, weights: (N, n_used) host; XN (N, d) and Y (N, d) device F32.
void Impl::routed_experts_matvec(const DLayer& D, const float* XN, int64_t N, const std::vector<int32_t>& experts,
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

// The output head (§4.8) with the head weights of `h` (the trunk's, or the MTP block's) and the
// trunk's output matrix; taps under h.tap_layer (Session::Impl::output_head's).
void Impl::output_head(const DRows& R, const DHead& h, float* logits) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const int n_hc = static_cast<int>(hp.n_hc);
  const DMat& fn = *h.hc_fn;
  float* Z = buf("Z", N * hcd);
  cuda::rmsnorm_rows(R.X, nullptr, Z, N, hcd, hp.eps);
  float* M = buf("M", N * fn.out);
  const char* v_mix = linear(fn, Z, N, M);
  float* hw = buf("head_w", N * n_hc);
  cuda::hc_head_weights(M, h.hc_scale, h.hc_base, hw, N, n_hc, hp.hc_eps);
  float* E = buf("E", N * d);
  cuda::hc_collapse(R.X, hw, E, N, n_hc, d);
  tap_dev(h.tap_layer, "result_hc", R.pos0, N, E, d, v_mix);
  cuda::rmsnorm_rows(E, h.norm, E, N, d, hp.eps);
  tap_dev(h.tap_layer, "result_norm", R.pos0, N, E, d, "rmsnorm__block256_f64");
  float* dl = buf("logits", N * hp.n_vocab);
  const char* v_out = linear(dw_->output, E, N, dl, Gate::output_head_preq);
  cuda::copy_d2h(logits, dl, static_cast<size_t>(N) * hp.n_vocab * sizeof(float));
  if (tapping())
    for (int64_t r = 0; r < N; ++r) tap_host(h.tap_layer, "result_output", R.pos0 + r, logits + r * hp.n_vocab, hp.n_vocab, v_out);
}

}  // namespace ds4::cudafwd
