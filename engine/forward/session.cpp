// The DS4 forward pass on the CPU reference backend (ds4-model.md §4, summary in §11).
//
// forward(tokens) is layer-major: every row goes through layer 0, then layer 1, ... Inside a
// layer the attention half runs row by row in position order (KV push, compressor and indexer
// updates, selection and attention of row r see exactly the state N=1 decode would see at that
// position), and the FFN half runs per row. Every per-row computation is the same function with
// the same inputs as in decode(), so the batched forward is bit-equal to N decodes by
// construction; tests/unit/forward_test.cpp checks it on logits, taps and the final state.
#include <cmath>
#include <cstring>
#include <thread>

#include "backend/cpu/thread_pool.h"
#include "ds4/engine.h"
#include "ds4/error.h"
#include "forward/state.h"
#include "forward/weights.h"
#include "ops/attention/attention.h"
#include "ops/compressor/compressor.h"
#include "ops/hc/hc.h"
#include "ops/indexer/indexer.h"
#include "ops/moe/moe.h"
#include "ops/norm/rmsnorm.h"
#include "ops/numerics/qat.h"
#include "ops/rope/rope.h"

namespace ds4 {

struct Session::Impl {
  const HParams& hp;
  const ModelWeights& w;
  Profile profile;
  TopkTies ties;
  int64_t torch_queue_len;
  int64_t max_ctx;
  ThreadPool pool;
  RopeParams rope_main, rope_comp;
  SessionState st;
  TapSink** taps;

  Impl(const Model& model, const SessionOptions& o, TapSink** taps_)
      : hp(model.hparams()),
        w(model.weights()),
        profile(o.profile),
        ties(o.topk_ties),
        torch_queue_len(o.torch_queue_len),
        max_ctx(o.max_ctx),
        pool(o.n_threads > 0 ? o.n_threads : std::max(1u, std::thread::hardware_concurrency())),
        taps(taps_) {
    rope_main = rope_params(hp.n_rot, hp.rope_base, 1.0f, hp.yarn_orig_ctx, hp.yarn_beta_fast,
                            hp.yarn_beta_slow, false);
    rope_comp = rope_params(hp.n_rot, hp.compress_rope_base, hp.yarn_factor, hp.yarn_orig_ctx,
                            hp.yarn_beta_fast, hp.yarn_beta_slow, true);
    reset();
  }

  void reset() {
    st = SessionState{};
    auto make = [&](uint32_t ratio) {
      LayerState L;
      L.raw.assign(static_cast<size_t>(hp.window) * hp.head_dim, 0.0f);
      if (ratio != 0) L.comp.init(static_cast<int>(ratio), static_cast<int>(hp.head_dim));
      if (ratio == 4) L.idx_comp.init(4, static_cast<int>(hp.idx_head_dim));
      return L;
    };
    for (uint32_t il = 0; il < hp.n_layer; ++il) st.layers.push_back(make(hp.ratios[il]));
    for (uint32_t m = 0; m < hp.n_mtp; ++m) st.mtp.push_back(make(0));
    st.last_hc.assign(static_cast<size_t>(hp.n_hc) * hp.n_embd, 0.0f);
  }

  void tap(int layer, const char* name, int64_t pos, const float* data, size_t n) {
    if (*taps) (*taps)->tap(layer, name, pos, data, n);
  }
  void tap(int layer, const char* name, int64_t pos, const std::vector<float>& v) {
    if (*taps) (*taps)->tap(layer, name, pos, v.data(), v.size());
  }

  const RopeParams& rope_for(uint32_t ratio) const { return ratio == 0 ? rope_main : rope_comp; }

  // ---- attention half (one row at position p) ----------------------------------------------
  void attention_half(int il, const LayerWeights& L, LayerState& S, float* X, int64_t p) {
    const int64_t d = hp.n_embd, hd = hp.head_dim;
    const int nh = static_cast<int>(hp.n_head), n_rot = static_cast<int>(hp.n_rot);
    const RopeParams& rp = rope_for(L.ratio);
    HcMix mix;
    std::vector<float> x(d), xn(d), mixes;
    hc_pre_ref(X, hp.n_hc, d, L.hc_attn_fn, L.hc_attn_scale.data(), L.hc_attn_base.data(),
               hp.sinkhorn_iters, hp.eps, hp.hc_eps, profile, &mix, x.data(), &mixes);
    tap(il, "hc_attn_mixes", p, mixes);
    tap(il, "hc_attn_pre", p, x);
    rmsnorm_ref(x.data(), L.attn_norm.data(), xn.data(), d, hp.eps);
    tap(il, "attn_norm", p, xn);

    // Q path: qr = RMSNorm(W_q_a xn); q_h = RoPE(RMSNorm0((W_q_b qr)_h)).
    std::vector<float> qr(hp.q_lora), q(static_cast<size_t>(nh) * hd);
    matvec_ref(L.q_a, xn.data(), qr.data(), profile, &pool);
    rmsnorm_ref(qr.data(), L.q_a_norm.data(), qr.data(), hp.q_lora, hp.eps);
    tap(il, "qr_norm", p, qr);
    matvec_ref(L.q_b, qr.data(), q.data(), profile, &pool);
    for (int h = 0; h < nh; ++h) {
      float* qh = q.data() + h * hd;
      rmsnorm0_ref(qh, qh, hd, hp.eps);
      rope_tail_ref(qh, static_cast<int>(hd), n_rot, p, rp, false);
    }
    tap(il, "q", p, q);

    // KV path: one shared row, stored into the raw window with the profile's storage numerics.
    std::vector<float> kv(hd);
    matvec_ref(L.kv, xn.data(), kv.data(), profile, &pool);
    rmsnorm_ref(kv.data(), L.kv_norm.data(), kv.data(), hd, hp.eps);
    rope_tail_ref(kv.data(), static_cast<int>(hd), n_rot, p, rp, false);
    if (profile == Profile::Ds4) {
      kv_fp8_roundtrip_ref(kv.data(), static_cast<int>(hp.nope()));
      round_f16_inplace(kv.data(), hd);
    }
    tap(il, "kv", p, kv);
    std::memcpy(&S.raw[static_cast<size_t>(p % hp.window) * hd], kv.data(), hd * sizeof(float));

    // Compressed streams (run before attention: a row closed by this token is visible to it).
    if (L.ratio != 0) compress_attention_row(il, L, S, xn.data(), p);
    std::vector<int32_t> selected;
    bool use_selection = false;
    if (L.ratio == 4) {
      compress_indexer_row(il, L, S, xn.data(), p);
      use_selection = select_rows(il, L, S, qr.data(), xn.data(), p, &selected);
    }

    // Candidate rows: raw window (oldest first), then visible compressed rows.
    std::vector<const float*> rows;
    const int64_t first = std::max<int64_t>(0, p - hp.window + 1);
    for (int64_t t = first; t <= p; ++t) rows.push_back(&S.raw[static_cast<size_t>(t % hp.window) * hd]);
    if (L.ratio != 0) {
      const int64_t n_comp = static_cast<int64_t>(S.comp_rows.size() / hd);
      if (use_selection) {
        for (int32_t c : selected) rows.push_back(&S.comp_rows[static_cast<size_t>(c) * hd]);
      } else {
        for (int64_t c = 0; c < n_comp; ++c) rows.push_back(&S.comp_rows[static_cast<size_t>(c) * hd]);
      }
    }
    std::vector<float> o(static_cast<size_t>(nh) * hd);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    pool.parallel_for(nh, [&](int64_t a, int64_t b) {
      for (int64_t h = a; h < b; ++h)
        attention_head_ref(q.data() + h * hd, rows.data(), static_cast<int>(rows.size()),
                           static_cast<int>(hd), scale, L.sinks[h], o.data() + h * hd);
    }, 1);
    tap(il, "kqv_out", p, o);
    for (int h = 0; h < nh; ++h) rope_tail_ref(o.data() + h * hd, static_cast<int>(hd), n_rot, p, rp, true);
    tap(il, "attn_derope", p, o);

    // Grouped output LoRA: u_g = A_g concat(o of group g's heads); y = B concat(u).
    const int64_t group_in = static_cast<int64_t>(hp.heads_per_group()) * hd;
    std::vector<float> u(static_cast<size_t>(hp.o_lora) * hp.o_groups), y(d);
    for (uint32_t g = 0; g < hp.o_groups; ++g) {
      matvec_ref(L.out_a.rows(static_cast<int64_t>(g) * hp.o_lora, hp.o_lora), o.data() + g * group_in,
                 u.data() + static_cast<size_t>(g) * hp.o_lora, profile, &pool);
    }
    tap(il, "attn_wo_a", p, u);
    matvec_ref(L.out_b, u.data(), y.data(), profile, &pool);
    tap(il, "attn_out", p, y);
    std::vector<float> Xn(static_cast<size_t>(hp.n_hc) * d);
    hc_post_ref(X, y.data(), mix, hp.n_hc, d, Xn.data());
    std::memcpy(X, Xn.data(), Xn.size() * sizeof(float));
    tap(il, "hc_attn_post", p, Xn);
  }

  // Projects xn into the compressor of the attention stream; on a window end, appends the row
  // (RMSNorm, RoPE at the window's first position, storage numerics).
  void compress_attention_row(int il, const LayerWeights& L, LayerState& S, const float* xn, int64_t p) {
    CompressorState& C = S.comp;
    std::vector<float> a(C.width), g(C.width), row(C.head_dim);
    matvec_ref(L.comp_kv, xn, a.data(), profile, &pool);
    matvec_ref(L.comp_gate, xn, g.data(), profile, &pool);
    const float* ape = L.comp_ape.data() + static_cast<size_t>(p % C.ratio) * C.width;
    for (int j = 0; j < C.width; ++j) g[j] += ape[j];
    if (!compressor_push_ref(C, a.data(), g.data(), p, row.data())) return;
    rmsnorm_ref(row.data(), L.comp_norm.data(), row.data(), C.head_dim, hp.eps);
    rope_tail_ref(row.data(), C.head_dim, static_cast<int>(hp.n_rot), p + 1 - C.ratio, rope_comp, false);
    if (profile == Profile::Ds4) {
      kv_fp8_roundtrip_ref(row.data(), static_cast<int>(hp.nope()));
      round_f16_inplace(row.data(), C.head_dim);
    }
    tap(il, L.ratio == 4 ? "csa_state_compress" : "hca_state_compress", p, row);
    S.comp_rows.insert(S.comp_rows.end(), row.begin(), row.end());
  }

  void compress_indexer_row(int il, const LayerWeights& L, LayerState& S, const float* xn, int64_t p) {
    CompressorState& C = S.idx_comp;
    std::vector<float> a(C.width), g(C.width), row(C.head_dim);
    matvec_ref(L.idx_comp_kv, xn, a.data(), profile, &pool);
    matvec_ref(L.idx_comp_gate, xn, g.data(), profile, &pool);
    const float* ape = L.idx_comp_ape.data() + static_cast<size_t>(p % C.ratio) * C.width;
    for (int j = 0; j < C.width; ++j) g[j] += ape[j];
    if (!compressor_push_ref(C, a.data(), g.data(), p, row.data())) return;
    rmsnorm_ref(row.data(), L.idx_comp_norm.data(), row.data(), C.head_dim, hp.eps);
    rope_tail_ref(row.data(), C.head_dim, static_cast<int>(hp.n_rot), p + 1 - C.ratio, rope_comp, false);
    if (profile == Profile::Ds4) {
      hadamard_ref(row.data(), C.head_dim);
      fp4_roundtrip_ref(row.data(), C.head_dim);
      round_f16_inplace(row.data(), C.head_dim);
    }
    tap(il, "lid_state_compress", p, row);
    S.idx_rows.insert(S.idx_rows.end(), row.begin(), row.end());
  }

  // Indexer selection for position p. Returns false when every visible row is allowed
  // (n_visible <= top_k), true with `selected` (ascending row ids) otherwise.
  bool select_rows(int il, const LayerWeights& L, LayerState& S, const float* qr, const float* xn,
                   int64_t p, std::vector<int32_t>* selected) {
    const int ihd = static_cast<int>(hp.idx_head_dim), nih = static_cast<int>(hp.n_idx_head);
    const int64_t n_vis = static_cast<int64_t>(S.idx_rows.size() / ihd);
    if (n_vis <= static_cast<int64_t>(hp.idx_top_k)) return false;
    std::vector<float> qi(static_cast<size_t>(nih) * ihd), wts(nih), scores(n_vis);
    matvec_ref(L.idx_q_b, qr, qi.data(), profile, &pool);
    for (int h = 0; h < nih; ++h) {
      float* qh = qi.data() + static_cast<size_t>(h) * ihd;
      rope_tail_ref(qh, ihd, static_cast<int>(hp.n_rot), p, rope_comp, false);
      if (profile == Profile::Ds4) {
        hadamard_ref(qh, ihd);
        fp4_roundtrip_ref(qh, ihd);
      }
    }
    tap(il, "lid_q", p, qi);
    matvec_ref(L.idx_proj, xn, wts.data(), profile, &pool);
    tap(il, "lid_weights", p, wts);
    indexer_scores_ref(qi.data(), nih, ihd, wts.data(), S.idx_rows.data(), n_vis, scores.data());
    tap(il, "lid_score", p, scores);
    *selected = ties == TopkTies::LowerIndex
                    ? topk_ascending_ref(scores.data(), n_vis, hp.idx_top_k)
                    : topk_torch_cpu_ref(scores.data(), n_vis, hp.idx_top_k, torch_queue_len);
    if (*taps) {
      std::vector<float> ids(selected->begin(), selected->end());
      tap(il, "lid_top_k", p, ids);
    }
    return true;
  }

  // ---- FFN half (one row) ---------------------------------------------------------------------
  void ffn_half(int il, const LayerWeights& L, float* X, int64_t p, int32_t token, float clamp_exp,
                float clamp_sh) {
    const int64_t d = hp.n_embd;
    HcMix mix;
    std::vector<float> x(d), n(d), mixes;
    hc_pre_ref(X, hp.n_hc, d, L.hc_ffn_fn, L.hc_ffn_scale.data(), L.hc_ffn_base.data(),
               hp.sinkhorn_iters, hp.eps, hp.hc_eps, profile, &mix, x.data(), &mixes);
    tap(il, "hc_ffn_mixes", p, mixes);
    tap(il, "hc_ffn_pre", p, x);
    rmsnorm_ref(x.data(), L.ffn_norm.data(), n.data(), d, hp.eps);
    tap(il, "ffn_norm", p, n);

    std::vector<float> logits(hp.n_expert), probs(hp.n_expert);
    matvec_ref(L.router, n.data(), logits.data(), profile, &pool);
    tap(il, "ffn_moe_logits", p, logits);
    router_probs_ref(logits.data(), static_cast<int>(hp.n_expert), probs.data());
    tap(il, "ffn_moe_probs", p, probs);
    const int32_t* hash_ids = nullptr;
    if (L.hash) {
      if (token < 0 || token >= static_cast<int32_t>(hp.n_vocab)) fail("token id out of range");
      hash_ids = &L.tid2eid[static_cast<size_t>(token) * hp.n_expert_used];
    }
    const Routing r = route_ref(probs.data(), L.router_bias.empty() ? nullptr : L.router_bias.data(),
                                static_cast<int>(hp.n_expert), static_cast<int>(hp.n_expert_used),
                                hash_ids, hp.expert_norm, hp.expert_scale);
    if (*taps) {
      std::vector<float> ids(r.experts.begin(), r.experts.end());
      tap(il, "ffn_moe_topk", p, ids);
      tap(il, "ffn_moe_weights_scaled", p, r.weights);
    }
    // Routed experts summed in slot order, then the shared expert.
    std::vector<float> y(d, 0.0f), ye(d), mid;
    for (size_t s = 0; s < r.experts.size(); ++s) {
      const int32_t e = r.experts[s];
      expert_ffn_ref(L.gate_exps.expert(e), L.up_exps.expert(e), L.down_exps.expert(e), n.data(),
                     r.weights[s], clamp_exp, profile, &pool, ye.data(), &mid);
      for (int64_t j = 0; j < d; ++j) y[j] += ye[j];
    }
    tap(il, "ffn_moe_out", p, y);
    if (L.gate_sh) {
      expert_ffn_ref(L.gate_sh, L.up_sh, L.down_sh, n.data(), 1.0f, clamp_sh, profile, &pool,
                     ye.data(), nullptr);
      tap(il, "ffn_shexp", p, ye);
      for (int64_t j = 0; j < d; ++j) y[j] += ye[j];
    }
    tap(il, "ffn_out", p, y);
    std::vector<float> Xn(static_cast<size_t>(hp.n_hc) * d);
    hc_post_ref(X, y.data(), mix, hp.n_hc, d, Xn.data());
    std::memcpy(X, Xn.data(), Xn.size() * sizeof(float));
    tap(il, "l_out", p, Xn);
  }

  // ---- output head ----------------------------------------------------------------------------
  void output_head(const float* X, const WeightRef& hc_fn, const Vec& hc_scale, const Vec& hc_base,
                   const Vec& norm, int64_t p, float* logits, int tap_layer) {
    const int64_t d = hp.n_embd;
    std::vector<float> e(d);
    hc_head_ref(X, hp.n_hc, d, hc_fn, hc_scale[0], hc_base.data(), hp.eps, hp.hc_eps, profile, e.data());
    tap(tap_layer, "result_hc", p, e);
    rmsnorm_ref(e.data(), norm.data(), e.data(), d, hp.eps);
    tap(tap_layer, "result_norm", p, e);
    matvec_ref(w.output, e.data(), logits, profile, &pool);
    tap(tap_layer, "result_output", p, logits, hp.n_vocab);
  }

  void embed(int32_t token, float* X) {
    if (token < 0 || token >= static_cast<int32_t>(hp.n_vocab))
      fail("token id " + std::to_string(token) + " out of range (vocab " + std::to_string(hp.n_vocab) + ")");
    const int64_t d = hp.n_embd;
    weight_row_f32(w.token_embd, token, X);
    for (uint32_t i = 1; i < hp.n_hc; ++i) std::memcpy(X + i * d, X, d * sizeof(float));
  }

  std::vector<float> forward(std::span<const int32_t> tokens) {
    const int64_t N = static_cast<int64_t>(tokens.size());
    if (N == 0) return {};
    if (st.pos + N > max_ctx)
      fail("context full: position " + std::to_string(st.pos + N) + " exceeds max_ctx " + std::to_string(max_ctx));
    for (int32_t t : tokens) {
      if (t < 0 || t >= static_cast<int32_t>(hp.n_vocab))
        fail("token id " + std::to_string(t) + " out of range (vocab " + std::to_string(hp.n_vocab) + ")");
    }
    const int64_t hcd = static_cast<int64_t>(hp.n_hc) * hp.n_embd;
    std::vector<float> X(static_cast<size_t>(N) * hcd);
    for (int64_t r = 0; r < N; ++r) embed(tokens[r], &X[r * hcd]);
    for (uint32_t il = 0; il < hp.n_layer; ++il) {
      const LayerWeights& L = w.layers[il];
      for (int64_t r = 0; r < N; ++r) attention_half(static_cast<int>(il), L, st.layers[il], &X[r * hcd], st.pos + r);
      for (int64_t r = 0; r < N; ++r)
        ffn_half(static_cast<int>(il), L, &X[r * hcd], st.pos + r, tokens[r], hp.clamp_exp[il], hp.clamp_shexp[il]);
    }
    std::vector<float> logits(static_cast<size_t>(N) * hp.n_vocab);
    for (int64_t r = 0; r < N; ++r)
      output_head(&X[r * hcd], w.output_hc_fn, w.output_hc_scale, w.output_hc_base, w.output_norm,
                  st.pos + r, &logits[r * hp.n_vocab], -1);
    std::memcpy(st.last_hc.data(), &X[(N - 1) * hcd], hcd * sizeof(float));
    st.pos += N;
    return logits;
  }

  std::vector<float> mtp_draft(int32_t next_token) {
    if (w.mtp.empty()) fail("model has no MTP block (nextn_predict_layers = 0)");
    if (st.pos == 0) fail("mtp_draft needs at least one consumed token");
    const LayerWeights& M = w.mtp[0];
    const int64_t d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
    std::vector<float> e(d), en(d), cat(2 * d), X(hcd);
    if (next_token < 0 || next_token >= static_cast<int32_t>(hp.n_vocab))
      fail("token id " + std::to_string(next_token) + " out of range (vocab " + std::to_string(hp.n_vocab) + ")");
    weight_row_f32(w.token_embd, next_token, e.data());
    rmsnorm_ref(e.data(), M.enorm.data(), en.data(), d, hp.eps);
    for (uint32_t i = 0; i < hp.n_hc; ++i) {
      std::memcpy(cat.data(), en.data(), d * sizeof(float));
      rmsnorm_ref(&st.last_hc[i * d], M.hnorm.data(), cat.data() + d, d, hp.eps);
      matvec_ref(M.eh_proj, cat.data(), &X[i * d], profile, &pool);
    }
    const int64_t p = st.pos;  // the position of next_token
    const int tap_layer = static_cast<int>(hp.n_layer);
    attention_half(tap_layer, M, st.mtp[0], X.data(), p);
    ffn_half(tap_layer, M, X.data(), p, next_token, hp.clamp_exp.back(), hp.clamp_shexp.back());
    std::vector<float> logits(hp.n_vocab);
    output_head(X.data(), M.mtp_hc_fn, M.mtp_hc_scale, M.mtp_hc_base, M.mtp_norm, p, logits.data(), tap_layer);
    st.mtp_pos = p + 1;
    return logits;
  }
};

// ---------------------------------------------------------------------------------------------

Session::Session(std::shared_ptr<const Model> model, SessionOptions options)
    : model_(std::move(model)), options_(options) {
  if (!model_) fail("Session: no model");
  if (options_.max_ctx <= 0) fail("Session: max_ctx must be positive");
  impl_ = std::make_unique<Impl>(*model_, options_, &taps_);
}

Session::~Session() = default;

std::vector<float> Session::decode(int32_t token) {
  const int32_t t[1] = {token};
  return impl_->forward(std::span<const int32_t>(t, 1));
}

std::vector<float> Session::forward(std::span<const int32_t> tokens) { return impl_->forward(tokens); }
int64_t Session::pos() const { return impl_->st.pos; }
std::shared_ptr<const SessionState> Session::snapshot() const { return std::make_shared<const SessionState>(impl_->st); }
void Session::restore(const SessionState& state) { impl_->st = state; }
void Session::reset() { impl_->reset(); }
std::vector<float> Session::mtp_draft(int32_t next_token) { return impl_->mtp_draft(next_token); }

static bool bytes_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

static bool layer_equal(const LayerState& a, const LayerState& b) {
  return bytes_equal(a.raw, b.raw) && bytes_equal(a.comp.kv, b.comp.kv) &&
         bytes_equal(a.comp.score, b.comp.score) && bytes_equal(a.comp_rows, b.comp_rows) &&
         bytes_equal(a.idx_comp.kv, b.idx_comp.kv) && bytes_equal(a.idx_comp.score, b.idx_comp.score) &&
         bytes_equal(a.idx_rows, b.idx_rows);
}

bool Session::states_equal(const SessionState& a, const SessionState& b) {
  if (a.pos != b.pos || a.mtp_pos != b.mtp_pos || a.layers.size() != b.layers.size() ||
      a.mtp.size() != b.mtp.size() || !bytes_equal(a.last_hc, b.last_hc))
    return false;
  for (size_t i = 0; i < a.layers.size(); ++i)
    if (!layer_equal(a.layers[i], b.layers[i])) return false;
  for (size_t i = 0; i < a.mtp.size(); ++i)
    if (!layer_equal(a.mtp[i], b.mtp[i])) return false;
  return true;
}

}  // namespace ds4
