// The MoE FFN sublayer for the N rows of a call (ds4-model.md §4.7) and the output head (§4.8).
#include <cmath>

#include "ds4/error.h"
#include "forward/forward_impl.h"
#include "ops/matmul/linear.h"
#include "ops/moe/moe.h"
#include "ops/norm/rmsnorm.h"

namespace ds4 {

void Session::Impl::ffn_layer(int il, const LayerWeights& L, Rows& R, float clamp_exp, float clamp_sh) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const ExecCtx c = ctx(N);
  std::vector<float> XN;
  const std::vector<HcMix> mix = hc_pre(il, "ffn", L.hc_ffn_fn, L.hc_ffn_scale, L.hc_ffn_base, L.ffn_norm, R, &XN);

  // Router.
  const int n_exp = static_cast<int>(hp.n_expert), n_used = static_cast<int>(hp.n_expert_used);
  std::vector<float> logits(N * n_exp), probs(N * n_exp);
  const char* v_router = linear(L.router, XN.data(), N, logits.data(), c);
  tap_rows(il, Tap::ffn_moe_logits, R, logits, n_exp, v_router);
  std::vector<Routing> routing(N);
  for (int64_t r = 0; r < N; ++r) {
    router_probs_ref(&logits[r * n_exp], n_exp, &probs[r * n_exp]);
    tap(il, Tap::ffn_moe_probs, R.pos0 + r, &probs[r * n_exp], n_exp, "router__ref");
    const int32_t* hash_ids = L.hash ? &L.tid2eid[static_cast<size_t>(R.tokens[r]) * n_used] : nullptr;
    routing[r] = route_ref(&probs[r * n_exp], L.router_bias.empty() ? nullptr : L.router_bias.data(), n_exp, n_used,
                           hash_ids, hp.expert_norm, hp.expert_scale);
    if (*taps) {
      std::vector<float> ids(routing[r].experts.begin(), routing[r].experts.end());
      tap(il, Tap::ffn_moe_topk, R.pos0 + r, ids.data(), ids.size(), "router__ref");
      tap(il, Tap::ffn_moe_weights_scaled, R.pos0 + r, routing[r].weights.data(), routing[r].weights.size(), "router__ref");
    }
  }

  // Routed experts.
  std::vector<float> Y(N * d, 0.0f), ye(d);
  const char* v_moe = "moe__decode_lut";
  if (c.fast(Gate::moe_tiles)) {
    moe_expert_tiles(L.gate_exps, L.up_exps, L.down_exps, XN.data(), N, d, routing, clamp_exp, c, Y.data());
    v_moe = "moe__expert_tiles";
  } else {
    for (int64_t r = 0; r < N; ++r) {
      for (size_t s = 0; s < routing[r].experts.size(); ++s) {
        const int32_t e = routing[r].experts[s];
        expert_ffn_ref(L.gate_exps.expert(e), L.up_exps.expert(e), L.down_exps.expert(e), &XN[r * d],
                       routing[r].weights[s], clamp_exp, opt.profile, &pool, ye.data(), nullptr);
        for (int64_t j = 0; j < d; ++j) Y[r * d + j] += ye[j];
      }
    }
  }
  tap_rows(il, Tap::ffn_moe_out, R, Y, d, v_moe);

  // Shared expert: gate/up pair, SwiGLU, down.
  if (L.gate_sh) {
    const int64_t ff = L.gate_sh.out;
    std::vector<float> G(N * ff), Uu(N * ff), H(N * ff), S(N * d);
    if (c.fast(Gate::q8_pair)) {
      linear_gemm(L.gate_sh, XN.data(), N, G.data(), c);
      linear_gemm(L.up_sh, XN.data(), N, Uu.data(), c);
    } else {
      for (int64_t r = 0; r < N; ++r) {
        matvec_ref(L.gate_sh, &XN[r * d], &G[r * ff], opt.profile, &pool);
        matvec_ref(L.up_sh, &XN[r * d], &Uu[r * ff], opt.profile, &pool);
      }
    }
    swiglu_clamped_ref(G.data(), Uu.data(), H.data(), N * ff, clamp_sh);
    const GateInfo& pair = gate_info(Gate::q8_pair);
    tap_rows(il, Tap::ffn_shexp_swiglu, R, H, ff, c.fast(Gate::q8_pair) ? pair.fast_variant : pair.exact_variant);
    const char* v_down = linear(L.down_sh, H.data(), N, S.data(), c);
    tap_rows(il, Tap::ffn_shexp, R, S, d, v_down);
    for (int64_t i = 0; i < N * d; ++i) Y[i] += S[i];
  }
  tap_rows(il, Tap::ffn_out, R, Y, d, "add__ref");
  std::vector<float> Xn(hcd);
  for (int64_t r = 0; r < N; ++r) {
    hc_post_ref(&R.X[r * hcd], &Y[r * d], mix[r], hp.n_hc, d, Xn.data());
    std::memcpy(&R.X[r * hcd], Xn.data(), hcd * sizeof(float));
    tap(il, Tap::l_out, R.pos0 + r, Xn.data(), hcd, "hc_post__ref");
  }
}

void Session::Impl::output_head(const Rows& R, const WeightRef& hc_fn, const Vec& hc_scale, const Vec& hc_base,
                                const Vec& norm, int tap_layer, float* logits) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  std::vector<float> M, E(N * d);
  const char* v_mix = hc_mixes(hc_fn, R, &M);
  for (int64_t r = 0; r < N; ++r) {
    const std::vector<float> wts = hc_head_weights_ref(&M[r * hc_fn.out], hp.n_hc, hc_scale[0], hc_base.data(), hp.hc_eps);
    hc_collapse_ref(&R.X[r * hcd], wts.data(), hp.n_hc, d, &E[r * d]);
  }
  tap_rows(tap_layer, Tap::result_hc, R, E, d, v_mix);
  for (int64_t r = 0; r < N; ++r) rmsnorm_ref(&E[r * d], norm.data(), &E[r * d], d, hp.eps);
  tap_rows(tap_layer, Tap::result_norm, R, E, d, "rmsnorm__ref");
  const char* v_out = linear(w.output, E.data(), N, logits, ctx(N), Gate::output_head_preq);
  if (*taps)
    for (int64_t r = 0; r < N; ++r) tap(tap_layer, Tap::result_output, R.pos0 + r, logits + r * hp.n_vocab, hp.n_vocab, v_out);
}

}  // namespace ds4
