// The CPU backend of the forward graph. Buffers are host memory; the caches are SessionState's
// own layout (forward/state.h), so save/load copy them as they are. The cache part attends row by
// row (chunk_rows() = 1) over a raw ring of `window` rows. Every op is the reference kernel
// (ops/*/*_ref.cpp) or, when the graph asks for the gate's fast kind, the CPU fast variant; each
// returns the variant name the CPU forward has always reported.
#include "backend/cpu/cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <thread>

#include "backend/cpu/thread_pool.h"
#include "ds4/error.h"
#include "forward/exec.h"
#include "ops/attention/attention.h"
#include "ops/compressor/compressor.h"
#include "ops/hc/hc.h"
#include "ops/indexer/indexer.h"
#include "ops/matmul/linear.h"
#include "ops/moe/moe.h"
#include "ops/norm/rmsnorm.h"
#include "ops/numerics/qat.h"
#include "ops/rope/rope.h"

namespace ds4 {
namespace {

class CpuOps final : public BackendOps {
 public:
  CpuOps(const Model& model, const SessionOptions& o)
      : hp_(model.hparams()),
        profile_(o.profile),
        pool_(o.n_threads > 0 ? o.n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))),
        cache_(o.dequant_cache_bytes > 0 ? o.dequant_cache_bytes : cpu_dequant_cache_budget_bytes()) {
    rope_main_ = rope_params(hp_.n_rot, hp_.rope_base, 1.0f, hp_.yarn_orig_ctx, hp_.yarn_beta_fast, hp_.yarn_beta_slow,
                             false);
    rope_comp_ = rope_params(hp_.n_rot, hp_.compress_rope_base, hp_.yarn_factor, hp_.yarn_orig_ctx, hp_.yarn_beta_fast,
                             hp_.yarn_beta_slow, true);
  }

  // ---- memory ----
  bool host_memory() const override { return true; }
  void* scratch(const char* name, size_t bytes) override {
    std::vector<float>& b = scratch_[name];
    const size_t n = (bytes + sizeof(float) - 1) / sizeof(float);
    if (b.size() < n) b.resize(n);
    return b.data();
  }
  void upload(void* dst, const void* host, size_t bytes) override { copy(dst, host, bytes); }
  void download(void* host, const void* src, size_t bytes) override { copy(host, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes != 0 && dst != src) std::memcpy(dst, src, bytes);
  }
  void finish(const char*) override {}
  int64_t chunk_rows() const override { return 1; }

  // ---- state ----
  void reset_state() override {
    auto make = [&](uint32_t ratio) {
      LayerState L;
      L.raw.assign(static_cast<size_t>(hp_.window) * hp_.head_dim, 0.0f);
      if (ratio != 0) L.comp.init(static_cast<int>(ratio), static_cast<int>(hp_.head_dim));
      if (ratio == 4) L.idx_comp.init(4, static_cast<int>(hp_.idx_head_dim));
      return L;
    };
    layers_.clear();
    mtp_.clear();
    for (uint32_t il = 0; il < hp_.n_layer; ++il) layers_.push_back(make(hp_.ratios[il]));
    for (uint32_t m = 0; m < hp_.n_mtp; ++m) mtp_.push_back(make(0));
    last_hc_.assign(static_cast<size_t>(hp_.n_hc) * hp_.n_embd, 0.0f);
  }
  void save_state(int64_t, SessionState* s) override {
    s->layers = layers_;
    s->mtp = mtp_;
    s->last_hc = last_hc_;
  }
  void load_state(const SessionState& s) override {
    layers_ = s.layers;
    mtp_ = s.mtp;
    last_hc_ = s.last_hc;
  }
  float* last_hc() override { return last_hc_.data(); }
  int64_t ring_rows(int) const override { return hp_.window; }
  int64_t compressed_rows(int block, bool indexer) const override {
    const LayerState& S = state(block);
    return indexer ? static_cast<int64_t>(S.idx_rows.size() / hp_.idx_head_dim)
                   : static_cast<int64_t>(S.comp_rows.size() / hp_.head_dim);
  }

  // ---- weight matmuls ----
  const char* matmul(const WeightRef& w, const float* x, int64_t n, float* y, MatmulKind kind) override {
    switch (kind) {
      case MatmulKind::gemm: return linear_gemm(w, x, n, y, ctx());
      case MatmulKind::preq_tree: return linear_preq_tree(w, x, n, y, ctx());
      case MatmulKind::exact: break;
    }
    return linear_exact(w, x, n, y, ctx());
  }
  // Group by group: the group's columns of x gathered, times its row block of w.
  const char* matmul_grouped(const WeightRef& w, int groups, const float* x, int64_t n, float* y,
                             MatmulKind kind) override {
    const int64_t group_in = w.in, g_out = w.out / groups, x_width = group_in * groups;
    std::vector<float> Xg(n * group_in), Yg(n * g_out);
    const char* v = nullptr;
    for (int g = 0; g < groups; ++g) {
      for (int64_t r = 0; r < n; ++r)
        std::memcpy(&Xg[r * group_in], x + r * x_width + g * group_in, group_in * sizeof(float));
      v = matmul(w.rows(static_cast<int64_t>(g) * g_out, g_out), Xg.data(), n, Yg.data(), kind);
      for (int64_t r = 0; r < n; ++r) std::memcpy(y + r * w.out + g * g_out, &Yg[r * g_out], g_out * sizeof(float));
    }
    return v;
  }

  // ---- row-independent ops ----
  const char* rmsnorm(const float* x, const Vec* w, float* y, int64_t n_rows, int64_t n) override {
    for (int64_t r = 0; r < n_rows; ++r) {
      if (w) rmsnorm_ref(x + r * n, w->data(), y + r * n, n, hp_.eps);
      else rmsnorm0_ref(x + r * n, y + r * n, n, hp_.eps);
    }
    return "rmsnorm__ref";
  }
  const char* hc_split(const float* m, const Vec& scale, const Vec& base, float* pre, float* post, float* comb,
                       int64_t n_rows) override {
    const int n_hc = static_cast<int>(hp_.n_hc), mix_w = (2 + n_hc) * n_hc;
    for (int64_t r = 0; r < n_rows; ++r) {
      const HcMix mix = hc_split_ref(m + r * mix_w, n_hc, scale.data(), base.data(), hp_.sinkhorn_iters, hp_.hc_eps);
      std::copy(mix.pre.begin(), mix.pre.end(), pre + r * n_hc);
      std::copy(mix.post.begin(), mix.post.end(), post + r * n_hc);
      std::copy(mix.comb.begin(), mix.comb.end(), comb + r * n_hc * n_hc);
    }
    return "hc_split__ref";
  }
  const char* hc_collapse_norm(const float* X, const float* pre, const Vec& norm, float* x, float* xn,
                               int64_t n_rows) override {
    const int64_t d = hp_.n_embd, n_hc = hp_.n_hc;
    for (int64_t r = 0; r < n_rows; ++r) {
      hc_collapse_ref(X + r * n_hc * d, pre + r * n_hc, static_cast<int>(n_hc), d, x + r * d);
      rmsnorm_ref(x + r * d, norm.data(), xn + r * d, d, hp_.eps);
    }
    return "rmsnorm__ref";
  }
  const char* hc_post(const float* X, const float* y, const float* post, const float* comb, float* X_out,
                      int64_t n_rows) override {
    const int64_t d = hp_.n_embd, n_hc = hp_.n_hc;
    HcMix mix;
    for (int64_t r = 0; r < n_rows; ++r) {
      mix.post.assign(post + r * n_hc, post + (r + 1) * n_hc);
      mix.comb.assign(comb + r * n_hc * n_hc, comb + (r + 1) * n_hc * n_hc);
      hc_post_ref(X + r * n_hc * d, y + r * d, mix, static_cast<int>(n_hc), d, X_out + r * n_hc * d);
    }
    return "hc_post__ref";
  }
  void hc_head(const float* X, const float* m, float scale, const Vec& base, float* E, int64_t n_rows) override {
    const int64_t d = hp_.n_embd, n_hc = hp_.n_hc;
    for (int64_t r = 0; r < n_rows; ++r) {
      const std::vector<float> wts = hc_head_weights_ref(m + r * n_hc, static_cast<int>(n_hc), scale, base.data(), hp_.hc_eps);
      hc_collapse_ref(X + r * n_hc * d, wts.data(), static_cast<int>(n_hc), d, E + r * d);
    }
  }
  void rope(float* x, int64_t n_rows, int n_head, int head_dim, const int64_t* pos, RopeKind k, bool inverse) override {
    const RopeParams& rp = k == RopeKind::main ? rope_main_ : rope_comp_;
    for (int64_t r = 0; r < n_rows; ++r)
      for (int h = 0; h < n_head; ++h)
        rope_tail_ref(x + (r * n_head + h) * head_dim, head_dim, static_cast<int>(hp_.n_rot), pos[r], rp, inverse);
  }
  void kv_fp8_f16(float* x, int64_t n_rows, int row_len) override {
    for (int64_t r = 0; r < n_rows; ++r) {
      kv_fp8_roundtrip_ref(x + r * row_len, static_cast<int>(hp_.nope()));
      round_f16_inplace(x + r * row_len, row_len);
    }
  }
  void indexer_qat(float* x, int64_t n_rows, int n, bool round_f16) override {
    for (int64_t r = 0; r < n_rows; ++r) {
      hadamard_ref(x + r * n, n);
      fp4_roundtrip_ref(x + r * n, n);
      if (round_f16) round_f16_inplace(x + r * n, n);
    }
  }
  void ape_add(float* G, const Vec& ape, int64_t n_rows, int width, int ratio, int64_t pos0) override {
    for (int64_t r = 0; r < n_rows; ++r) {
      const float* ape_u = ape.data() + static_cast<size_t>((pos0 + r) % ratio) * width;
      for (int j = 0; j < width; ++j) G[r * width + j] += ape_u[j];
    }
  }
  void swiglu(const float* g, const float* u, float* h, int64_t n, float limit) override {
    swiglu_clamped_ref(g, u, h, n, limit);
  }
  const char* add(float* y, const float* x, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
    return add_variant();
  }
  const char* add_variant() const override { return "add__ref"; }

  // ---- caches and attention ----
  void store_raw(int block, const float* kv, int64_t pos0, int64_t n_rows) override {
    LayerState& S = state(block);
    const int64_t hd = hp_.head_dim;
    for (int64_t r = 0; r < n_rows; ++r)
      std::memcpy(&S.raw[static_cast<size_t>((pos0 + r) % hp_.window) * hd], kv + r * hd, hd * sizeof(float));
  }
  float* compress(int block, bool indexer, const float* A, const float* G, int64_t stride, int64_t pos0,
                  int64_t n_rows, std::vector<int64_t>* emit_pos) override {
    LayerState& S = state(block);
    CompressorState& C = indexer ? S.idx_comp : S.comp;
    std::vector<float>& rows = indexer ? S.idx_rows : S.comp_rows;
    const size_t first = rows.size();
    std::vector<float> row(C.head_dim);
    emit_pos->clear();
    for (int64_t r = 0; r < n_rows; ++r) {
      if (!compressor_push_ref(C, A + r * stride, G + r * stride, pos0 + r, row.data())) continue;
      rows.insert(rows.end(), row.begin(), row.end());
      emit_pos->push_back(pos0 + r);
    }
    return emit_pos->empty() ? nullptr : rows.data() + first;
  }
  const char* compress_variant() const override { return "compressor_pool__ref"; }
  const char* indexer_scores(int block, const float* qi, const float* wi, const int32_t* n_visible, int64_t n_tok,
                             float* scores, int64_t stride, IndexerKind k) override {
    const LayerState& S = state(block);
    const int nih = static_cast<int>(hp_.n_idx_head), ihd = static_cast<int>(hp_.idx_head_dim);
    for (int64_t j = 0; j < n_tok; ++j) {
      const float* q = qi + j * nih * ihd;
      const float* w = wi + j * nih;
      float* s = scores + j * stride;
      switch (k) {
        case IndexerKind::wmma_f16: indexer_scores_wmma(q, nih, ihd, w, S.idx_rows.data(), n_visible[j], s); break;
        case IndexerKind::scalar: indexer_scores_scalar(q, nih, ihd, w, S.idx_rows.data(), n_visible[j], s); break;
        case IndexerKind::direct_one: indexer_scores_ref(q, nih, ihd, w, S.idx_rows.data(), n_visible[j], s); break;
      }
    }
    return k == IndexerKind::wmma_f16 ? "indexer_scores__wmma_f16"
           : k == IndexerKind::scalar ? "indexer_scores__scalar"
                                      : "indexer_scores__direct_one";
  }
  const char* topk(const float* scores, const int32_t* n_visible, int64_t n_tok, int64_t stride, int k, int32_t* idx,
                   int32_t* count, TopkKind kind) override {
    const bool resort = kind == TopkKind::resort_ascending;
    for (int64_t j = 0; j < n_tok; ++j) {
      const std::vector<int32_t> sel = resort ? topk_ascending_ref(scores + j * stride, n_visible[j], k)
                                              : topk_score_order_ref(scores + j * stride, n_visible[j], k);
      std::fill(idx + j * k, idx + (j + 1) * k, -1);
      std::copy(sel.begin(), sel.end(), idx + j * k);
      count[j] = static_cast<int32_t>(sel.size());
    }
    return resort ? "topk__resort_ascending" : "topk__score_order";
  }
  void cand_indexed(int32_t* cand, int max_cand, const int32_t* n_raw, const int32_t* idx, int k, const int32_t* count,
                    int64_t n_rows, int32_t base) override {
    for (int64_t r = 0; r < n_rows; ++r)
      for (int32_t j = 0; j < count[r]; ++j) cand[r * max_cand + n_raw[r] + j] = base + idx[r * k + j];
  }
  void attention(int block, const float* q, const int32_t* cand, const int32_t* n_cand, int max_cand, const Vec& sinks,
                 float* out, int64_t n_tok, AttnKind k) override {
    const LayerState& S = state(block);
    const int64_t hd = hp_.head_dim, nh = hp_.n_head, ring = hp_.window;
    using AttnFn = void (*)(const float*, const float* const*, int, int, float, float, float*);
    const AttnFn fn = k == AttnKind::dense_lane8      ? attention_head_lane8
                      : k == AttnKind::indexed_online ? attention_head_online
                                                      : attention_head_ref;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<const float*> rows;
    for (int64_t t = 0; t < n_tok; ++t) {
      rows.clear();
      for (int32_t i = 0; i < n_cand[t]; ++i) {
        const int64_t c = cand[t * max_cand + i];
        rows.push_back(c < ring ? &S.raw[static_cast<size_t>(c) * hd] : &S.comp_rows[static_cast<size_t>(c - ring) * hd]);
      }
      const float* qt = q + t * nh * hd;
      float* o = out + t * nh * hd;
      pool_.parallel_for(nh, [&](int64_t a, int64_t b) {
        for (int64_t h = a; h < b; ++h)
          fn(qt + h * hd, rows.data(), static_cast<int>(rows.size()), static_cast<int>(hd), scale, sinks[h], o + h * hd);
      }, 1);
    }
  }

  // ---- FFN ----
  const char* routed_experts(const LayerWeights& L, const float* XN, int64_t n, const std::vector<int32_t>& experts,
                             const std::vector<float>& weights, float clamp, MoeKind kind, float* Y) override {
    const int64_t d = hp_.n_embd, n_used = hp_.n_expert_used;
    std::vector<Routing> routing(n);
    for (int64_t r = 0; r < n; ++r) {
      routing[r].experts.assign(experts.begin() + r * n_used, experts.begin() + (r + 1) * n_used);
      routing[r].weights.assign(weights.begin() + r * n_used, weights.begin() + (r + 1) * n_used);
    }
    if (kind == MoeKind::tiles) {
      moe_expert_tiles(L.gate_exps, L.up_exps, L.down_exps, XN, n, d, routing, clamp, ctx(), Y);
      return "moe__expert_tiles";
    }
    std::fill(Y, Y + n * d, 0.0f);
    std::vector<float> ye(d);
    for (int64_t r = 0; r < n; ++r) {
      for (size_t s = 0; s < routing[r].experts.size(); ++s) {
        const int32_t e = routing[r].experts[s];
        expert_ffn_ref(L.gate_exps.expert(e), L.up_exps.expert(e), L.down_exps.expert(e), XN + r * d,
                       routing[r].weights[s], clamp, profile_, &pool_, ye.data(), nullptr);
        for (int64_t j = 0; j < d; ++j) Y[r * d + j] += ye[j];
      }
    }
    return "moe__decode_lut";
  }

 private:
  // What the CPU variants need besides their tensors (the gate choice is the graph's).
  ExecCtx ctx() {
    ExecCtx c;
    c.profile = profile_;
    c.pool = &pool_;
    c.cache = &cache_;
    return c;
  }
  LayerState& state(int block) { return block < static_cast<int>(hp_.n_layer) ? layers_[block] : mtp_[block - hp_.n_layer]; }
  const LayerState& state(int block) const {
    return block < static_cast<int>(hp_.n_layer) ? layers_[block] : mtp_[block - hp_.n_layer];
  }

  const HParams& hp_;
  Profile profile_;
  ThreadPool pool_;
  WeightCache cache_;
  RopeParams rope_main_, rope_comp_;
  std::vector<LayerState> layers_, mtp_;
  std::vector<float> last_hc_;
  std::map<std::string, std::vector<float>> scratch_;
};

}  // namespace

std::unique_ptr<BackendOps> make_cpu_ops(const Model& model, const SessionOptions& opt) {
  return std::make_unique<CpuOps>(model, opt);
}

}  // namespace ds4
