// The attention sublayer of the graph for the N rows of a call (ds4-model.md §4.4-§4.6).
//
// Row-independent work is batched across rows (HC mixer, Q/KV projections, compressor and
// indexer projections, output LoRA), each through Impl::linear, which picks the exact per-row
// kernel or a gated fast variant. The cache part runs over chunks of rows (one row on the CPU,
// whose ring holds `window` rows; 256 on CUDA, whose ring holds window + chunk so that no row of
// a chunk overwrites a position another row of it still sees): the chunk's KV rows are stored,
// the compressors consume its rows in position order, then every row attends over its own
// candidate list (raw positions p-window+1..p, then the compressed rows it sees: all of them, or
// the indexer's top-k in top-k order) exactly as its decode would.
// Storage numerics follow the profile: ds4 rounds KV rows through FP8 + F16 and indexer
// rows/queries through Hadamard + FP4 (+ F16 for rows); plain keeps every stored row in F32.
#include <algorithm>
#include <cmath>

#include "ds4/error.h"
#include "forward/forward_impl.h"
#include "ops/indexer/indexer.h"

namespace ds4 {

void Session::Impl::hc_pre(int il, bool attn, const WeightRef& fn, const Vec& scale, const Vec& base,
                           const Vec& norm, const Rows& R, float* XN) {
  const int64_t N = R.n, d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const int n_hc = static_cast<int>(hp.n_hc);
  float* Z = ops->fbuf("Z", N * hcd);
  ops->rmsnorm(R.X, nullptr, Z, N, hcd);
  float* M = ops->fbuf("M", N * fn.out);
  const char* v_mix = linear(fn, Z, N, M);
  tap(il, attn ? Tap::hc_attn_mixes : Tap::hc_ffn_mixes, R.pos0, N, M, fn.out, v_mix);
  float* pre = ops->fbuf("hc_pre", N * n_hc);
  float* post = ops->fbuf("hc_post", N * n_hc);
  float* comb = ops->fbuf("hc_comb", N * n_hc * n_hc);
  const char* v_split = ops->hc_split(M, scale, base, pre, post, comb, N);
  float* x = ops->fbuf("hc_x", N * d);
  const char* v_norm = ops->hc_collapse_norm(R.X, pre, norm, x, XN, N);
  const Tap t_pre = attn ? Tap::hc_attn_pre : Tap::hc_ffn_pre;
  tap(il, t_pre, R.pos0, N, x, d, v_split);
  // A fault on the collapsed x must reach the norm: recompute it from the (perturbed) x.
  if (fault_on(il, t_pre)) ops->rmsnorm(x, &norm, XN, N, d);
  tap(il, attn ? Tap::attn_norm : Tap::ffn_norm, R.pos0, N, XN, d, v_norm);
}

void Session::Impl::hc_post(int il, Tap t, Rows& R, const float* Y) {
  const int64_t N = R.n, n_hc = hp.n_hc;
  const char* v = ops->hc_post(R.X, Y, ops->fbuf("hc_post", N * n_hc), ops->fbuf("hc_comb", N * n_hc * n_hc), R.X2, N);
  std::swap(R.X, R.X2);
  tap(il, t, R.pos0, N, R.X, static_cast<size_t>(n_hc) * hp.n_embd, v);
}

void Session::Impl::attention_layer(int il, int block, const LayerWeights& L, Rows& R) {
  const int64_t N = R.n, d = hp.n_embd, hd = hp.head_dim;
  const int nh = static_cast<int>(hp.n_head);
  const RopeKind rk = L.ratio == 0 ? RopeKind::main : RopeKind::compressed;

  float* XN = ops->fbuf("XN", N * d);
  hc_pre(il, true, L.hc_attn_fn, L.hc_attn_scale, L.hc_attn_base, L.attn_norm, R, XN);

  // Q path: qr = RMSNorm(W_q_a xn); q_h = RoPE(RMSNorm0((W_q_b qr)_h)).
  float* QR = ops->fbuf("QR", N * hp.q_lora);
  const char* v_qa = linear(L.q_a, XN, N, QR);
  ops->rmsnorm(QR, &L.q_a_norm, QR, N, hp.q_lora);
  tap(il, Tap::qr_norm, R.pos0, N, QR, hp.q_lora, v_qa);
  float* Q = ops->fbuf("Q", N * nh * hd);
  const char* v_qb = linear(L.q_b, QR, N, Q);
  ops->rmsnorm(Q, nullptr, Q, N * nh, hd);
  ops->rope(Q, N, nh, static_cast<int>(hd), R.pos.data(), rk, false);
  tap(il, Tap::q, R.pos0, N, Q, nh * hd, v_qb);

  // KV path: one shared row per token, in the profile's storage numerics.
  float* KV = ops->fbuf("KV", N * hd);
  const char* v_kv = linear(L.kv, XN, N, KV);
  ops->rmsnorm(KV, &L.kv_norm, KV, N, hd);
  ops->rope(KV, N, 1, static_cast<int>(hd), R.pos.data(), rk, false);
  if (opt.profile == Profile::Ds4) ops->kv_fp8_f16(KV, N, static_cast<int>(hd));
  tap(il, Tap::kv, R.pos0, N, KV, hd, v_kv);

  // Compressor and indexer projections (row-independent), APE added to the scores.
  float *CA = nullptr, *CG = nullptr, *IA = nullptr, *IG = nullptr, *QI = nullptr, *WI = nullptr;
  const char* v_qi = nullptr;
  const char* v_wi = nullptr;
  if (L.ratio != 0) {
    CA = ops->fbuf("CA", N * L.comp_kv.out);
    CG = ops->fbuf("CG", N * L.comp_gate.out);
    linear(L.comp_kv, XN, N, CA);
    linear(L.comp_gate, XN, N, CG);
    ops->ape_add(CG, L.comp_ape, N, static_cast<int>(L.comp_gate.out), static_cast<int>(L.ratio), R.pos0);
  }
  if (L.ratio == 4) {
    IA = ops->fbuf("IA", N * L.idx_comp_kv.out);
    IG = ops->fbuf("IG", N * L.idx_comp_gate.out);
    QI = ops->fbuf("QI", N * L.idx_q_b.out);
    WI = ops->fbuf("WI", N * L.idx_proj.out);
    linear(L.idx_comp_kv, XN, N, IA);
    linear(L.idx_comp_gate, XN, N, IG);
    v_qi = linear(L.idx_q_b, QR, N, QI);
    v_wi = linear(L.idx_proj, XN, N, WI);
    ops->ape_add(IG, L.idx_comp_ape, N, static_cast<int>(L.idx_comp_gate.out), 4, R.pos0);
  }

  float* O = ops->fbuf("O", N * nh * hd);
  const int64_t chunk = ops->chunk_rows();
  for (int64_t r0 = 0; r0 < N; r0 += chunk)
    attention_chunk(il, block, L, R, r0, std::min(N, r0 + chunk), Q, QI, WI, KV, CA, CG, IA, IG, O, v_qi, v_wi);

  // Grouped output LoRA: u_g = A_g concat(o of group g's heads); y = B concat(u).
  const int64_t u_width = static_cast<int64_t>(hp.o_lora) * hp.o_groups;
  float* U = ops->fbuf("U", N * u_width);
  const GateInfo& ga = gate_info(Gate::attn_out_a_gemm);
  const bool gemm = fast(Gate::attn_out_a_gemm, N);
  ops->matmul_grouped(L.out_a, static_cast<int>(hp.o_groups), O, N, U, gemm ? MatmulKind::gemm : MatmulKind::exact);
  tap(il, Tap::attn_wo_a, R.pos0, N, U, u_width, gemm ? ga.fast_variant : ga.exact_variant);
  float* Y = ops->fbuf("Y", N * d);
  const char* v_outb = linear(L.out_b, U, N, Y);
  tap(il, Tap::attn_out, R.pos0, N, Y, d, v_outb);
  hc_post(il, Tap::hc_attn_post, R, Y);
}

// Feeds rows p0.. of one compressor and finishes the rows it emits (RMSNorm, RoPE at the
// window's first position, the stream's storage numerics), each tapped at its window end.
void Session::Impl::compress(int il, int block, const LayerWeights& L, bool indexer, const float* A,
                             const float* G, int64_t stride, int64_t p0, int64_t n_rows) {
  const int ratio = indexer ? 4 : static_cast<int>(L.ratio);
  const int rw = static_cast<int>(indexer ? hp.idx_head_dim : hp.head_dim);
  std::vector<int64_t> emit_pos;
  float* out = ops->compress(block, indexer, A, G, stride, p0, n_rows, &emit_pos);
  const int64_t k = static_cast<int64_t>(emit_pos.size());
  if (k == 0) return;
  std::vector<int64_t> rope_pos(k);
  for (int64_t j = 0; j < k; ++j) rope_pos[j] = emit_pos[j] + 1 - ratio;
  ops->rmsnorm(out, indexer ? &L.idx_comp_norm : &L.comp_norm, out, k, rw);
  ops->rope(out, k, 1, rw, rope_pos.data(), RopeKind::compressed, false);
  if (opt.profile == Profile::Ds4) {
    if (indexer) ops->indexer_qat(out, k, rw, true);
    else ops->kv_fp8_f16(out, k, rw);
  }
  const Tap t = indexer ? Tap::lid_state_compress : (L.ratio == 4 ? Tap::csa_state_compress : Tap::hca_state_compress);
  if (tapping())
    for (int64_t j = 0; j < k; ++j) tap(il, t, emit_pos[j], 1, out + j * rw, rw, ops->compress_variant());
}

void Session::Impl::attention_chunk(int il, int block, const LayerWeights& L, const Rows& R, int64_t r0,
                                    int64_t r1, float* Q, const float* QIall, float* WI, const float* KV,
                                    const float* CA, const float* CG, const float* IA, const float* IG, float* O,
                                    const char* v_qi, const char* v_wi) {
  const int64_t hd = hp.head_dim, ihd = hp.idx_head_dim, W = hp.window, nc = r1 - r0;
  const int nh = static_cast<int>(hp.n_head), nih = static_cast<int>(hp.n_idx_head);
  const int64_t p0 = R.pos0 + r0, ring = ops->ring_rows(block);

  // 1. Raw KV rows into the ring; 2. the compressors, in position order.
  ops->store_raw(block, KV + r0 * hd, p0, nc);
  if (L.ratio != 0) compress(il, block, L, false, CA + r0 * L.comp_kv.out, CG + r0 * L.comp_kv.out, L.comp_kv.out, p0, nc);
  if (L.ratio == 4)
    compress(il, block, L, true, IA + r0 * L.idx_comp_kv.out, IG + r0 * L.idx_comp_kv.out, L.idx_comp_kv.out, p0, nc);

  // 3. Per row: raw only, dense over all compressed rows, or indexed (ratio 4). Decode decides
  // dense vs indexed from the row's visible count; the batch-wide dispatch (fast) from the count
  // at the end of the batch.
  const bool batchwide = fast(Gate::dispatch_batchwide, R.n);
  const int64_t batch_final = L.ratio == 4 ? (R.pos0 + R.n) / 4 : 0;
  const int top_k = static_cast<int>(hp.idx_top_k);
  std::vector<int32_t> n_comp(nc), n_raw(nc), n_cand(nc);
  std::vector<char> indexed(nc, 0);
  std::vector<AttnKind> kind(nc);
  std::vector<const char*> vname(nc);
  int64_t max_cand = 1, i0 = -1, i1 = -1;
  for (int64_t r = 0; r < nc; ++r) {
    const int64_t p = p0 + r;
    n_comp[r] = L.ratio ? static_cast<int32_t>((p + 1) / L.ratio) : 0;
    n_raw[r] = static_cast<int32_t>(p - std::max<int64_t>(0, p - W + 1) + 1);
    if (L.ratio == 4) {
      indexed[r] = (batchwide ? batch_final : n_comp[r]) > top_k;
      float flag = indexed[r] ? 1.0f : 0.0f;  // 1 = indexed attention, 0 = dense
      const GateInfo& gd = gate_info(Gate::dispatch_batchwide);
      tap_host(il, Tap::attn_dispatch, p, &flag, 1, batchwide ? gd.fast_variant : gd.exact_variant);
    }
    const int32_t used = indexed[r] ? std::min(top_k, n_comp[r]) : n_comp[r];
    n_cand[r] = n_raw[r] + used;
    max_cand = std::max<int64_t>(max_cand, n_cand[r]);
    if (indexed[r]) {
      if (i0 < 0) i0 = r;
      if (i1 >= 0 && i1 != r) fail("forward: indexed rows of a chunk are not contiguous");
      i1 = r + 1;
      const bool online = fast(Gate::indexed_attn_online, R.n);
      kind[r] = online ? AttnKind::indexed_online : AttnKind::indexed_scalar;
      vname[r] = online ? "attn_indexed__heads8_online" : "attn_indexed__scalar";
    } else if (n_comp[r] > 0) {
      const bool lane8 = fast(Gate::dense_attn_ntokens, R.n);
      kind[r] = lane8 ? AttnKind::dense_lane8 : AttnKind::dense_serial;
      vname[r] = lane8 ? "attn_dense__lane8_dot" : "attn_dense__serial_dot";
    } else {
      kind[r] = AttnKind::dense_serial;
      vname[r] = "attn_raw__serial_dot";
    }
  }

  // 4. Candidate lists (host index arithmetic; the indexed part is filled from the top-k below).
  std::vector<int32_t> cand(static_cast<size_t>(nc) * max_cand, 0);
  for (int64_t r = 0; r < nc; ++r) {
    const int64_t p = p0 + r;
    int32_t* c = &cand[r * max_cand];
    int k = 0;
    for (int64_t t = p - n_raw[r] + 1; t <= p; ++t) c[k++] = static_cast<int32_t>(t % ring);
    if (!indexed[r])
      for (int32_t j = 0; j < n_comp[r]; ++j) c[k++] = static_cast<int32_t>(ring + j);
  }
  int32_t* dcand = ops->ibuf("cand", cand.size());
  int32_t* dncand = ops->ibuf("ncand", nc);
  int32_t* dnraw = ops->ibuf("nraw", nc);
  ops->upload(dcand, cand.data(), cand.size() * sizeof(int32_t));
  ops->upload(dncand, n_cand.data(), nc * sizeof(int32_t));
  ops->upload(dnraw, n_raw.data(), nc * sizeof(int32_t));

  // 5. Indexer: queries, scores over the rows each token sees, top-k, candidates.
  if (i0 >= 0) {
    const int64_t ni = i1 - i0, ra = r0 + i0;
    float* qi = ops->fbuf("lid_q", ni * nih * ihd);
    ops->copy(qi, QIall + ra * nih * ihd, ni * nih * ihd * sizeof(float));
    ops->rope(qi, ni, nih, static_cast<int>(ihd), R.pos.data() + ra, RopeKind::compressed, false);
    if (opt.profile == Profile::Ds4) ops->indexer_qat(qi, ni * nih, static_cast<int>(ihd), false);
    float* wi = WI + ra * nih;
    // Provenance: the projection that produced them (idx_q_b, idx_proj), as for `q`.
    if (tapping()) {
      for (int64_t j = 0; j < ni; ++j) {
        tap(il, Tap::lid_q, p0 + i0 + j, 1, qi + j * nih * ihd, nih * ihd, v_qi);
        tap(il, Tap::lid_weights, p0 + i0 + j, 1, wi + j * nih, nih, v_wi);
      }
    }
    std::vector<int32_t> nvis(n_comp.begin() + i0, n_comp.begin() + i1);
    int32_t* dnvis = ops->ibuf("nvis", ni);
    ops->upload(dnvis, nvis.data(), ni * sizeof(int32_t));
    const int64_t n_idx = ops->compressed_rows(block, true), stride = std::max<int64_t>(1, n_idx);
    float* scores = ops->fbuf("scores", ni * stride);
    const IndexerKind ik = fast(Gate::indexer_wmma, R.n)         ? IndexerKind::wmma_f16
                           : fast(Gate::indexer_direct_one, R.n) ? IndexerKind::scalar
                                                                 : IndexerKind::direct_one;
    const char* v_score = ops->indexer_scores(block, qi, wi, dnvis, ni, scores, stride, ik);
    if (tapping())
      for (int64_t j = 0; j < ni; ++j) tap(il, Tap::lid_score, p0 + i0 + j, 1, scores + j * stride, nvis[j], v_score);
    int32_t* idx = ops->ibuf("topk_idx", ni * top_k);
    int32_t* cnt = ops->ibuf("topk_cnt", ni);
    const char* v_topk;
    if (opt.topk_ties == TopkTies::TorchCpu) {
      // Oracle mode only (the HF comparison): torch's CPU top-k tie order, reproduced by
      // topk_torch_cpu_ref on the host scores, per row over its visible rows with the session's
      // queue length; per row, so the same in a batch as in N = 1 decodes.
      std::vector<float> hs(static_cast<size_t>(ni) * stride);
      ops->download(hs.data(), scores, hs.size() * sizeof(float));
      std::vector<int32_t> hidx(static_cast<size_t>(ni) * top_k, -1), hcnt(ni);
      for (int64_t j = 0; j < ni; ++j) {
        const std::vector<int32_t> sel = topk_torch_cpu_ref(&hs[j * stride], nvis[j], top_k, opt.torch_queue_len);
        hcnt[j] = static_cast<int32_t>(sel.size());
        std::copy(sel.begin(), sel.end(), hidx.begin() + j * top_k);
      }
      ops->upload(idx, hidx.data(), hidx.size() * sizeof(int32_t));
      ops->upload(cnt, hcnt.data(), hcnt.size() * sizeof(int32_t));
      v_topk = "topk__torch_cpu_host";
    } else {
      const TopkKind tk = fast(Gate::topk_resort, R.n) ? TopkKind::resort_ascending : TopkKind::score_order;
      v_topk = ops->topk(scores, dnvis, ni, stride, top_k, idx, cnt, tk);
    }
    if (tapping()) {
      std::vector<int32_t> hidx(ni * top_k);
      ops->download(hidx.data(), idx, hidx.size() * sizeof(int32_t));
      for (int64_t j = 0; j < ni; ++j) {
        const int c = std::min(top_k, nvis[j]);
        std::vector<float> ids(hidx.begin() + j * top_k, hidx.begin() + j * top_k + c);
        tap_host(il, Tap::lid_top_k, p0 + i0 + j, ids.data(), ids.size(), v_topk);
      }
    }
    ops->cand_indexed(dcand + i0 * max_cand, static_cast<int>(max_cand), dnraw + i0, idx, top_k, cnt, ni,
                      static_cast<int32_t>(ring));
  }

  // 6. Attention, one call per run of rows with the same kernel; then the inverse RoPE.
  float* Oc = O + r0 * nh * hd;
  for (int64_t a = 0; a < nc;) {
    int64_t b = a + 1;
    while (b < nc && kind[b] == kind[a]) ++b;
    ops->attention(block, Q + (r0 + a) * nh * hd, dcand + a * max_cand, dncand + a, static_cast<int>(max_cand),
                   L.sinks, Oc + a * nh * hd, b - a, kind[a]);
    a = b;
  }
  tap(il, Tap::kqv_out, p0, nc, Oc, nh * hd, nullptr, &vname);
  ops->rope(Oc, nc, nh, static_cast<int>(hd), R.pos.data() + r0, L.ratio == 0 ? RopeKind::main : RopeKind::compressed,
            true);
  tap(il, Tap::attn_derope, p0, nc, Oc, nh * hd, nullptr, &vname);
}

}  // namespace ds4
