// The CUDA backend's row-independent ops, caches, indexer and attention: the launches the graph's
// attention sublayer (engine/forward/attention_layer.cpp) asks for. The cache part: the KV ring
// holds window + chunk slots (trunk layers), so no row of a chunk overwrites a position another
// row of the chunk still sees; the compressors consume the chunk's rows in position order; the
// attention, indexer and top-k kernels are row-independent (one block per row), so per row
// bit-equal to N = 1.
#include <algorithm>
#include <cmath>

#include "backend/cuda/forward_cuda_impl.h"
#include "ds4/error.h"

namespace ds4::cudafwd {

// ---- row-independent ops ---------------------------------------------------------------------

const char* CudaOps::rmsnorm(const float* x, const Vec* wt, float* y, int64_t n_rows, int64_t n) {
  cuda::rmsnorm_rows(x, wt ? dvec(*wt).f() : nullptr, y, n_rows, n, hp.eps);
  return "rmsnorm__block256_f64";
}

const char* CudaOps::hc_split(const float* m, const Vec& scale, const Vec& base, float* pre, float* post, float* comb,
                              int64_t n_rows) {
  cuda::hc_split(m, dvec(scale).f(), dvec(base).f(), pre, post, comb, n_rows, static_cast<int>(hp.n_hc),
                 static_cast<int>(hp.sinkhorn_iters), hp.hc_eps);
  return "hc_split__sinkhorn_serial";
}

// N = 1 takes ds4's fused decode kernel, N > 1 the split pair; per row bit-equal.
const char* CudaOps::hc_collapse_norm(const float* X, const float* pre, const Vec& norm, float* x, float* xn,
                                      int64_t n_rows) {
  const cuda::HcNormVariant v = n_rows == 1 ? cuda::HcNormVariant::fused : cuda::HcNormVariant::split;
  cuda::hc_collapse_norm(X, pre, dvec(norm).f(), x, xn, n_rows, static_cast<int>(hp.n_hc), hp.n_embd, hp.eps, v);
  return cuda::variant_name(v);
}

const char* CudaOps::hc_post(const float* X, const float* y, const float* post, const float* comb, float* X_out,
                             int64_t n_rows) {
  cuda::hc_post(X, y, post, comb, X_out, n_rows, static_cast<int>(hp.n_hc), hp.n_embd);
  return "hc_post__rows";
}

void CudaOps::hc_head(const float* X, const float* m, float scale, const Vec& base, float* E, int64_t n_rows) {
  const int n_hc = static_cast<int>(hp.n_hc);
  float* hw = buf("head_w", n_rows * n_hc);
  cuda::hc_head_weights(m, scale, dvec(base).f(), hw, n_rows, n_hc, hp.hc_eps);
  cuda::hc_collapse(X, hw, E, n_rows, n_hc, hp.n_embd);
}

void CudaOps::rope(float* x, int64_t n_rows, int n_head, int head_dim, const int64_t* pos_host, RopeKind k,
                   bool inverse) {
  int64_t* dpos = lbuf("rope_pos", n_rows);
  cuda::copy_h2d(dpos, pos_host, n_rows * sizeof(int64_t));
  const float* inv_freq = k == RopeKind::main ? dw_->inv_freq_main.f() : dw_->inv_freq_comp.f();
  cuda::rope_tail(x, n_rows, n_head, head_dim, static_cast<int>(hp.n_rot), dpos, inv_freq, inverse);
}

void CudaOps::kv_fp8_f16(float* x, int64_t n_rows, int row_len) {
  cuda::kv_fp8_roundtrip(x, n_rows, row_len, static_cast<int>(hp.nope()), true);
}
void CudaOps::indexer_qat(float* x, int64_t n_rows, int n, bool round_f16) { cuda::indexer_qat(x, n_rows, n, round_f16); }
void CudaOps::ape_add(float* G, const Vec& ape, int64_t n_rows, int width, int ratio, int64_t pos0) {
  cuda::ape_add(G, dvec(ape).f(), n_rows, width, ratio, pos0);
}
void CudaOps::swiglu(const float* g, const float* u, float* h, int64_t n, float limit) {
  cuda::swiglu_clamped(g, u, h, n, limit);
}
const char* CudaOps::add(float* y, const float* x, int64_t n) {
  cuda::add_inplace(y, x, n);
  return add_variant();
}

// ---- caches ----------------------------------------------------------------------------------

// Raw KV rows into the ring (runs of consecutive slots).
void CudaOps::store_raw(int block, const float* kv, int64_t pos0, int64_t nc) {
  DLayerState& S = state(block);
  const int64_t hd = hp.head_dim;
  for (int64_t r = 0; r < nc;) {
    const int64_t slot = (pos0 + r) % S.ring;
    const int64_t run = std::min(nc - r, S.ring - slot);
    cuda::copy_d2d(S.pool.f() + slot * hd, kv + r * hd, run * hd * sizeof(float));
    r += run;
  }
}

// The compressor in position order; emitted rows are appended (compressed KV rows after the ring
// in the pool, indexer rows in idx_rows) and finished by the graph in one batch.
float* CudaOps::compress(int block, bool indexer, const float* A, const float* G, int64_t stride, int64_t pos0,
                         int64_t nc, std::vector<int64_t>* emit_pos) {
  DLayerState& S = state(block);
  cuda::CompressorDeviceState& C = indexer ? S.idx_comp : S.comp;
  const int64_t rw = indexer ? hp.idx_head_dim : hp.head_dim;
  float* rows = indexer ? S.idx_rows.f() : S.pool.f() + S.ring * hp.head_dim;
  int64_t& n_rows = indexer ? S.n_idx : S.n_comp;
  const int64_t cap = indexer ? S.idx_cap : S.comp_cap;
  const int64_t first = n_rows;
  float* dummy = buf(indexer ? "pooled_idx" : "pooled", rw);
  emit_pos->clear();
  for (int64_t r = 0; r < nc; ++r) {
    const int64_t p = pos0 + r;
    const bool emit = (p + 1) % C.ratio == 0;
    if (emit && n_rows >= cap) fail("CUDA forward: compressed rows exceed max_ctx capacity");
    cuda::compressor_update(C, A + r * stride, G + r * stride, p, emit ? rows + n_rows * rw : dummy);
    if (emit) {
      emit_pos->push_back(p);
      ++n_rows;
    }
  }
  return n_rows > first ? rows + first * rw : nullptr;
}

// ---- indexer and attention -------------------------------------------------------------------

const char* CudaOps::indexer_scores(int block, const float* qi, const float* wi, const int32_t* n_visible,
                                    int64_t n_tok, float* scores, int64_t, const char* variant) {
  const DLayerState& S = state(block);
  cuda::IndexerArgs ia;
  ia.q = qi;
  ia.w = wi;
  ia.K = S.idx_rows.f();
  ia.n_visible = n_visible;
  ia.scores = scores;
  ia.n_tok = n_tok;
  ia.n_rows = S.n_idx;
  ia.n_head = static_cast<int>(hp.n_idx_head);
  ia.head_dim = static_cast<int>(hp.idx_head_dim);
  const cuda::IndexerVariant iv = cuda_variant<cuda::IndexerVariant>(variant);
  cuda::indexer_scores(ia, iv);
  return cuda::variant_name(iv);
}

const char* CudaOps::topk(const float* scores, const int32_t* n_visible, int64_t n_tok, int64_t stride, int k,
                          int32_t* idx, int32_t* count, const char* variant) {
  const cuda::TopkVariant tv = cuda_variant<cuda::TopkVariant>(variant);
  cuda::topk(scores, n_visible, n_tok, stride, k, idx, count, tv);
  return cuda::variant_name(tv);
}

void CudaOps::cand_indexed(int32_t* cand, int max_cand, const int32_t* n_raw, const int32_t* idx, int k,
                           const int32_t* count, int64_t n_rows, int32_t base) {
  cuda::cand_indexed(cand, max_cand, n_raw, idx, k, count, n_rows, base);
}

void CudaOps::attention(int block, const float* q, const int32_t* cand, const int32_t* n_cand, int max_cand,
                        const Vec& sinks, float* out, int64_t n_tok, const char* variant) {
  const int64_t hd = hp.head_dim;
  cuda::AttnArgs aa;
  aa.q = q;
  aa.kv = state(block).pool.f();
  aa.cand = cand;
  aa.n_cand = n_cand;
  aa.sinks = dvec(sinks).f();
  aa.out = out;
  aa.n_tok = n_tok;
  aa.n_head = static_cast<int>(hp.n_head);
  aa.head_dim = static_cast<int>(hd);
  aa.max_cand = max_cand;
  aa.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  cuda::attention(aa, cuda_variant<cuda::AttnVariant>(variant));
}

}  // namespace ds4::cudafwd
