// The attention sublayer of the CUDA forward (ds4-model.md §4.4-§4.6); mirrors
// engine/forward/attention_layer.cpp. Row-independent work is batched over the N rows; the cache
// part runs over chunks of rows: the chunk's KV rows are stored in the ring (window + chunk
// slots, so no row of the chunk overwrites a position another row of the chunk still sees), the
// compressors consume the chunk's rows in position order, then every row attends over its own
// candidate list (raw positions p-window+1..p, then the compressed rows it sees: all of them, or
// the indexer's top-k in top-k order) exactly as its decode would. The attention, indexer and
// top-k kernels are row-independent (one block per row), so per row bit-equal to N = 1.
// Storage numerics follow the profile (attention_layer.cpp's Profile::Ds4 branches): ds4 rounds
// KV rows through FP8 + F16 and indexer rows/queries through Hadamard + FP4 (+ F16); plain keeps
// every stored row in F32.
#include <algorithm>
#include <cmath>

#include "backend/cuda/forward_cuda_impl.h"
#include "ds4/error.h"
#include "ops/indexer/indexer.h"

namespace ds4::cudafwd {

void Impl::hc_pre(int il, const char* which, const DMat& fn, const DevMem& scale, const DevMem& base,
                  const DevMem& norm, const DRows& R, float* XN) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const int n_hc = static_cast<int>(hp.n_hc);
  const std::string wname = which;
  float* Z = buf("Z", N * hcd);
  cuda::rmsnorm_rows(R.X, nullptr, Z, N, hcd, hp.eps);
  float* M = buf("M", N * fn.out);
  const char* v_mix = linear(fn, Z, N, M);
  tap_dev(il, ("hc_" + wname + "_mixes").c_str(), R.pos0, N, M, fn.out, v_mix);
  float* pre = buf("hc_pre", N * n_hc);
  float* post = buf("hc_post", N * n_hc);
  float* comb = buf("hc_comb", N * n_hc * n_hc);
  cuda::hc_split(M, scale.f(), base.f(), pre, post, comb, N, n_hc, static_cast<int>(hp.sinkhorn_iters), hp.hc_eps);
  float* x = buf("hc_x", N * d);
  const cuda::HcNormVariant v = N == 1 ? cuda::HcNormVariant::fused : cuda::HcNormVariant::split;
  cuda::hc_collapse_norm(R.X, pre, norm.f(), x, XN, N, n_hc, d, hp.eps, v);
  tap_dev(il, ("hc_" + wname + "_pre").c_str(), R.pos0, N, x, d, "hc_split__sinkhorn_serial");
  if (opt_.fault.enabled && opt_.fault.layer == il && opt_.fault.tap == "hc_" + wname + "_pre") {
    // A fault on the collapsed x must reach the norm: recompute it from the (perturbed) x.
    cuda::rmsnorm_rows(x, norm.f(), XN, N, d, hp.eps);
  }
  tap_dev(il, wname == "attn" ? "attn_norm" : "ffn_norm", R.pos0, N, XN, d, cuda::variant_name(v));
}

void Impl::attention_layer(int il, const LayerWeights& L, const DLayer& D, DLayerState& S, DRows& R) {
  const int64_t N = R.n, d = hp.n_embd, hd = hp.head_dim;
  const int nh = static_cast<int>(hp.n_head), n_rot = static_cast<int>(hp.n_rot);
  const float* inv_freq = L.ratio == 0 ? dw_->inv_freq_main.f() : dw_->inv_freq_comp.f();

  float* XN = buf("XN", N * d);
  hc_pre(il, "attn", D.hc_attn_fn, D.hc_attn_scale, D.hc_attn_base, D.attn_norm, R, XN);

  // Q path.
  float* QR = buf("QR", N * hp.q_lora);
  const char* v_qa = linear(D.q_a, XN, N, QR);
  cuda::rmsnorm_rows(QR, D.q_a_norm.f(), QR, N, hp.q_lora, hp.eps);
  tap_dev(il, "qr_norm", R.pos0, N, QR, hp.q_lora, v_qa);
  float* Q = buf("Q", N * nh * hd);
  const char* v_qb = linear(D.q_b, QR, N, Q);
  cuda::rmsnorm_rows(Q, nullptr, Q, N * nh, hd, hp.eps);
  cuda::rope_tail(Q, N, nh, static_cast<int>(hd), n_rot, R.pos, inv_freq, false);
  tap_dev(il, "q", R.pos0, N, Q, nh * hd, v_qb);

  // KV path with the profile's storage numerics: ds4 rounds the nope part through FP8 and the
  // row to F16; plain keeps F32 (attention_layer.cpp's Profile::Ds4 branch).
  float* KV = buf("KV", N * hd);
  const char* v_kv = linear(D.kv, XN, N, KV);
  cuda::rmsnorm_rows(KV, D.kv_norm.f(), KV, N, hd, hp.eps);
  cuda::rope_tail(KV, N, 1, static_cast<int>(hd), n_rot, R.pos, inv_freq, false);
  if (!plain()) cuda::kv_fp8_roundtrip(KV, N, static_cast<int>(hd), static_cast<int>(hp.nope()), true);
  tap_dev(il, "kv", R.pos0, N, KV, hd, v_kv);

  // Compressor and indexer projections (row-independent), APE added to the scores.
  float *CA = nullptr, *CG = nullptr, *IA = nullptr, *IG = nullptr, *QI = nullptr, *WI = nullptr;
  if (L.ratio != 0) {
    CA = buf("CA", N * D.comp_kv.out);
    CG = buf("CG", N * D.comp_gate.out);
    linear(D.comp_kv, XN, N, CA);
    linear(D.comp_gate, XN, N, CG);
    cuda::ape_add(CG, D.comp_ape.f(), N, static_cast<int>(D.comp_gate.out), static_cast<int>(L.ratio), R.pos0);
  }
  if (L.ratio == 4) {
    IA = buf("IA", N * D.idx_comp_kv.out);
    IG = buf("IG", N * D.idx_comp_gate.out);
    QI = buf("QI", N * D.idx_q_b.out);
    WI = buf("WI", N * D.idx_proj.out);
    linear(D.idx_comp_kv, XN, N, IA);
    linear(D.idx_comp_gate, XN, N, IG);
    linear(D.idx_q_b, QR, N, QI);
    linear(D.idx_proj, XN, N, WI);
    cuda::ape_add(IG, D.idx_comp_ape.f(), N, static_cast<int>(D.idx_comp_gate.out), 4, R.pos0);
  }

  float* O = buf("O", N * nh * hd);
  for (int64_t r0 = 0; r0 < N; r0 += chunk_)
    attention_chunk(il, L, D, S, R, r0, std::min(N, r0 + chunk_), Q, QI, WI, KV, CA, CG, IA, IG, O);

  // Grouped output LoRA A (one CudaMatrix of o_groups groups), then B.
  const int64_t u_width = static_cast<int64_t>(hp.o_lora) * hp.o_groups;
  float* U = buf("U", N * u_width);
  const GateInfo& ga = gate_info(Gate::attn_out_a_gemm);
  const char* v_outa = ga.exact_variant;
  if (fast(Gate::attn_out_a_gemm, N)) {
    linear_gemm(D.out_a, O, N, U);
    v_outa = ga.fast_variant;
  } else {
    linear_exact(D.out_a, O, N, U);
  }
  tap_dev(il, "attn_wo_a", R.pos0, N, U, u_width, v_outa);
  float* Y = buf("Y", N * d);
  const char* v_outb = linear(D.out_b, U, N, Y);
  tap_dev(il, "attn_out", R.pos0, N, Y, d, v_outb);
  cuda::hc_post(R.X, Y, buf("hc_post", N * hp.n_hc), buf("hc_comb", N * hp.n_hc * hp.n_hc), R.X2, N,
                static_cast<int>(hp.n_hc), d);
  std::swap(R.X, R.X2);
  tap_dev(il, "hc_attn_post", R.pos0, N, R.X, static_cast<size_t>(hp.n_hc) * d, "hc_post__rows");
}

void Impl::attention_chunk(int il, const LayerWeights& L, const DLayer& D, DLayerState& S, const DRows& R,
                           int64_t r0, int64_t r1, const float* Q, const float* QIall, float* WI, const float* KV,
                           const float* CA, const float* CG, const float* IA, const float* IG, float* O) {
  const int64_t hd = hp.head_dim, ihd = hp.idx_head_dim, W = hp.window, nc = r1 - r0;
  const int nh = static_cast<int>(hp.n_head), nih = static_cast<int>(hp.n_idx_head), n_rot = static_cast<int>(hp.n_rot);
  const int64_t p0 = R.pos0 + r0;
  float* pool = S.pool.f();

  // 1. Raw KV rows into the ring (runs of consecutive slots).
  for (int64_t r = 0; r < nc;) {
    const int64_t slot = (p0 + r) % S.ring;
    const int64_t run = std::min(nc - r, S.ring - slot);
    cuda::copy_d2d(pool + slot * hd, KV + (r0 + r) * hd, run * hd * sizeof(float));
    r += run;
  }

  // 2. Compressors, in position order; emitted rows are appended and then finished in one batch.
  auto compress = [&](bool indexer) {
    cuda::CompressorDeviceState& C = indexer ? S.idx_comp : S.comp;
    const DMat& ka = indexer ? D.idx_comp_kv : D.comp_kv;
    const float* A = indexer ? IA : CA;
    const float* G = indexer ? IG : CG;
    const int64_t rw = indexer ? ihd : hd;
    float* rows = indexer ? S.idx_rows.f() : pool + S.ring * hd;
    int64_t& n_rows = indexer ? S.n_idx : S.n_comp;
    const int64_t cap = indexer ? S.idx_cap : S.comp_cap;
    const int64_t first = n_rows;
    std::vector<int64_t> rope_pos, emit_pos;
    float* dummy = buf(indexer ? "pooled_idx" : "pooled", rw);
    for (int64_t r = 0; r < nc; ++r) {
      const int64_t p = p0 + r;
      const bool emit = (p + 1) % C.ratio == 0;
      if (emit && n_rows >= cap) fail("CUDA forward: compressed rows exceed max_ctx capacity");
      cuda::compressor_update(C, A + (r0 + r) * ka.out, G + (r0 + r) * ka.out, p, emit ? rows + n_rows * rw : dummy);
      if (emit) {
        rope_pos.push_back(p + 1 - C.ratio);
        emit_pos.push_back(p);
        ++n_rows;
      }
    }
    const int64_t k = n_rows - first;
    if (k == 0) return;
    float* out = rows + first * rw;
    int64_t* dp = lbuf(indexer ? "cpos_idx" : "cpos", k);
    cuda::copy_h2d(dp, rope_pos.data(), k * sizeof(int64_t));
    cuda::rmsnorm_rows(out, (indexer ? D.idx_comp_norm : D.comp_norm).f(), out, k, rw, hp.eps);
    cuda::rope_tail(out, k, 1, static_cast<int>(rw), n_rot, dp, dw_->inv_freq_comp.f(), false);
    // Storage numerics of the pooled row (compress_row's Profile::Ds4 branch; plain keeps F32).
    if (!plain() && indexer) cuda::indexer_qat(out, k, static_cast<int>(rw), true);
    if (!plain() && !indexer) cuda::kv_fp8_roundtrip(out, k, static_cast<int>(rw), static_cast<int>(hp.nope()), true);
    if (tapping()) {
      const char* name = indexer ? "lid_state_compress" : (L.ratio == 4 ? "csa_state_compress" : "hca_state_compress");
      for (int64_t j = 0; j < k; ++j) tap_dev(il, name, emit_pos[j], 1, out + j * rw, rw, "compressor_pool__update");
    }
  };
  if (L.ratio != 0) compress(false);
  if (L.ratio == 4) compress(true);

  // 3. Per-row decision: raw only, dense over all compressed rows, or indexed (ratio 4).
  const bool batchwide = fast(Gate::dispatch_batchwide, R.n);
  const int64_t batch_final = L.ratio == 4 ? (R.pos0 + R.n) / 4 : 0;
  const int top_k = static_cast<int>(hp.idx_top_k);
  std::vector<int32_t> n_comp(nc), n_raw(nc), n_cand(nc);
  std::vector<char> indexed(nc, 0);
  std::vector<cuda::AttnVariant> var(nc);
  std::vector<const char*> vname(nc);
  int64_t max_cand = 1, i0 = -1, i1 = -1;
  for (int64_t r = 0; r < nc; ++r) {
    const int64_t p = p0 + r;
    n_comp[r] = L.ratio ? static_cast<int32_t>((p + 1) / L.ratio) : 0;
    n_raw[r] = static_cast<int32_t>(p - std::max<int64_t>(0, p - W + 1) + 1);
    if (L.ratio == 4) {
      indexed[r] = (batchwide ? batch_final : n_comp[r]) > top_k;
      float flag = indexed[r] ? 1.0f : 0.0f;
      const GateInfo& gd = gate_info(Gate::dispatch_batchwide);
      tap_host(il, "attn_dispatch", p, &flag, 1, batchwide ? gd.fast_variant : gd.exact_variant);
    }
    const int32_t used = indexed[r] ? std::min(top_k, n_comp[r]) : n_comp[r];
    n_cand[r] = n_raw[r] + used;
    max_cand = std::max<int64_t>(max_cand, n_cand[r]);
    if (indexed[r]) {
      if (i0 < 0) i0 = r;
      if (i1 >= 0 && i1 != r) fail("CUDA forward: indexed rows of a chunk are not contiguous");
      i1 = r + 1;
      const bool online = fast(Gate::indexed_attn_online, R.n);
      var[r] = online ? cuda::AttnVariant::indexed_heads8_online : cuda::AttnVariant::indexed_scalar;
      vname[r] = online ? "attn_indexed__heads8_online" : "attn_indexed__scalar";
    } else if (n_comp[r] > 0) {
      const bool lane8 = fast(Gate::dense_attn_ntokens, R.n);
      var[r] = lane8 ? cuda::AttnVariant::dense_lane8_dot : cuda::AttnVariant::dense_serial_dot;
      vname[r] = lane8 ? "attn_dense__lane8_dot" : "attn_dense__serial_dot";
    } else {
      var[r] = cuda::AttnVariant::dense_serial_dot;
      vname[r] = "attn_raw__serial_dot";
    }
  }

  // 4. Candidate lists (host index arithmetic; the indexed part is filled from the top-k below).
  std::vector<int32_t> cand(static_cast<size_t>(nc) * max_cand, 0);
  for (int64_t r = 0; r < nc; ++r) {
    const int64_t p = p0 + r;
    int32_t* c = &cand[r * max_cand];
    int k = 0;
    for (int64_t t = p - n_raw[r] + 1; t <= p; ++t) c[k++] = static_cast<int32_t>(t % S.ring);
    if (!indexed[r])
      for (int32_t j = 0; j < n_comp[r]; ++j) c[k++] = static_cast<int32_t>(S.ring + j);
  }
  int32_t* dcand = ibuf("cand", cand.size());
  int32_t* dncand = ibuf("ncand", nc);
  cuda::copy_h2d(dcand, cand.data(), cand.size() * sizeof(int32_t));
  cuda::copy_h2d(dncand, n_cand.data(), nc * sizeof(int32_t));
  int32_t* dnraw = ibuf("nraw", nc);
  cuda::copy_h2d(dnraw, n_raw.data(), nc * sizeof(int32_t));

  // 5. Indexer: scores over the rows each token sees, top-k, candidates.
  if (i0 >= 0) {
    const int64_t ni = i1 - i0, ra = r0 + i0;
    float* qi = buf("lid_q", ni * nih * ihd);
    cuda::copy_d2d(qi, QIall + ra * nih * ihd, ni * nih * ihd * sizeof(float));
    cuda::rope_tail(qi, ni, nih, static_cast<int>(ihd), n_rot, R.pos + ra, dw_->inv_freq_comp.f(), false);
    if (!plain()) cuda::indexer_qat(qi, ni * nih, static_cast<int>(ihd), false);  // plain: no Hadamard/FP4
    float* wi = WI + ra * nih;
    if (tapping()) {
      for (int64_t j = 0; j < ni; ++j) {
        tap_dev(il, "lid_q", p0 + i0 + j, 1, qi + j * nih * ihd, nih * ihd, "ref");
        tap_dev(il, "lid_weights", p0 + i0 + j, 1, wi + j * nih, nih, "ref");
      }
    }
    std::vector<int32_t> nvis(n_comp.begin() + i0, n_comp.begin() + i1);
    int32_t* dnvis = ibuf("nvis", ni);
    cuda::copy_h2d(dnvis, nvis.data(), ni * sizeof(int32_t));
    const int64_t n_rows = std::max<int64_t>(1, S.n_idx);
    float* scores = buf("scores", ni * n_rows);
    cuda::IndexerArgs ia;
    ia.q = qi;
    ia.w = wi;
    ia.K = S.idx_rows.f();
    ia.n_visible = dnvis;
    ia.scores = scores;
    ia.n_tok = ni;
    ia.n_rows = S.n_idx;
    ia.n_head = nih;
    ia.head_dim = static_cast<int>(ihd);
    const cuda::IndexerVariant iv = fast(Gate::indexer_wmma, R.n)         ? cuda::IndexerVariant::wmma_f16
                                    : fast(Gate::indexer_direct_one, R.n) ? cuda::IndexerVariant::scalar
                                                                          : cuda::IndexerVariant::direct_one;
    cuda::indexer_scores(ia, iv);
    if (tapping())
      for (int64_t j = 0; j < ni; ++j)
        tap_dev(il, "lid_score", p0 + i0 + j, 1, scores + j * n_rows, nvis[j], cuda::variant_name(iv));
    const cuda::TopkVariant tv = fast(Gate::topk_resort, R.n) ? cuda::TopkVariant::resort_ascending
                                                              : cuda::TopkVariant::score_order;
    int32_t* idx = ibuf("topk_idx", ni * top_k);
    int32_t* cnt = ibuf("topk_cnt", ni);
    const char* v_topk = cuda::variant_name(tv);
    if (opt_.topk_ties == TopkTies::TorchCpu) {
      topk_torch_host(scores, S.n_idx, nvis, top_k, idx, cnt);
      v_topk = "topk__torch_cpu_host";
    } else {
      cuda::topk(scores, dnvis, ni, S.n_idx, top_k, idx, cnt, tv);
    }
    if (*taps_ || opt_.fault.enabled) {
      std::vector<int32_t> hidx(ni * top_k);
      cuda::copy_d2h(hidx.data(), idx, hidx.size() * sizeof(int32_t));
      for (int64_t j = 0; j < ni; ++j) {
        const int c = std::min(top_k, nvis[j]);
        std::vector<float> ids(hidx.begin() + j * top_k, hidx.begin() + j * top_k + c);
        tap_host(il, "lid_top_k", p0 + i0 + j, ids.data(), ids.size(), v_topk);
      }
    }
    cuda::cand_indexed(dcand + i0 * max_cand, static_cast<int>(max_cand), dnraw + i0, idx, top_k, cnt, ni,
                       static_cast<int32_t>(S.ring));
  }

  // 6. Attention, one launch per run of rows with the same variant.
  float* Oc = O + r0 * nh * hd;
  for (int64_t a = 0; a < nc;) {
    int64_t b = a + 1;
    while (b < nc && var[b] == var[a]) ++b;
    cuda::AttnArgs aa;
    aa.q = Q + (r0 + a) * nh * hd;
    aa.kv = pool;
    aa.cand = dcand + a * max_cand;
    aa.n_cand = dncand + a;
    aa.sinks = D.sinks.f();
    aa.out = Oc + a * nh * hd;
    aa.n_tok = b - a;
    aa.n_head = nh;
    aa.head_dim = static_cast<int>(hd);
    aa.max_cand = static_cast<int>(max_cand);
    aa.scale = 1.0f / std::sqrt(static_cast<float>(hd));
    cuda::attention(aa, var[a]);
    a = b;
  }
  tap_dev(il, "kqv_out", p0, nc, Oc, nh * hd, nullptr, &vname);
  const float* inv_freq = L.ratio == 0 ? dw_->inv_freq_main.f() : dw_->inv_freq_comp.f();
  cuda::rope_tail(Oc, nc, nh, static_cast<int>(hd), n_rot, R.pos + r0, inv_freq, true);
  tap_dev(il, "attn_derope", p0, nc, Oc, nh * hd, nullptr, &vname);
}

// Oracle mode only (TopkTies::TorchCpu, the HF comparison): torch's CPU top-k tie order is
// reproduced by the CPU's topk_torch_cpu_ref on the downloaded scores, per row over its visible
// rows with the session's queue length, exactly as attend_row calls it; the selection is the
// CPU's by construction and, being per row, the same in a batch as in N = 1 decodes. The default
// tie rule keeps the device top-k (cuda::topk).
//   scores (n_tok, n_rows) device F32; nvis (n_tok) host; idx (n_tok, top_k) and cnt (n_tok)
//   device int32 out, as cuda::topk writes them (ascending index order, -1 past the count).
void Impl::topk_torch_host(const float* scores, int64_t n_rows, const std::vector<int32_t>& nvis, int top_k,
                           int32_t* idx, int32_t* cnt) {
  const int64_t n_tok = static_cast<int64_t>(nvis.size());
  std::vector<float> hs(static_cast<size_t>(n_tok) * n_rows);
  cuda::copy_d2h(hs.data(), scores, hs.size() * sizeof(float));
  std::vector<int32_t> hidx(static_cast<size_t>(n_tok) * top_k, -1), hcnt(n_tok);
  for (int64_t j = 0; j < n_tok; ++j) {
    const std::vector<int32_t> sel = topk_torch_cpu_ref(&hs[j * n_rows], nvis[j], top_k, opt_.torch_queue_len);
    hcnt[j] = static_cast<int32_t>(sel.size());
    std::copy(sel.begin(), sel.end(), hidx.begin() + j * top_k);
  }
  cuda::copy_h2d(idx, hidx.data(), hidx.size() * sizeof(int32_t));
  cuda::copy_h2d(cnt, hcnt.data(), hcnt.size() * sizeof(int32_t));
}

}  // namespace ds4::cudafwd
