// The CUDA backend: device memory, the per-Model device weights, the device caches (reset, and
// save/load in the CPU layout of SessionState) and the matmul kernels. The other ops are in
// forward_cuda_attn.cpp and forward_cuda_ffn.cpp; forward_cuda.h has the design.
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

// Records the device copy of each of L's host weights (by the host object's address, the name the
// graph uses). Called once every DLayer is in its final place.
void register_layer(const LayerWeights& L, const DLayer& D, DeviceWeights* dw) {
  static const std::pair<WeightRef LayerWeights::*, DMat DLayer::*> kMats[] = {
      {&LayerWeights::hc_attn_fn, &DLayer::hc_attn_fn}, {&LayerWeights::hc_ffn_fn, &DLayer::hc_ffn_fn},
      {&LayerWeights::q_a, &DLayer::q_a}, {&LayerWeights::q_b, &DLayer::q_b}, {&LayerWeights::kv, &DLayer::kv},
      {&LayerWeights::out_a, &DLayer::out_a}, {&LayerWeights::out_b, &DLayer::out_b},
      {&LayerWeights::comp_kv, &DLayer::comp_kv}, {&LayerWeights::comp_gate, &DLayer::comp_gate},
      {&LayerWeights::idx_q_b, &DLayer::idx_q_b}, {&LayerWeights::idx_proj, &DLayer::idx_proj},
      {&LayerWeights::idx_comp_kv, &DLayer::idx_comp_kv}, {&LayerWeights::idx_comp_gate, &DLayer::idx_comp_gate},
      {&LayerWeights::router, &DLayer::router}, {&LayerWeights::gate_sh, &DLayer::gate_sh},
      {&LayerWeights::up_sh, &DLayer::up_sh}, {&LayerWeights::down_sh, &DLayer::down_sh},
      {&LayerWeights::eh_proj, &DLayer::eh_proj}, {&LayerWeights::mtp_hc_fn, &DLayer::mtp_hc_fn}};
  static const std::pair<Vec LayerWeights::*, DevMem DLayer::*> kVecs[] = {
      {&LayerWeights::hc_attn_scale, &DLayer::hc_attn_scale}, {&LayerWeights::hc_attn_base, &DLayer::hc_attn_base},
      {&LayerWeights::hc_ffn_scale, &DLayer::hc_ffn_scale}, {&LayerWeights::hc_ffn_base, &DLayer::hc_ffn_base},
      {&LayerWeights::attn_norm, &DLayer::attn_norm}, {&LayerWeights::q_a_norm, &DLayer::q_a_norm},
      {&LayerWeights::kv_norm, &DLayer::kv_norm}, {&LayerWeights::sinks, &DLayer::sinks},
      {&LayerWeights::ffn_norm, &DLayer::ffn_norm}, {&LayerWeights::comp_ape, &DLayer::comp_ape},
      {&LayerWeights::comp_norm, &DLayer::comp_norm}, {&LayerWeights::idx_comp_ape, &DLayer::idx_comp_ape},
      {&LayerWeights::idx_comp_norm, &DLayer::idx_comp_norm}, {&LayerWeights::enorm, &DLayer::enorm},
      {&LayerWeights::hnorm, &DLayer::hnorm}, {&LayerWeights::mtp_norm, &DLayer::mtp_norm},
      {&LayerWeights::mtp_hc_base, &DLayer::mtp_hc_base}};
  for (const auto& [host, dev] : kMats)
    if (D.*dev) dw->mats[&(L.*host)] = &(D.*dev);
  for (const auto& [host, dev] : kVecs)
    if ((D.*dev).get()) dw->vecs[&(L.*host)] = &(D.*dev);
  dw->blocks[&L] = &D;
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
  for (uint32_t il = 0; il < hp.n_layer; ++il) register_layer(w.layers[il], dw->layers[il], dw.get());
  for (uint32_t m = 0; m < w.mtp.size(); ++m) register_layer(w.mtp[m], dw->mtp[m], dw.get());
  dw->output = make_mat(w.output, 1, "output", &tot);
  dw->output_hc_fn = make_mat(w.output_hc_fn, 1, "output_hc_fn", &tot);
  dw->output_hc_base = vec(w.output_hc_base, "output_hc_base");
  dw->output_norm = vec(w.output_norm, "output_norm");
  dw->mats[&w.output] = &dw->output;
  dw->mats[&w.output_hc_fn] = &dw->output_hc_fn;
  dw->vecs[&w.output_hc_base] = &dw->output_hc_base;
  dw->vecs[&w.output_norm] = &dw->output_norm;
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

// ---- backend --------------------------------------------------------------------------------

CudaOps::CudaOps(std::shared_ptr<const Model> model, const SessionOptions& opt)
    : model_(std::move(model)), hp(model_->hparams()), w(model_->weights()), opt_(opt) {
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
}

DLayerState CudaOps::make_state(uint32_t ratio, int64_t ring, const std::string& p) {
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

void CudaOps::reset_state() {
  for (DLayerState& S : st_) {
    cuda::memset_async(S.pool.get(), 0, S.pool.size());
    if (S.comp.ratio) cuda::compressor_state_init(S.comp);
    if (S.idx_comp.ratio) cuda::compressor_state_init(S.idx_comp);
    S.n_comp = S.n_idx = 0;
  }
  cuda::memset_async(last_hc_.get(), 0, last_hc_.size());
  for (DLayerState& S : mtp_st_) cuda::memset_async(S.pool.get(), 0, S.pool.size());
  cuda::synchronize("CUDA forward reset");
}

void* CudaOps::scratch(const char* name, size_t bytes) {
  DevMem& m = scratch_[name];
  if (m.size() < bytes) {
    m = DevMem();
    m = DevMem(std::max<size_t>(bytes, 256), "scratch '" + std::string(name) + "'");
  }
  return m.get();
}
void CudaOps::upload(void* dst, const void* host, size_t bytes) { cuda::copy_h2d(dst, host, bytes); }
void CudaOps::download(void* host, const void* src, size_t bytes) { cuda::copy_d2h(host, src, bytes); }
void CudaOps::copy(void* dst, const void* src, size_t bytes) { cuda::copy_d2d(dst, src, bytes); }
void CudaOps::finish(const char* what) { cuda::synchronize(("CUDA " + std::string(what)).c_str()); }

// ---- matmul dispatch -------------------------------------------------------------------------

const char* CudaOps::linear_exact(const DMat& w, const float* x, int64_t n, float* y) {
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

const char* CudaOps::linear_gemm(const DMat& w, const float* x, int64_t n, float* y) {
  const CudaMatmulVariant v = w.type == CudaWeightType::q8_0  ? CudaMatmulVariant::q8_gemm_f16
                              : w.type == CudaWeightType::f16 ? CudaMatmulVariant::f16_gemm
                                                              : CudaMatmulVariant::f32_gemm;
  cuda_matmul(mm_, *w.m, x, n, y, v);
  return cuda_matmul_variant_name(v);
}

const DMat& CudaOps::dmat(const WeightRef& r) const {
  const auto it = dw_->mats.find(&r);
  if (it == dw_->mats.end()) fail("CUDA forward: a weight matrix of the graph has no device copy");
  return *it->second;
}
const DevMem& CudaOps::dvec(const Vec& v) const {
  const auto it = dw_->vecs.find(&v);
  if (it == dw_->vecs.end()) fail("CUDA forward: a weight vector of the graph has no device copy");
  return *it->second;
}

const char* CudaOps::matmul(const WeightRef& r, const float* x, int64_t n, float* y, MatmulKind kind) {
  const DMat& m = dmat(r);
  switch (kind) {
    case MatmulKind::gemm: return linear_gemm(m, x, n, y);
    case MatmulKind::preq_tree:
      cuda_matmul(mm_, *m.m, x, n, y, CudaMatmulVariant::q8_preq_tree);
      return cuda_matmul_variant_name(CudaMatmulVariant::q8_preq_tree);
    case MatmulKind::exact: break;
  }
  return linear_exact(m, x, n, y);
}

// out_a is one CudaMatrix of o_groups groups (make_mat): the kernels run the groups themselves.
const char* CudaOps::matmul_grouped(const WeightRef& r, int, const float* x, int64_t n, float* y, MatmulKind kind) {
  return matmul(r, x, n, y, kind);
}

// ---- state in the CPU layout -----------------------------------------------------------------

void CudaOps::save_state(int64_t pos, SessionState* s) {
  cuda::synchronize("CUDA forward snapshot");
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
    for (int64_t t = std::max<int64_t>(0, pos - W); t < pos; ++t)
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
}

void CudaOps::load_state(const SessionState& s) {
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
}

}  // namespace cudafwd

std::unique_ptr<BackendOps> make_cuda_ops(std::shared_ptr<const Model> model, const SessionOptions& opt) {
  const CudaDeviceInfo info = cuda_device_info();
  if (!info.available) fail("--backend cuda: CUDA unavailable: " + info.why_unavailable);
  return std::make_unique<cudafwd::CudaOps>(std::move(model), opt);
}

}  // namespace ds4
