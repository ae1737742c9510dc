// The CUDA forward: session, device state, per-Model weights cache, matmul dispatch and taps.
// The sublayers are in forward_cuda_attn.cpp and forward_cuda_ffn.cpp; forward_cuda.h has the design.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <optional>

#include "backend/cuda/device.h"
#include "backend/cuda/forward_cuda_impl.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"
#include "quant/quant_detail.h"

namespace ds4 {
namespace cudafwd {

// ---- allocation accounting -------------------------------------------------------------------

namespace {
std::atomic<int64_t> g_used{0};
std::atomic<int64_t> g_limit{0};
}  // namespace

void set_mem_limit(int64_t bytes) { g_limit = bytes; }

[[noreturn]] void fail_oom(size_t bytes, const std::string& what) {
  std::string msg = "CUDA out of memory allocating " + std::to_string(bytes) + " bytes for " + what;
  if (g_limit > 0)
    msg += " (DS4_CUDA_MEM_LIMIT_MB cap " + std::to_string(g_limit.load()) + " bytes, " +
           std::to_string(g_used.load()) + " in use)";
  fail(msg);
}

void reserve_bytes(size_t bytes, const std::string& what) {
  const int64_t lim = g_limit.load();
  if (lim > 0 && g_used.load() + static_cast<int64_t>(bytes) > lim) fail_oom(bytes, what);
  g_used += static_cast<int64_t>(bytes);
}
void release_bytes(size_t bytes) { g_used -= static_cast<int64_t>(bytes); }

DevMem::DevMem(size_t bytes, const std::string& what) {
  if (bytes == 0) return;
  reserve_bytes(bytes, what);
  p_ = cuda::device_malloc_or_null(bytes);
  if (!p_) {
    release_bytes(bytes);
    fail_oom(bytes, what);
  }
  bytes_ = bytes;
}
DevMem::~DevMem() {
  if (p_) {
    cuda::device_free(p_);
    release_bytes(bytes_);
  }
}
DevMem& DevMem::operator=(DevMem&& o) noexcept {
  if (this != &o) {
    if (p_) {
      cuda::device_free(p_);
      release_bytes(bytes_);
    }
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

DevMem upload(const void* host, size_t bytes, const std::string& what) {
  DevMem m(bytes, what);
  cuda::copy_h2d(m.get(), host, bytes);
  return m;
}

// ---- weights ---------------------------------------------------------------------------------

namespace {

CudaWeightType cuda_type(QType t, const std::string& what) {
  switch (t) {
    case QType::Q8_0: return CudaWeightType::q8_0;
    case QType::F16: return CudaWeightType::f16;
    case QType::F32: return CudaWeightType::f32;
    default:
      fail("CUDA forward: " + what + " has tensor type " + qtype_name(t) +
           ", which the CUDA matmuls do not support (Q8_0, F16, F32)");
  }
}

DMat make_mat(const WeightRef& r, int64_t groups, const std::string& what, size_t* total) {
  DMat d;
  if (!r) return d;
  d.type = cuda_type(r.type, what);
  d.in = r.in * groups;
  d.out = r.out;
  const int64_t in = r.in, out = r.out / groups;
  // Stored bytes plus the F16 copy of Q8_0 that matmul_q8__gemm_f16 reads.
  const size_t stored = static_cast<size_t>(r.out) * r.row_bytes;
  const size_t bytes = stored + (d.type == CudaWeightType::q8_0 ? static_cast<size_t>(r.out) * r.in * 2 : 0);
  reserve_bytes(bytes, what);
  d.counted = bytes;
  try {
    d.m = std::make_unique<CudaMatrix>(d.type, in, out, groups, r.data, true);
  } catch (const Error& e) {
    if (std::strstr(e.what(), "out of memory")) fail_oom(bytes, what);
    throw;
  }
  *total += stored;
  return d;
}

DevMem vec(const Vec& v, const std::string& what) { return v.empty() ? DevMem() : upload_vec(v, what); }

DevMem raw_tensor(const WeightRef& r, const std::string& what, size_t* total) {
  const size_t bytes = static_cast<size_t>(r.n_mat) * r.out * r.row_bytes;
  *total += bytes;
  return upload(r.data, bytes, what);
}

// The raw-bytes expert type of ds4::cuda::moe for a GGUF type, or nothing.
std::optional<cuda::ExpertType> kquant_type(QType t) {
  switch (t) {
    case QType::IQ2_XXS: return cuda::ExpertType::iq2_xxs;
    case QType::Q2_K: return cuda::ExpertType::q2_k;
    case QType::Q4_K: return cuda::ExpertType::q4_k;
    default: return std::nullopt;
  }
}

// The routed experts of a layer: a k-quant mix (gate/up one of IQ2_XXS/Q2_K/Q4_K, the same for
// both, down one of IQ2_XXS/Q2_K/Q4_K: the ds4 mix, the q4_k mix, ...) as raw bytes for
// ds4::cuda::moe, anything else as one CudaMatrix per expert slice (Q8_0/F16/F32 only: another
// type, or a mix of k-quant and other types, is a one-line error from cuda_type).
void upload_experts(const LayerWeights& L, const std::string& p, DLayer* D, size_t* total) {
  const auto g = kquant_type(L.gate_exps.type), u = kquant_type(L.up_exps.type), dn = kquant_type(L.down_exps.type);
  if (g && u && *g != *u)
    fail("CUDA forward: " + p + "ffn_gate_exps (" + qtype_name(L.gate_exps.type) + ") and " + p + "ffn_up_exps (" +
         qtype_name(L.up_exps.type) + ") differ in type; the CUDA MoE kernels need one gate/up type");
  D->kquant_experts = g && u && dn;
  if (D->kquant_experts) {
    D->gate_up_type = *g;
    D->down_type = *dn;
    D->gate_exps = raw_tensor(L.gate_exps, p + "ffn_gate_exps", total);
    D->up_exps = raw_tensor(L.up_exps, p + "ffn_up_exps", total);
    D->down_exps = raw_tensor(L.down_exps, p + "ffn_down_exps", total);
    return;
  }
  for (int64_t e = 0; e < L.gate_exps.n_mat; ++e) {
    const std::string x = std::to_string(e);
    D->gate_e.push_back(make_mat(L.gate_exps.expert(e), 1, p + "ffn_gate_exps." + x, total));
    D->up_e.push_back(make_mat(L.up_exps.expert(e), 1, p + "ffn_up_exps." + x, total));
    D->down_e.push_back(make_mat(L.down_exps.expert(e), 1, p + "ffn_down_exps." + x, total));
  }
}

// Profile::Plain multiplies F32 activations by the weights as stored (matvec_ref: F32 and F16
// dots; quantised types dequantised row by row). The CUDA kernels for Q8_0 weights and the
// k-quant expert kernels (IQ2_XXS/Q2_K/Q4_K) quantise the activations (Q8_0 / Q8_K), so no CUDA
// kernel has the plain numerics for them: plain on CUDA runs F32/F16 weights only, and refuses
// the rest (the MTP block's matrices included).
void check_plain_types(const ModelWeights& w, uint32_t n_layer) {
  auto check = [](const WeightRef& r, const std::string& what) {
    if (r && r.type != QType::F32 && r.type != QType::F16)
      fail("--backend cuda: the plain profile needs F32/F16 weights (its CUDA kernels for " +
           std::string(qtype_name(r.type)) + " quantise the activations); " + what + " is " + qtype_name(r.type));
  };
  for (uint32_t il = 0; il < n_layer + w.mtp.size(); ++il) {
    const LayerWeights& L = il < n_layer ? w.layers[il] : w.mtp[il - n_layer];
    const std::string p = "blk." + std::to_string(il) + ".";
    const std::pair<const WeightRef*, const char*> mats[] = {
        {&L.hc_attn_fn, "hc_attn_fn"}, {&L.hc_ffn_fn, "hc_ffn_fn"}, {&L.q_a, "attn_q_a"}, {&L.q_b, "attn_q_b"},
        {&L.kv, "attn_kv"}, {&L.out_a, "attn_output_a"}, {&L.out_b, "attn_output_b"},
        {&L.comp_kv, "attn_compressor_kv"}, {&L.comp_gate, "attn_compressor_gate"},
        {&L.idx_q_b, "indexer.attn_q_b"}, {&L.idx_proj, "indexer.proj"},
        {&L.idx_comp_kv, "indexer_compressor_kv"}, {&L.idx_comp_gate, "indexer_compressor_gate"},
        {&L.router, "ffn_gate_inp"}, {&L.gate_sh, "ffn_gate_shexp"}, {&L.up_sh, "ffn_up_shexp"},
        {&L.down_sh, "ffn_down_shexp"}, {&L.gate_exps, "ffn_gate_exps"}, {&L.up_exps, "ffn_up_exps"},
        {&L.down_exps, "ffn_down_exps"}};
    for (const auto& [r, name] : mats) check(*r, p + name);
    check(L.eh_proj, p + "nextn.eh_proj");
    check(L.mtp_hc_fn, p + "nextn.hc_head_fn");
  }
  check(w.output, "output");
  check(w.output_hc_fn, "output_hc_fn");
}

// One block's device weights (a trunk layer, or the MTP block with its nextn.* tensors).
DLayer build_layer(const LayerWeights& L, const HParams& hp, const std::string& p, size_t* tot) {
  DLayer D;
  D.ratio = L.ratio;
  D.hc_attn_fn = make_mat(L.hc_attn_fn, 1, p + "hc_attn_fn", tot);
  D.hc_ffn_fn = make_mat(L.hc_ffn_fn, 1, p + "hc_ffn_fn", tot);
  D.q_a = make_mat(L.q_a, 1, p + "attn_q_a", tot);
  D.q_b = make_mat(L.q_b, 1, p + "attn_q_b", tot);
  D.kv = make_mat(L.kv, 1, p + "attn_kv", tot);
  D.out_a = make_mat(L.out_a, hp.o_groups, p + "attn_output_a", tot);
  D.out_b = make_mat(L.out_b, 1, p + "attn_output_b", tot);
  D.comp_kv = make_mat(L.comp_kv, 1, p + "attn_compressor_kv", tot);
  D.comp_gate = make_mat(L.comp_gate, 1, p + "attn_compressor_gate", tot);
  D.idx_q_b = make_mat(L.idx_q_b, 1, p + "indexer.attn_q_b", tot);
  D.idx_proj = make_mat(L.idx_proj, 1, p + "indexer.proj", tot);
  D.idx_comp_kv = make_mat(L.idx_comp_kv, 1, p + "indexer_compressor_kv", tot);
  D.idx_comp_gate = make_mat(L.idx_comp_gate, 1, p + "indexer_compressor_gate", tot);
  D.router = make_mat(L.router, 1, p + "ffn_gate_inp", tot);
  D.gate_sh = make_mat(L.gate_sh, 1, p + "ffn_gate_shexp", tot);
  D.up_sh = make_mat(L.up_sh, 1, p + "ffn_up_shexp", tot);
  D.down_sh = make_mat(L.down_sh, 1, p + "ffn_down_shexp", tot);
  D.hc_attn_scale = vec(L.hc_attn_scale, p + "hc_attn_scale");
  D.hc_attn_base = vec(L.hc_attn_base, p + "hc_attn_base");
  D.hc_ffn_scale = vec(L.hc_ffn_scale, p + "hc_ffn_scale");
  D.hc_ffn_base = vec(L.hc_ffn_base, p + "hc_ffn_base");
  D.attn_norm = vec(L.attn_norm, p + "attn_norm");
  D.q_a_norm = vec(L.q_a_norm, p + "attn_q_a_norm");
  D.kv_norm = vec(L.kv_norm, p + "attn_kv_a_norm");
  D.sinks = vec(L.sinks, p + "attn_sinks");
  D.ffn_norm = vec(L.ffn_norm, p + "ffn_norm");
  D.comp_ape = vec(L.comp_ape, p + "attn_compressor_ape");
  D.comp_norm = vec(L.comp_norm, p + "attn_compressor_norm");
  D.idx_comp_ape = vec(L.idx_comp_ape, p + "indexer_compressor_ape");
  D.idx_comp_norm = vec(L.idx_comp_norm, p + "indexer_compressor_norm");
  upload_experts(L, p, &D, tot);
  D.eh_proj = make_mat(L.eh_proj, 1, p + "nextn.eh_proj", tot);
  D.mtp_hc_fn = make_mat(L.mtp_hc_fn, 1, p + "nextn.hc_head_fn", tot);
  D.enorm = vec(L.enorm, p + "nextn.enorm");
  D.hnorm = vec(L.hnorm, p + "nextn.hnorm");
  D.mtp_norm = vec(L.mtp_norm, p + "nextn.shared_head_norm");
  D.mtp_hc_base = vec(L.mtp_hc_base, p + "nextn.hc_head_base");
  return D;
}

std::shared_ptr<DeviceWeights> build_weights(const Model& model) {
  const HParams& hp = model.hparams();
  const ModelWeights& w = model.weights();
  auto dw = std::make_shared<DeviceWeights>();
  size_t& tot = dw->weight_bytes;
  for (uint32_t il = 0; il < hp.n_layer; ++il)
    dw->layers.push_back(build_layer(w.layers[il], hp, "blk." + std::to_string(il) + ".", &tot));
  for (uint32_t m = 0; m < w.mtp.size(); ++m)
    dw->mtp.push_back(build_layer(w.mtp[m], hp, "blk." + std::to_string(hp.n_layer + m) + ".", &tot));
  dw->output = make_mat(w.output, 1, "output", &tot);
  dw->output_hc_fn = make_mat(w.output_hc_fn, 1, "output_hc_fn", &tot);
  dw->output_hc_base = vec(w.output_hc_base, "output_hc_base");
  dw->output_norm = vec(w.output_norm, "output_norm");
  dw->iq2_grid = upload(quant_detail::kIq2xxsGrid, 256 * sizeof(uint64_t), "iq2xxs grid");
  const RopeParams rm = rope_params(hp.n_rot, hp.rope_base, 1.0f, hp.yarn_orig_ctx, hp.yarn_beta_fast,
                                    hp.yarn_beta_slow, false);
  const RopeParams rc = rope_params(hp.n_rot, hp.compress_rope_base, hp.yarn_factor, hp.yarn_orig_ctx,
                                    hp.yarn_beta_fast, hp.yarn_beta_slow, true);
  dw->inv_freq_main = upload_vec(rm.inv_freq, "rope inv_freq");
  dw->inv_freq_comp = upload_vec(rc.inv_freq, "rope inv_freq (compressed)");
  return dw;
}

}  // namespace

// One upload per Model: entries hold a weak_ptr to the model and are dropped (freeing the device
// weights once no session holds them) when the model is gone. The registry itself is never
// destroyed, so nothing is freed after the CUDA runtime has shut down at exit.
std::shared_ptr<DeviceWeights> device_weights_for(const std::shared_ptr<const Model>& model) {
  struct Entry {
    std::weak_ptr<const Model> model;
    const Model* key;
    std::shared_ptr<DeviceWeights> weights;
  };
  static std::mutex* mu = new std::mutex;
  static std::vector<Entry>* entries = new std::vector<Entry>;
  // The cache outlives the models of a process that exits with them alive (test fixtures, the
  // CLIs): release it at exit, before the CUDA runtime's own teardown, which registered its exit
  // handler at the first CUDA call, earlier than this one (handlers run in reverse order). Without
  // this every cached weight was a device-memory leak under compute-sanitizer --leak-check full.
  static const bool release_at_exit = [] {
    std::atexit([] {
      std::lock_guard<std::mutex> lock(*mu);
      entries->clear();
    });
    return true;
  }();
  (void)release_at_exit;
  std::lock_guard<std::mutex> lock(*mu);
  std::erase_if(*entries, [](const Entry& e) { return e.model.expired(); });
  for (const Entry& e : *entries)
    if (e.key == model.get()) return e.weights;
  auto dw = build_weights(*model);
  entries->push_back({model, model.get(), dw});
  return dw;
}

// ---- session ---------------------------------------------------------------------------------

Impl::Impl(std::shared_ptr<const Model> model, const SessionOptions& opt, TapSink** taps)
    : model_(std::move(model)), hp(model_->hparams()), w(model_->weights()), opt_(opt), taps_(taps) {
  if (opt_.profile == Profile::Plain) check_plain_types(w, hp.n_layer);
  if (hp.head_dim % 32 != 0 || hp.head_dim > 512)
    fail("--backend cuda: head_dim " + std::to_string(hp.head_dim) + " unsupported (multiple of 32, <= 512)");
  set_mem_limit(cuda_forward_mem_limit_bytes());
  dw_ = device_weights_for(model_);
  ring_rows_ = hp.window + chunk_;
  for (uint32_t il = 0; il < hp.n_layer; ++il)
    st_.push_back(make_state(hp.ratios[il], ring_rows_, "layer " + std::to_string(il) + " "));
  for (uint32_t m = 0; m < hp.n_mtp; ++m)
    mtp_st_.push_back(make_state(0, hp.window, "MTP block " + std::to_string(m) + " "));
  last_hc_ = DevMem(static_cast<size_t>(hp.n_hc) * hp.n_embd * 4, "last HC state");
  reset();
}

DLayerState Impl::make_state(uint32_t ratio, int64_t ring, const std::string& p) {
  const int64_t hd = hp.head_dim, ihd = hp.idx_head_dim;
  DLayerState S;
  S.ring = ring;
  S.comp_cap = ratio ? opt_.max_ctx / ratio + 1 : 0;
  S.pool = DevMem(static_cast<size_t>(ring + S.comp_cap) * hd * 4, p + "KV cache");
  if (ratio != 0) {
    S.comp.ratio = static_cast<int>(ratio);
    S.comp.head_dim = static_cast<int>(hd);
    const size_t b = static_cast<size_t>(S.comp.rows()) * S.comp.width() * 4;
    S.comp_kv = DevMem(b, p + "compressor state");
    S.comp_score = DevMem(b, p + "compressor state");
    S.comp.kv = S.comp_kv.f();
    S.comp.score = S.comp_score.f();
  }
  if (ratio == 4) {
    S.idx_cap = opt_.max_ctx / 4 + 1;
    S.idx_rows = DevMem(static_cast<size_t>(S.idx_cap) * ihd * 4, p + "indexer cache");
    S.idx_comp.ratio = 4;
    S.idx_comp.head_dim = static_cast<int>(ihd);
    const size_t b = static_cast<size_t>(S.idx_comp.rows()) * S.idx_comp.width() * 4;
    S.idx_kv = DevMem(b, p + "indexer compressor state");
    S.idx_score = DevMem(b, p + "indexer compressor state");
    S.idx_comp.kv = S.idx_kv.f();
    S.idx_comp.score = S.idx_score.f();
  }
  return S;
}

void Impl::reset() {
  for (DLayerState& S : st_) {
    cuda::memset_async(S.pool.get(), 0, S.pool.size());
    if (S.comp.ratio) cuda::compressor_state_init(S.comp);
    if (S.idx_comp.ratio) cuda::compressor_state_init(S.idx_comp);
    S.n_comp = S.n_idx = 0;
  }
  cuda::memset_async(last_hc_.get(), 0, last_hc_.size());
  for (DLayerState& S : mtp_st_) cuda::memset_async(S.pool.get(), 0, S.pool.size());
  mtp_pos_ = 0;
  pos_ = 0;
  cuda::synchronize("CUDA forward reset");
}

// The MTP draft (Session::Impl::mtp_draft in engine/forward/session.cpp, step for step): the
// embedding row of next_token (host lookup, uploaded), enorm; per HC stream i of the trunk's last
// HC state cat_i = [enorm(e); hnorm(H_i)] and X_i = eh_proj cat_i (the n_hc rows in one exact
// matmul call: per row bit-equal to n_hc single-row calls); the block's attention (its own raw
// window, position pos) and FFN (clamps of the last layer), then its head (mtp_hc_*, mtp_norm)
// with the trunk's output matrix. Taps under layer n_layer, as the CPU's.
std::vector<float> Impl::mtp_draft(int32_t next_token) {
  if (w.mtp.empty() || dw_->mtp.empty() || mtp_st_.empty()) fail("model has no MTP block (nextn_predict_layers = 0)");
  if (pos_ == 0) fail("mtp_draft needs at least one consumed token");
  if (next_token < 0 || next_token >= static_cast<int32_t>(hp.n_vocab))
    fail("token id " + std::to_string(next_token) + " out of range (vocab " + std::to_string(hp.n_vocab) + ")");
  const LayerWeights& M = w.mtp[0];
  const DLayer& D = dw_->mtp[0];
  const int64_t d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const int n_hc = static_cast<int>(hp.n_hc);
  std::vector<float> e(d);
  weight_row_f32(w.token_embd, next_token, e.data());
  float* en = buf("mtp_en", d);
  float* hn = buf("mtp_hn", hcd);
  float* cat = buf("mtp_cat", 2 * hcd);  // (n_hc, 2d)
  cuda::copy_h2d(en, e.data(), d * sizeof(float));
  cuda::rmsnorm_rows(en, D.enorm.f(), en, 1, d, hp.eps);
  cuda::rmsnorm_rows(last_hc_.f(), D.hnorm.f(), hn, n_hc, d, hp.eps);
  for (int i = 0; i < n_hc; ++i) {
    cuda::copy_d2d(cat + 2 * i * d, en, d * sizeof(float));
    cuda::copy_d2d(cat + (2 * i + 1) * d, hn + i * d, d * sizeof(float));
  }
  const int32_t tok[1] = {next_token};
  DRows R;
  R.n = 1;
  R.pos0 = pos_;  // the position of next_token
  R.tokens = std::span<const int32_t>(tok, 1);
  R.X = buf("X", hcd);
  R.X2 = buf("X2", hcd);
  int64_t* dpos = lbuf("pos", 1);
  cuda::copy_h2d(dpos, &pos_, sizeof(int64_t));
  R.pos = dpos;
  linear_exact(D.eh_proj, cat, n_hc, R.X);
  const int tap_layer = static_cast<int>(hp.n_layer);
  attention_layer(tap_layer, M, D, mtp_st_[0], R);
  ffn_layer(tap_layer, M, D, R, hp.clamp_exp.back(), hp.clamp_shexp.back());
  std::vector<float> logits(hp.n_vocab);
  DHead head;
  head.hc_fn = &D.mtp_hc_fn;
  head.hc_scale = M.mtp_hc_scale.at(0);
  head.hc_base = D.mtp_hc_base.f();
  head.norm = D.mtp_norm.f();
  head.tap_layer = tap_layer;
  output_head(R, head, logits.data());
  cuda::synchronize("CUDA MTP draft");
  mtp_pos_ = R.pos0 + 1;
  return logits;
}

void* Impl::raw(const std::string& name, size_t bytes) {
  DevMem& m = scratch_[name];
  if (m.size() < bytes) {
    m = DevMem();
    m = DevMem(std::max<size_t>(bytes, 256), "scratch '" + name + "'");
  }
  return m.get();
}

// ---- matmul dispatch -------------------------------------------------------------------------

const char* Impl::linear_exact(const DMat& w, const float* x, int64_t n, float* y) {
  CudaMatmulVariant v;
  if (w.type == CudaWeightType::q8_0)
    v = n == 1 ? CudaMatmulVariant::q8_decode : n >= 32 ? CudaMatmulVariant::q8_batch_imma : CudaMatmulVariant::q8_batch;
  else if (w.type == CudaWeightType::f16)
    v = n == 1 ? CudaMatmulVariant::f16_decode : CudaMatmulVariant::f16_batch;
  else
    v = n == 1 ? CudaMatmulVariant::f32_decode : CudaMatmulVariant::f32_batch;
  cuda_matmul(mm_, *w.m, x, n, y, v);
  return cuda_matmul_variant_name(v);
}

const char* Impl::linear_gemm(const DMat& w, const float* x, int64_t n, float* y) {
  const CudaMatmulVariant v = w.type == CudaWeightType::q8_0  ? CudaMatmulVariant::q8_gemm_f16
                              : w.type == CudaWeightType::f16 ? CudaMatmulVariant::f16_gemm
                                                              : CudaMatmulVariant::f32_gemm;
  cuda_matmul(mm_, *w.m, x, n, y, v);
  return cuda_matmul_variant_name(v);
}

const char* Impl::linear(const DMat& w, const float* x, int64_t n, float* y, Gate q8_gate) {
  if (n >= 2) {
    if (w.type == CudaWeightType::q8_0 && fast(q8_gate, n)) {
      if (q8_gate == Gate::output_head_preq) {
        cuda_matmul(mm_, *w.m, x, n, y, CudaMatmulVariant::q8_preq_tree);
        return cuda_matmul_variant_name(CudaMatmulVariant::q8_preq_tree);
      }
      return linear_gemm(w, x, n, y);
    }
    if (w.type == CudaWeightType::f16 && fast(Gate::f16_gemm, n)) return linear_gemm(w, x, n, y);
    if (w.type == CudaWeightType::f32 && fast(Gate::f32_gemm, n)) return linear_gemm(w, x, n, y);
  }
  return linear_exact(w, x, n, y);
}

// ---- taps ------------------------------------------------------------------------------------

void Impl::tap_host(int layer, const char* name, int64_t pos, float* data, size_t n, const char* variant) {
  if (!*taps_ && !opt_.fault.enabled) return;
  const FaultInjection& f = opt_.fault;
  if (f.enabled && layer == f.layer && pos == f.pos && f.tap == name) {
    if (f.element < 0 || static_cast<size_t>(f.element) >= n)
      fail("fault injection: element " + std::to_string(f.element) + " out of range for tap '" + f.tap + "' (" +
           std::to_string(n) + " elements)");
    data[f.element] = std::nextafter(data[f.element], INFINITY);
  }
  if (*taps_) (*taps_)->tap(layer, name, pos, data, n, variant);
}

void Impl::tap_dev(int layer, const char* name, int64_t pos0, int64_t n_rows, float* d, size_t width,
                   const char* variant, const std::vector<const char*>* row_variants) {
  if (!*taps_ && !opt_.fault.enabled) return;
  const FaultInjection& f = opt_.fault;
  const bool hit = f.enabled && layer == f.layer && f.tap == name && f.pos >= pos0 && f.pos < pos0 + n_rows;
  if (!*taps_ && !hit) return;
  std::vector<float> h(static_cast<size_t>(n_rows) * width);
  cuda::copy_d2h(h.data(), d, h.size() * sizeof(float));
  for (int64_t r = 0; r < n_rows; ++r)
    tap_host(layer, name, pos0 + r, &h[r * width], width, row_variants ? (*row_variants)[r] : variant);
  if (hit) {
    const int64_t r = f.pos - pos0;
    cuda::copy_h2d(d + r * width, &h[r * width], width * sizeof(float));
  }
}

// ---- forward ---------------------------------------------------------------------------------

std::vector<float> Impl::forward(std::span<const int32_t> tokens) {
  const int64_t N = static_cast<int64_t>(tokens.size());
  if (N == 0) return {};
  if (pos_ + N > opt_.max_ctx)
    fail("context full: position " + std::to_string(pos_ + N) + " exceeds max_ctx " + std::to_string(opt_.max_ctx));
  for (int32_t t : tokens)
    if (t < 0 || t >= static_cast<int32_t>(hp.n_vocab))
      fail("token id " + std::to_string(t) + " out of range (vocab " + std::to_string(hp.n_vocab) + ")");
  if (*taps_) (*taps_)->begin_forward(pos_, N);
  const int64_t d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  // Embedding rows (host lookup of the mmap'd table), every HC stream starts as the embedding.
  std::vector<float> X(N * hcd);
  for (int64_t r = 0; r < N; ++r) {
    weight_row_f32(w.token_embd, tokens[r], &X[r * hcd]);
    for (uint32_t i = 1; i < hp.n_hc; ++i) std::memcpy(&X[r * hcd + i * d], &X[r * hcd], d * sizeof(float));
  }
  std::vector<int64_t> pos(N);
  for (int64_t r = 0; r < N; ++r) pos[r] = pos_ + r;
  DRows R;
  R.n = N;
  R.pos0 = pos_;
  R.tokens = tokens;
  R.X = buf("X", N * hcd);
  R.X2 = buf("X2", N * hcd);
  int64_t* dpos = lbuf("pos", N);
  cuda::copy_h2d(R.X, X.data(), X.size() * sizeof(float));
  cuda::copy_h2d(dpos, pos.data(), N * sizeof(int64_t));
  R.pos = dpos;
  for (uint32_t il = 0; il < hp.n_layer; ++il) {
    attention_layer(static_cast<int>(il), w.layers[il], dw_->layers[il], st_[il], R);
    ffn_layer(static_cast<int>(il), w.layers[il], dw_->layers[il], R, hp.clamp_exp[il], hp.clamp_shexp[il]);
  }
  std::vector<float> logits(N * hp.n_vocab);
  DHead head;
  head.hc_fn = &dw_->output_hc_fn;
  head.hc_scale = w.output_hc_scale.at(0);
  head.hc_base = dw_->output_hc_base.f();
  head.norm = dw_->output_norm.f();
  output_head(R, head, logits.data());
  cuda::copy_d2d(last_hc_.get(), R.X + (N - 1) * hcd, hcd * sizeof(float));
  cuda::synchronize("CUDA forward");
  pos_ += N;
  return logits;
}

// ---- state in the CPU layout -----------------------------------------------------------------

std::shared_ptr<const SessionState> Impl::snapshot() const {
  cuda::synchronize("CUDA forward snapshot");
  auto s = std::make_shared<SessionState>();
  s->pos = pos_;
  s->mtp_pos = mtp_pos_;
  for (const DLayerState& S : mtp_st_) {  // ring = window: the CPU's raw layout as is
    LayerState L;
    L.raw.resize(static_cast<size_t>(hp.window) * hp.head_dim);
    cuda::copy_d2h(L.raw.data(), S.pool.get(), L.raw.size() * sizeof(float));
    s->mtp.push_back(std::move(L));
  }
  const int64_t hd = hp.head_dim, W = hp.window;
  for (uint32_t il = 0; il < hp.n_layer; ++il) {
    const DLayerState& S = st_[il];
    LayerState L;
    L.raw.assign(static_cast<size_t>(W) * hd, 0.0f);
    // CPU slot s holds the latest position t < pos with t mod window == s (zeros if none).
    for (int64_t t = std::max<int64_t>(0, pos_ - W); t < pos_; ++t)
      cuda::copy_d2h(&L.raw[(t % W) * hd], S.pool.f() + (t % S.ring) * hd, hd * sizeof(float));
    auto get_comp = [&](const cuda::CompressorDeviceState& c, CompressorState& C) {
      C.init(c.ratio, c.head_dim);
      cuda::copy_d2h(C.kv.data(), c.kv, C.kv.size() * sizeof(float));
      cuda::copy_d2h(C.score.data(), c.score, C.score.size() * sizeof(float));
    };
    if (S.comp.ratio) {
      get_comp(S.comp, L.comp);
      L.comp_rows.resize(S.n_comp * hd);
      cuda::copy_d2h(L.comp_rows.data(), S.pool.f() + S.ring * hd, L.comp_rows.size() * sizeof(float));
    }
    if (S.idx_comp.ratio) {
      get_comp(S.idx_comp, L.idx_comp);
      L.idx_rows.resize(S.n_idx * hp.idx_head_dim);
      cuda::copy_d2h(L.idx_rows.data(), S.idx_rows.f(), L.idx_rows.size() * sizeof(float));
    }
    s->layers.push_back(std::move(L));
  }
  s->last_hc.resize(static_cast<size_t>(hp.n_hc) * hp.n_embd);
  cuda::copy_d2h(s->last_hc.data(), last_hc_.get(), s->last_hc.size() * sizeof(float));
  return s;
}

void Impl::restore(const SessionState& s) {
  const int64_t hd = hp.head_dim, W = hp.window, ihd = hp.idx_head_dim;
  if (s.layers.size() != st_.size() || s.mtp.size() != mtp_st_.size() || s.last_hc.size() != static_cast<size_t>(hp.n_hc) * hp.n_embd || s.pos < 0 ||
      s.pos > opt_.max_ctx)
    fail("CUDA session restore: the state does not belong to this model/session (layers, MTP blocks, HC width or "
         "position)");
  for (const LayerState& L : s.mtp)
    if (L.raw.size() != static_cast<size_t>(W) * hd) fail("CUDA session restore: bad MTP raw window size");
  for (uint32_t il = 0; il < hp.n_layer; ++il) {
    const LayerState& L = s.layers[il];
    DLayerState& S = st_[il];
    if (L.raw.size() != static_cast<size_t>(W) * hd) fail("CUDA session restore: bad raw window size");
    cuda::memset_async(S.pool.get(), 0, static_cast<size_t>(S.ring) * hd * 4);
    for (int64_t t = std::max<int64_t>(0, s.pos - W); t < s.pos; ++t)
      cuda::copy_h2d(S.pool.f() + (t % S.ring) * hd, &L.raw[(t % W) * hd], hd * sizeof(float));
    auto put_comp = [&](cuda::CompressorDeviceState& c, const CompressorState& C) {
      if (C.ratio != c.ratio || C.kv.size() != static_cast<size_t>(c.rows()) * c.width() || C.score.size() != C.kv.size())
        fail("CUDA session restore: compressor state shape mismatch in layer " + std::to_string(il));
      cuda::copy_h2d(c.kv, C.kv.data(), C.kv.size() * sizeof(float));
      cuda::copy_h2d(c.score, C.score.data(), C.score.size() * sizeof(float));
    };
    if (S.comp.ratio) {
      put_comp(S.comp, L.comp);
      S.n_comp = static_cast<int64_t>(L.comp_rows.size()) / hd;
      if (S.n_comp > S.comp_cap) fail("CUDA session restore: more compressed rows than max_ctx allows");
      cuda::copy_h2d(S.pool.f() + S.ring * hd, L.comp_rows.data(), L.comp_rows.size() * sizeof(float));
    }
    if (S.idx_comp.ratio) {
      put_comp(S.idx_comp, L.idx_comp);
      S.n_idx = static_cast<int64_t>(L.idx_rows.size()) / ihd;
      if (S.n_idx > S.idx_cap) fail("CUDA session restore: more indexer rows than max_ctx allows");
      cuda::copy_h2d(S.idx_rows.f(), L.idx_rows.data(), L.idx_rows.size() * sizeof(float));
    }
  }
  cuda::copy_h2d(last_hc_.get(), s.last_hc.data(), s.last_hc.size() * sizeof(float));
  for (size_t m = 0; m < mtp_st_.size(); ++m)
    cuda::copy_h2d(mtp_st_[m].pool.get(), s.mtp[m].raw.data(), s.mtp[m].raw.size() * sizeof(float));
  mtp_pos_ = s.mtp_pos;
  pos_ = s.pos;
}

}  // namespace cudafwd

std::unique_ptr<CudaSession> CudaSession::create(std::shared_ptr<const Model> model, const SessionOptions& opt,
                                                 TapSink** taps) {
  const CudaDeviceInfo info = cuda_device_info();
  if (!info.available) fail("--backend cuda: CUDA unavailable: " + info.why_unavailable);
  return std::make_unique<cudafwd::Impl>(std::move(model), opt, taps);
}

}  // namespace ds4
