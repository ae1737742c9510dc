// The MoE FFN sublayer (ds4-model.md §4.7) and the output head (§4.8) of the CUDA forward;
// mirrors engine/forward/ffn_layer.cpp. The router's logits are computed on the device and its
// top-k selection (route_ref, the CPU's) runs on the host over the downloaded N x n_expert
// logits; the routed experts run in ds4::cuda::moe (IQ2_XXS gate/up, Q2_K down).
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
  const cuda::MoeVariant mv = fast(Gate::moe_tiles, N) ? cuda::MoeVariant::expert_tiles : cuda::MoeVariant::decode_lut;
  float* Y = buf("Y", N * d);
  cuda::MoeArgs ma;
  ma.gate = D.gate_exps.get();
  ma.up = D.up_exps.get();
  ma.down = D.down_exps.get();
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

void Impl::output_head(const DRows& R, float* logits) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const int n_hc = static_cast<int>(hp.n_hc);
  const DMat& fn = dw_->output_hc_fn;
  float* Z = buf("Z", N * hcd);
  cuda::rmsnorm_rows(R.X, nullptr, Z, N, hcd, hp.eps);
  float* M = buf("M", N * fn.out);
  const char* v_mix = linear(fn, Z, N, M);
  float* hw = buf("head_w", N * n_hc);
  cuda::hc_head_weights(M, w.output_hc_scale[0], dw_->output_hc_base.f(), hw, N, n_hc, hp.hc_eps);
  float* E = buf("E", N * d);
  cuda::hc_collapse(R.X, hw, E, N, n_hc, d);
  tap_dev(-1, "result_hc", R.pos0, N, E, d, v_mix);
  cuda::rmsnorm_rows(E, dw_->output_norm.f(), E, N, d, hp.eps);
  tap_dev(-1, "result_norm", R.pos0, N, E, d, "rmsnorm__block256_f64");
  float* dl = buf("logits", N * hp.n_vocab);
  const char* v_out = linear(dw_->output, E, N, dl, Gate::output_head_preq);
  cuda::copy_d2h(logits, dl, static_cast<size_t>(N) * hp.n_vocab * sizeof(float));
  if (tapping())
    for (int64_t r = 0; r < N; ++r) tap_host(-1, "result_output", R.pos0 + r, logits + r * hp.n_vocab, hp.n_vocab, v_out);
}

}  // namespace ds4::cudafwd
