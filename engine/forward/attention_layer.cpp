// The attention sublayer for the N rows of a call (ds4-model.md §4.4-§4.6).
//
// Row-independent work is batched across rows (HC mixer, Q/KV projections, compressor and
// indexer projections, output LoRA), each through ops/matmul/linear.h, which picks the exact
// per-row kernel or a gated fast variant. Everything that reads or writes the caches runs row by
// row in position order: KV store, compressor updates, indexer selection and attention of row r
// see exactly the state N=1 decode sees at that position.
#include <cmath>

#include "ds4/error.h"
#include "forward/forward_impl.h"
#include "ops/attention/attention.h"
#include "ops/compressor/compressor.h"
#include "ops/indexer/indexer.h"
#include "ops/matmul/linear.h"
#include "ops/norm/rmsnorm.h"
#include "ops/numerics/qat.h"

namespace ds4 {

const char* Session::Impl::hc_mixes(const WeightRef& fn, const Rows& R, std::vector<float>* M) {
  const int64_t hcd = static_cast<int64_t>(hp.n_hc) * hp.n_embd;
  std::vector<float> Z(R.n * hcd);
  for (int64_t r = 0; r < R.n; ++r) rmsnorm0_ref(&R.X[r * hcd], &Z[r * hcd], hcd, hp.eps);
  M->assign(R.n * fn.out, 0.0f);
  return linear(fn, Z.data(), R.n, M->data(), ctx(R.n));
}

std::vector<HcMix> Session::Impl::hc_pre(int il, const char* which, const WeightRef& fn, const Vec& scale,
                                         const Vec& base, const Vec& norm, const Rows& R, std::vector<float>* XN) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const bool attn = std::string(which) == "attn";
  std::vector<float> M;
  const char* v_mix = hc_mixes(fn, R, &M);
  tap_rows(il, attn ? Tap::hc_attn_mixes : Tap::hc_ffn_mixes, R, M, fn.out, v_mix);
  std::vector<HcMix> mix(N);
  XN->assign(N * d, 0.0f);
  std::vector<float> x(d);
  for (int64_t r = 0; r < N; ++r) {
    mix[r] = hc_split_ref(&M[r * fn.out], hp.n_hc, scale.data(), base.data(), hp.sinkhorn_iters, hp.hc_eps);
    hc_collapse_ref(&R.X[r * hcd], mix[r].pre.data(), hp.n_hc, d, x.data());
    tap(il, attn ? Tap::hc_attn_pre : Tap::hc_ffn_pre, R.pos0 + r, x.data(), d, "hc_split__ref");
    rmsnorm_ref(x.data(), norm.data(), &(*XN)[r * d], d, hp.eps);
  }
  tap_rows(il, attn ? Tap::attn_norm : Tap::ffn_norm, R, *XN, d, "rmsnorm__ref");
  return mix;
}

void Session::Impl::attention_layer(int il, const LayerWeights& L, LayerState& S, Rows& R) {
  const int64_t N = R.n, d = hp.n_embd, hd = hp.head_dim, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const int nh = static_cast<int>(hp.n_head), n_rot = static_cast<int>(hp.n_rot);
  const RopeParams& rp = rope_for(L.ratio);
  const ExecCtx c = ctx(N);

  // HC pre + attn_norm.
  std::vector<float> XN;
  const std::vector<HcMix> mix = hc_pre(il, "attn", L.hc_attn_fn, L.hc_attn_scale, L.hc_attn_base, L.attn_norm, R, &XN);

  // Q path: qr = RMSNorm(W_q_a xn); q_h = RoPE(RMSNorm0((W_q_b qr)_h)).
  std::vector<float> QR(N * hp.q_lora), Q(N * nh * hd), KV(N * hd);
  const char* v_qa = linear(L.q_a, XN.data(), N, QR.data(), c);
  for (int64_t r = 0; r < N; ++r) rmsnorm_ref(&QR[r * hp.q_lora], L.q_a_norm.data(), &QR[r * hp.q_lora], hp.q_lora, hp.eps);
  tap_rows(il, Tap::qr_norm, R, QR, hp.q_lora, v_qa);
  const char* v_qb = linear(L.q_b, QR.data(), N, Q.data(), c);
  for (int64_t r = 0; r < N; ++r) {
    for (int h = 0; h < nh; ++h) {
      float* qh = &Q[(r * nh + h) * hd];
      rmsnorm0_ref(qh, qh, hd, hp.eps);
      rope_tail_ref(qh, static_cast<int>(hd), n_rot, R.pos0 + r, rp, false);
    }
  }
  tap_rows(il, Tap::q, R, Q, nh * hd, v_qb);

  // KV path: one shared row per token, with the profile's storage numerics.
  const char* v_kv = linear(L.kv, XN.data(), N, KV.data(), c);
  for (int64_t r = 0; r < N; ++r) {
    float* kv = &KV[r * hd];
    rmsnorm_ref(kv, L.kv_norm.data(), kv, hd, hp.eps);
    rope_tail_ref(kv, static_cast<int>(hd), n_rot, R.pos0 + r, rp, false);
    if (opt.profile == Profile::Ds4) {
      kv_fp8_roundtrip_ref(kv, static_cast<int>(hp.nope()));
      round_f16_inplace(kv, hd);
    }
  }
  tap_rows(il, Tap::kv, R, KV, hd, v_kv);

  // Compressor and indexer projections (row-independent).
  std::vector<float> CA, CG, IA, IG, QI, WI;
  const char* v_qi = nullptr;
  const char* v_wi = nullptr;
  if (L.ratio != 0) {
    CA.resize(N * L.comp_kv.out);
    CG.resize(N * L.comp_gate.out);
    linear(L.comp_kv, XN.data(), N, CA.data(), c);
    linear(L.comp_gate, XN.data(), N, CG.data(), c);
  }
  if (L.ratio == 4) {
    IA.resize(N * L.idx_comp_kv.out);
    IG.resize(N * L.idx_comp_gate.out);
    QI.resize(N * L.idx_q_b.out);
    WI.resize(N * L.idx_proj.out);
    linear(L.idx_comp_kv, XN.data(), N, IA.data(), c);
    linear(L.idx_comp_gate, XN.data(), N, IG.data(), c);
    v_qi = linear(L.idx_q_b, QR.data(), N, QI.data(), c);
    v_wi = linear(L.idx_proj, XN.data(), N, WI.data(), c);
  }

  // Sequential part: caches, selection, attention, inverse RoPE.
  std::vector<float> O(N * nh * hd);
  const int64_t batch_final_rows = L.ratio == 4 ? (R.pos0 + N) / 4 : 0;
  for (int64_t r = 0; r < N; ++r) {
    const int64_t p = R.pos0 + r;
    std::memcpy(&S.raw[static_cast<size_t>(p % hp.window) * hd], &KV[r * hd], hd * sizeof(float));
    if (L.ratio != 0) compress_row(il, L, S, false, &CA[r * L.comp_kv.out], &CG[r * L.comp_gate.out], p);
    if (L.ratio == 4) compress_row(il, L, S, true, &IA[r * L.idx_comp_kv.out], &IG[r * L.idx_comp_gate.out], p);
    float* o = &O[r * nh * hd];
    const char* v_att = attend_row(il, L, S, c, &Q[r * nh * hd], L.ratio == 4 ? &QI[r * L.idx_q_b.out] : nullptr,
                                   L.ratio == 4 ? &WI[r * L.idx_proj.out] : nullptr, v_qi, v_wi, p, batch_final_rows, o);
    tap(il, Tap::kqv_out, p, o, nh * hd, v_att);
    for (int h = 0; h < nh; ++h) rope_tail_ref(o + h * hd, static_cast<int>(hd), n_rot, p, rp, true);
    tap(il, Tap::attn_derope, p, o, nh * hd, v_att);
  }

  // Grouped output LoRA: u_g = A_g concat(o of group g's heads); y = B concat(u).
  const int64_t group_in = static_cast<int64_t>(hp.heads_per_group()) * hd, o_lora = hp.o_lora;
  const int64_t u_width = o_lora * hp.o_groups;
  std::vector<float> U(N * u_width), Y(N * d), Og(N * group_in), Ug(N * o_lora);
  const char* v_outa = gate_info(Gate::attn_out_a_gemm).exact_variant;
  for (uint32_t g = 0; g < hp.o_groups; ++g) {
    for (int64_t r = 0; r < N; ++r)
      std::memcpy(&Og[r * group_in], &O[r * nh * hd + g * group_in], group_in * sizeof(float));
    const WeightRef A = L.out_a.rows(static_cast<int64_t>(g) * o_lora, o_lora);
    if (c.fast(Gate::attn_out_a_gemm)) {
      linear_gemm(A, Og.data(), N, Ug.data(), c);
      v_outa = gate_info(Gate::attn_out_a_gemm).fast_variant;
    } else {
      for (int64_t r = 0; r < N; ++r) matvec_ref(A, &Og[r * group_in], &Ug[r * o_lora], opt.profile, &pool);
    }
    for (int64_t r = 0; r < N; ++r)
      std::memcpy(&U[r * u_width + g * o_lora], &Ug[r * o_lora], o_lora * sizeof(float));
  }
  tap_rows(il, Tap::attn_wo_a, R, U, u_width, v_outa);
  const char* v_outb = linear(L.out_b, U.data(), N, Y.data(), c);
  tap_rows(il, Tap::attn_out, R, Y, d, v_outb);
  std::vector<float> Xn(hcd);
  for (int64_t r = 0; r < N; ++r) {
    hc_post_ref(&R.X[r * hcd], &Y[r * d], mix[r], hp.n_hc, d, Xn.data());
    std::memcpy(&R.X[r * hcd], Xn.data(), hcd * sizeof(float));
    tap(il, Tap::hc_attn_post, R.pos0 + r, Xn.data(), hcd, "hc_post__ref");
  }
}

// Stores a token's compressor projections; on a window end appends the pooled row after RMSNorm,
// RoPE at the window's first position and the stream's storage numerics.
void Session::Impl::compress_row(int il, const LayerWeights& L, LayerState& S, bool indexer, const float* a,
                                 const float* g_in, int64_t p) {
  CompressorState& C = indexer ? S.idx_comp : S.comp;
  const Vec& ape = indexer ? L.idx_comp_ape : L.comp_ape;
  std::vector<float> g(g_in, g_in + C.width), row(C.head_dim);
  const float* ape_u = ape.data() + static_cast<size_t>(p % C.ratio) * C.width;
  for (int j = 0; j < C.width; ++j) g[j] += ape_u[j];
  if (!compressor_push_ref(C, a, g.data(), p, row.data())) return;
  rmsnorm_ref(row.data(), (indexer ? L.idx_comp_norm : L.comp_norm).data(), row.data(), C.head_dim, hp.eps);
  rope_tail_ref(row.data(), C.head_dim, static_cast<int>(hp.n_rot), p + 1 - C.ratio, rope_comp, false);
  if (opt.profile == Profile::Ds4) {
    if (indexer) {
      hadamard_ref(row.data(), C.head_dim);
      fp4_roundtrip_ref(row.data(), C.head_dim);
    } else {
      kv_fp8_roundtrip_ref(row.data(), static_cast<int>(hp.nope()));
    }
    round_f16_inplace(row.data(), C.head_dim);
  }
  const Tap name = indexer ? Tap::lid_state_compress : (L.ratio == 4 ? Tap::csa_state_compress : Tap::hca_state_compress);
  tap(il, name, p, row.data(), row.size(), "compressor_pool__ref");
  (indexer ? S.idx_rows : S.comp_rows).insert((indexer ? S.idx_rows : S.comp_rows).end(), row.begin(), row.end());
}

// Selection and attention of one row. Returns the attention variant used.
const char* Session::Impl::attend_row(int il, const LayerWeights& L, LayerState& S, const ExecCtx& c,
                                      const float* q, const float* qi_in, float* wi, const char* v_qi,
                                      const char* v_wi, int64_t p, int64_t batch_final_rows, float* o) {
  const int64_t hd = hp.head_dim;
  const int nh = static_cast<int>(hp.n_head);
  std::vector<const float*> rows;
  const int64_t first = std::max<int64_t>(0, p - hp.window + 1);
  for (int64_t t = first; t <= p; ++t) rows.push_back(&S.raw[static_cast<size_t>(t % hp.window) * hd]);
  const int64_t n_comp = static_cast<int64_t>(S.comp_rows.size() / hd);

  bool indexed = false;
  if (L.ratio == 4) {
    // Decode decides dense vs indexed from this row's visible count; the batch-wide dispatch
    // (fast) from the count at the end of the batch.
    const bool batchwide = c.fast(Gate::dispatch_batchwide);
    const int64_t deciding = batchwide ? batch_final_rows : n_comp;
    indexed = deciding > static_cast<int64_t>(hp.idx_top_k);
    float flag = indexed ? 1.0f : 0.0f;  // 1 = indexed attention, 0 = dense
    tap(il, Tap::attn_dispatch, p, &flag, 1, gate_info(Gate::dispatch_batchwide).*(batchwide ? &GateInfo::fast_variant : &GateInfo::exact_variant));
  }
  if (indexed) {
    const int ihd = static_cast<int>(hp.idx_head_dim), nih = static_cast<int>(hp.n_idx_head);
    std::vector<float> qi(qi_in, qi_in + static_cast<size_t>(nih) * ihd), scores(n_comp);
    for (int h = 0; h < nih; ++h) {
      float* qh = qi.data() + static_cast<size_t>(h) * ihd;
      rope_tail_ref(qh, ihd, static_cast<int>(hp.n_rot), p, rope_comp, false);
      if (opt.profile == Profile::Ds4) {
        hadamard_ref(qh, ihd);
        fp4_roundtrip_ref(qh, ihd);
      }
    }
    // Provenance: the projection that produced them (idx_q_b, idx_proj), as for `q`.
    tap(il, Tap::lid_q, p, qi.data(), qi.size(), v_qi);
    tap(il, Tap::lid_weights, p, wi, nih, v_wi);
    const char* v_score = "indexer_scores__direct_one";
    if (c.fast(Gate::indexer_wmma)) {
      indexer_scores_wmma(qi.data(), nih, ihd, wi, S.idx_rows.data(), n_comp, scores.data());
      v_score = "indexer_scores__wmma_f16";
    } else if (c.fast(Gate::indexer_direct_one)) {
      indexer_scores_scalar(qi.data(), nih, ihd, wi, S.idx_rows.data(), n_comp, scores.data());
      v_score = "indexer_scores__scalar";
    } else {
      indexer_scores_ref(qi.data(), nih, ihd, wi, S.idx_rows.data(), n_comp, scores.data());
    }
    tap(il, Tap::lid_score, p, scores.data(), scores.size(), v_score);
    std::vector<int32_t> sel;
    if (opt.topk_ties == TopkTies::TorchCpu) {
      sel = topk_torch_cpu_ref(scores.data(), n_comp, hp.idx_top_k, opt.torch_queue_len);
    } else if (c.fast(Gate::topk_resort)) {
      sel = topk_ascending_ref(scores.data(), n_comp, hp.idx_top_k);
    } else {
      sel = topk_score_order_ref(scores.data(), n_comp, hp.idx_top_k);
    }
    if (*taps) {
      std::vector<float> ids(sel.begin(), sel.end());
      const char* v_topk = opt.topk_ties == TopkTies::TorchCpu ? "topk__torch_cpu_host"
                           : c.fast(Gate::topk_resort)         ? "topk__resort_ascending"
                                                               : "topk__score_order";
      tap(il, Tap::lid_top_k, p, ids.data(), ids.size(), v_topk);
    }
    for (int32_t s : sel) rows.push_back(&S.comp_rows[static_cast<size_t>(s) * hd]);
  } else {
    for (int64_t k = 0; k < n_comp; ++k) rows.push_back(&S.comp_rows[static_cast<size_t>(k) * hd]);
  }

  using AttnFn = void (*)(const float*, const float* const*, int, int, float, float, float*);
  AttnFn fn = attention_head_ref;
  const char* variant = indexed ? "attn_indexed__scalar" : (n_comp > 0 ? "attn_dense__serial_dot" : "attn_raw__serial_dot");
  if (indexed && c.fast(Gate::indexed_attn_online)) {
    fn = attention_head_online;
    variant = "attn_indexed__heads8_online";
  } else if (!indexed && n_comp > 0 && c.fast(Gate::dense_attn_ntokens)) {
    fn = attention_head_lane8;
    variant = "attn_dense__lane8_dot";
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  pool.parallel_for(nh, [&](int64_t a, int64_t b) {
    for (int64_t h = a; h < b; ++h)
      fn(q + h * hd, rows.data(), static_cast<int>(rows.size()), static_cast<int>(hd), scale, L.sinks[h], o + h * hd);
  }, 1);
  return variant;
}

}  // namespace ds4
