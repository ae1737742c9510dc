// The MoE FFN sublayer of the graph for the N rows of a call (ds4-model.md §4.7) and the output
// head (§4.8). The router's logits are a backend matmul; its selection (router_probs_ref,
// route_ref) runs on the host for every backend, over the downloaded N x n_expert logits.
#include <algorithm>

#include "ds4/error.h"
#include "forward/forward_impl.h"
#include "ops/moe/moe.h"

namespace ds4 {

void Session::Impl::ffn_layer(int il, const LayerWeights& L, Rows& R, float clamp_exp, float clamp_sh) {
  const int64_t N = R.n, d = hp.n_embd;
  float* XN = ops->fbuf("XN", N * d);
  hc_pre(il, false, L.hc_ffn_fn, L.hc_ffn_scale, L.hc_ffn_base, L.ffn_norm, R, XN);

  // Router: logits on the backend, selection on the host.
  const int n_exp = static_cast<int>(hp.n_expert), n_used = static_cast<int>(hp.n_expert_used);
  float* dlog = ops->fbuf("router_logits", N * n_exp);
  const char* v_router = linear(L.router, XN, N, dlog);
  std::vector<float> logits(N * n_exp), probs(N * n_exp);
  ops->download(logits.data(), dlog, logits.size() * sizeof(float));
  for (int64_t r = 0; r < N; ++r) tap_host(il, Tap::ffn_moe_logits, R.pos0 + r, &logits[r * n_exp], n_exp, v_router);
  std::vector<int32_t> experts(N * n_used);
  std::vector<float> weights(N * n_used);
  for (int64_t r = 0; r < N; ++r) {
    router_probs_ref(&logits[r * n_exp], n_exp, &probs[r * n_exp]);
    tap_host(il, Tap::ffn_moe_probs, R.pos0 + r, &probs[r * n_exp], n_exp, "router__ref");
    const int32_t* hash_ids = L.hash ? &L.tid2eid[static_cast<size_t>(R.tokens[r]) * n_used] : nullptr;
    Routing rt = route_ref(&probs[r * n_exp], L.router_bias.empty() ? nullptr : L.router_bias.data(), n_exp, n_used,
                           hash_ids, hp.expert_norm, hp.expert_scale);
    if (tapping()) {
      std::vector<float> ids(rt.experts.begin(), rt.experts.end());
      tap_host(il, Tap::ffn_moe_topk, R.pos0 + r, ids.data(), ids.size(), "router__ref");
      tap_host(il, Tap::ffn_moe_weights_scaled, R.pos0 + r, rt.weights.data(), rt.weights.size(), "router__ref");
    }
    std::copy(rt.experts.begin(), rt.experts.end(), experts.begin() + r * n_used);
    std::copy(rt.weights.begin(), rt.weights.end(), weights.begin() + r * n_used);
  }

  // Routed experts.
  float* Y = ops->fbuf("Y", N * d);
  const MoeKind mk = fast(Gate::moe_tiles, N) ? MoeKind::tiles : MoeKind::exact;
  const char* v_moe = ops->routed_experts(L, XN, N, experts, weights, clamp_exp, mk, Y);
  tap(il, Tap::ffn_moe_out, R.pos0, N, Y, d, v_moe);

  // Shared expert: gate/up pair, SwiGLU, down.
  const char* v_add = ops->add_variant();
  if (L.gate_sh) {
    const int64_t ff = L.gate_sh.out;
    float* G = ops->fbuf("sh_g", N * ff);
    float* Uu = ops->fbuf("sh_u", N * ff);
    float* H = ops->fbuf("sh_h", N * ff);
    float* S = ops->fbuf("sh_s", N * d);
    const GateInfo& pair = gate_info(Gate::q8_pair);
    const bool pf = fast(Gate::q8_pair, N);
    const MatmulKind pk = pf ? MatmulKind::gemm : MatmulKind::exact;
    ops->matmul(L.gate_sh, XN, N, G, pk);
    ops->matmul(L.up_sh, XN, N, Uu, pk);
    ops->swiglu(G, Uu, H, N * ff, clamp_sh);
    tap(il, Tap::ffn_shexp_swiglu, R.pos0, N, H, ff, pf ? pair.fast_variant : pair.exact_variant);
    const char* v_down = linear(L.down_sh, H, N, S);
    tap(il, Tap::ffn_shexp, R.pos0, N, S, d, v_down);
    v_add = ops->add(Y, S, N * d);
  }
  tap(il, Tap::ffn_out, R.pos0, N, Y, d, v_add);
  hc_post(il, Tap::l_out, R, Y);
}

// The output head (§4.8) with the head weights of `h` (the trunk's, or the MTP block's) and the
// trunk's output matrix; taps under h.tap_layer.
void Session::Impl::output_head(const Rows& R, const Head& h, float* logits) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const WeightRef& fn = *h.hc_fn;
  float* Z = ops->fbuf("Z", N * hcd);
  ops->rmsnorm(R.X, nullptr, Z, N, hcd);
  float* M = ops->fbuf("M", N * fn.out);
  const char* v_mix = linear(fn, Z, N, M);
  float* E = ops->fbuf("E", N * d);
  ops->hc_head(R.X, M, h.hc_scale->at(0), *h.hc_base, E, N);
  tap(h.tap_layer, Tap::result_hc, R.pos0, N, E, d, v_mix);
  const char* v_norm = ops->rmsnorm(E, h.norm, E, N, d);
  tap(h.tap_layer, Tap::result_norm, R.pos0, N, E, d, v_norm);
  float* dl = ops->fbuf("logits", N * hp.n_vocab);
  const char* v_out = linear(w.output, E, N, dl, Gate::output_head_preq);
  ops->download(logits, dl, static_cast<size_t>(N) * hp.n_vocab * sizeof(float));
  if (tapping())
    for (int64_t r = 0; r < N; ++r)
      tap_host(h.tap_layer, Tap::result_output, R.pos0 + r, logits + r * hp.n_vocab, hp.n_vocab, v_out);
}

}  // namespace ds4
