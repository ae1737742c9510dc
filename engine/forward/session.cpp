// The DS4 forward pass on the CPU backend (ds4-model.md §4, summary in §11).
//
// forward(tokens) is layer-major: all N rows go through layer 0, then layer 1, ... Inside a
// layer, row-independent projections are batched across rows (attention_layer.cpp,
// ffn_layer.cpp) and everything touching the caches runs row by row in position order. With every
// gate exact each row is computed by the same functions, on the same inputs, as decode(): the
// batched forward is bit-equal to N decodes by construction (tests/unit/forward_test.cpp checks
// logits, every tap and the final state). decode(t) is forward({t}): N = 1 never takes a gate.
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "backend/cuda/forward_cuda.h"
#include "ds4/error.h"
#include "forward/forward_impl.h"
#include "ops/matmul/linear.h"
#include "ops/norm/rmsnorm.h"

namespace ds4 {

Session::Impl::Impl(const Model& model, const SessionOptions& o, TapSink** taps_)
    : hp(model.hparams()),
      w(model.weights()),
      opt(o),
      pool(o.n_threads > 0 ? o.n_threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))),
      cache(o.dequant_cache_bytes > 0 ? o.dequant_cache_bytes : cpu_dequant_cache_budget_bytes()),
      taps(taps_) {
  rope_main = rope_params(hp.n_rot, hp.rope_base, 1.0f, hp.yarn_orig_ctx, hp.yarn_beta_fast, hp.yarn_beta_slow, false);
  rope_comp = rope_params(hp.n_rot, hp.compress_rope_base, hp.yarn_factor, hp.yarn_orig_ctx, hp.yarn_beta_fast,
                          hp.yarn_beta_slow, true);
  reset();
}

void Session::Impl::reset() {
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

static void check_token(int32_t t, uint32_t n_vocab) {
  if (t < 0 || t >= static_cast<int32_t>(n_vocab))
    fail("token id " + std::to_string(t) + " out of range (vocab " + std::to_string(n_vocab) + ")");
}

std::vector<float> Session::Impl::forward(std::span<const int32_t> tokens) {
  const int64_t N = static_cast<int64_t>(tokens.size());
  if (N == 0) return {};
  if (st.pos + N > opt.max_ctx)
    fail("context full: position " + std::to_string(st.pos + N) + " exceeds max_ctx " + std::to_string(opt.max_ctx));
  for (int32_t t : tokens) check_token(t, hp.n_vocab);
  if (*taps) (*taps)->begin_forward(st.pos, N);
  const int64_t d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  Rows R;
  R.n = N;
  R.pos0 = st.pos;
  R.tokens = tokens;
  R.X.resize(N * hcd);
  for (int64_t r = 0; r < N; ++r) {  // HC state: every stream starts as the embedding
    weight_row_f32(w.token_embd, tokens[r], &R.X[r * hcd]);
    for (uint32_t i = 1; i < hp.n_hc; ++i) std::memcpy(&R.X[r * hcd + i * d], &R.X[r * hcd], d * sizeof(float));
  }
  for (uint32_t il = 0; il < hp.n_layer; ++il) {
    attention_layer(static_cast<int>(il), w.layers[il], st.layers[il], R);
    ffn_layer(static_cast<int>(il), w.layers[il], R, hp.clamp_exp[il], hp.clamp_shexp[il]);
  }
  std::vector<float> logits(N * hp.n_vocab);
  output_head(R, w.output_hc_fn, w.output_hc_scale, w.output_hc_base, w.output_norm, -1, logits.data());
  std::memcpy(st.last_hc.data(), &R.X[(N - 1) * hcd], hcd * sizeof(float));
  st.pos += N;
  return logits;
}

std::vector<float> Session::Impl::mtp_draft(int32_t next_token) {
  if (w.mtp.empty()) fail("model has no MTP block (nextn_predict_layers = 0)");
  if (st.pos == 0) fail("mtp_draft needs at least one consumed token");
  check_token(next_token, hp.n_vocab);
  const LayerWeights& M = w.mtp[0];
  const int64_t d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  std::vector<float> e(d), en(d), cat(2 * d), ep, hn, hp_i;
  weight_row_f32(w.token_embd, next_token, e.data());
  rmsnorm_ref(e.data(), M.enorm.data(), en.data(), d, hp.eps);
  const int32_t tok[1] = {next_token};
  Rows R;
  R.n = 1;
  R.pos0 = st.pos;  // the position of next_token
  R.tokens = std::span<const int32_t>(tok, 1);
  R.X.resize(hcd);
  if (M.eh_proj) {
    // X_i = eh_proj [enorm(e); hnorm(H_i)] for each stream of the trunk's last HC state.
    for (uint32_t i = 0; i < hp.n_hc; ++i) {
      std::memcpy(cat.data(), en.data(), d * sizeof(float));
      rmsnorm_ref(&st.last_hc[i * d], M.hnorm.data(), cat.data() + d, d, hp.eps);
      matvec_ref(M.eh_proj, cat.data(), &R.X[i * d], opt.profile, &pool);
    }
  } else {
    // Published sidecar: X_i = e_proj enorm(e) + h_proj hnorm(H_i), as ds4.c computes it (two
    // products, then one F32 add per element). Same maths, other summation order than eh_proj.
    ep.resize(d);
    hn.resize(d);
    hp_i.resize(d);
    matvec_ref(M.e_proj, en.data(), ep.data(), opt.profile, &pool);
    for (uint32_t i = 0; i < hp.n_hc; ++i) {
      rmsnorm_ref(&st.last_hc[i * d], M.hnorm.data(), hn.data(), d, hp.eps);
      matvec_ref(M.h_proj, hn.data(), hp_i.data(), opt.profile, &pool);
      for (int64_t j = 0; j < d; ++j) R.X[i * d + j] = ep[j] + hp_i[j];
    }
  }
  const int tap_layer = static_cast<int>(hp.n_layer);
  attention_layer(tap_layer, M, st.mtp[0], R);
  ffn_layer(tap_layer, M, R, hp.clamp_exp.back(), hp.clamp_shexp.back());
  std::vector<float> logits(hp.n_vocab);
  output_head(R, M.mtp_hc_fn, M.mtp_hc_scale, M.mtp_hc_base, M.mtp_norm, tap_layer, logits.data());
  st.mtp_pos = R.pos0 + 1;
  return logits;
}

void Session::Impl::inject_fault(int layer, const char* name, int64_t pos, float* data, size_t n) {
  const FaultInjection& f = opt.fault;
  if (layer != f.layer || pos != f.pos || f.tap != name) return;
  if (f.element < 0 || static_cast<size_t>(f.element) >= n)
    fail("fault injection: element " + std::to_string(f.element) + " out of range for tap '" + f.tap + "' (" +
         std::to_string(n) + " elements)");
  data[f.element] = std::nextafter(data[f.element], INFINITY);
}

FaultInjection FaultInjection::parse(const std::string& spec) {
  FaultInjection f;
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const size_t c = spec.find(':', start);
    parts.push_back(spec.substr(start, c == std::string::npos ? std::string::npos : c - start));
    if (c == std::string::npos) break;
    start = c + 1;
  }
  if (parts.size() < 3 || parts.size() > 4 || parts[1].empty())
    fail("bad fault spec '" + spec + "': expected layer:tap:pos[:element]");
  auto num = [&](const std::string& v, const char* what) {
    char* end = nullptr;
    errno = 0;  // hardening: strtoll saturates on overflow; refuse it instead of clamping
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end || errno == ERANGE)
      fail("bad fault spec '" + spec + "': " + what + " '" + v + "' is not an integer");
    return static_cast<int64_t>(x);
  };
  f.enabled = true;
  // hardening: a layer outside int range used to wrap silently (4294967296 became layer 0).
  const int64_t layer = num(parts[0], "layer");
  if (layer < INT_MIN || layer > INT_MAX)
    fail("bad fault spec '" + spec + "': layer '" + parts[0] + "' is out of range");
  f.layer = static_cast<int>(layer);
  f.tap = parts[1];
  f.pos = num(parts[2], "position");
  f.element = parts.size() == 4 ? num(parts[3], "element") : 0;
  if (f.pos < 0 || f.element < 0) fail("bad fault spec '" + spec + "': negative position or element");
  return f;
}

std::string FaultInjection::to_string() const {
  if (!enabled) return "off";
  return std::to_string(layer) + ":" + tap + ":" + std::to_string(pos) + ":" + std::to_string(element);
}

// ---------------------------------------------------------------------------------------------

const char* backend_name(Backend b) { return b == Backend::Cuda ? "cuda" : "cpu"; }
Backend backend_from_name(const std::string& name) {
  if (name == "cpu") return Backend::Cpu;
  if (name == "cuda") return Backend::Cuda;
  fail("unknown backend '" + name + "' (known: cpu, cuda)");
}

// Dispatch: Backend::Cpu runs Impl above, Backend::Cuda the CudaSession (backend/cuda/forward_cuda.h).
Session::Session(std::shared_ptr<const Model> model, SessionOptions options)
    : model_(std::move(model)), options_(options) {
  if (!model_) fail("Session: no model");
  if (options_.max_ctx <= 0) fail("Session: max_ctx must be positive");
  if (options_.backend == Backend::Cuda && !model_->mtp_path().empty())
    fail("--backend cuda: the MTP block of a sidecar (" + model_->mtp_path() +
         ") runs on the CPU only for now (the CUDA forward has no e_proj/h_proj head)");
  if (options_.backend == Backend::Cuda)
    cuda_ = CudaSession::create(model_, options_, &taps_);
  else
    impl_ = std::make_unique<Impl>(*model_, options_, &taps_);
}

Session::~Session() = default;

std::vector<float> Session::decode(int32_t token) {
  const int32_t t[1] = {token};
  return forward(std::span<const int32_t>(t, 1));
}

std::vector<float> Session::forward(std::span<const int32_t> tokens) {
  return cuda_ ? cuda_->forward(tokens) : impl_->forward(tokens);
}
int64_t Session::pos() const { return cuda_ ? cuda_->pos() : impl_->st.pos; }
std::shared_ptr<const SessionState> Session::snapshot() const {
  return cuda_ ? cuda_->snapshot() : std::make_shared<const SessionState>(impl_->st);
}
void Session::restore(const SessionState& state) {
  if (cuda_) cuda_->restore(state);
  else impl_->st = state;
}
void Session::reset() {
  if (cuda_) cuda_->reset();
  else impl_->reset();
}
std::vector<float> Session::mtp_draft(int32_t next_token) {
  return cuda_ ? cuda_->mtp_draft(next_token) : impl_->mtp_draft(next_token);
}
void Session::set_gates(const GateSet& gates) {
  if (cuda_) cuda_->set_gates(gates);
  else impl_->opt.gates = gates;
  options_.gates = gates;
}

static bool bytes_equal(const std::vector<float>& a, const std::vector<float>& b) {
  // hardening (UBSan, scripts/test-asan): an empty vector's data() may be null, and memcmp with a
  // null pointer is undefined even for 0 bytes.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

static bool layer_equal(const LayerState& a, const LayerState& b) {
  return bytes_equal(a.raw, b.raw) && bytes_equal(a.comp.kv, b.comp.kv) && bytes_equal(a.comp.score, b.comp.score) &&
         bytes_equal(a.comp_rows, b.comp_rows) && bytes_equal(a.idx_comp.kv, b.idx_comp.kv) &&
         bytes_equal(a.idx_comp.score, b.idx_comp.score) && bytes_equal(a.idx_rows, b.idx_rows);
}

bool Session::states_equal(const SessionState& a, const SessionState& b) {
  if (a.pos != b.pos || a.mtp_pos != b.mtp_pos || a.layers.size() != b.layers.size() || a.mtp.size() != b.mtp.size() ||
      !bytes_equal(a.last_hc, b.last_hc))
    return false;
  for (size_t i = 0; i < a.layers.size(); ++i)
    if (!layer_equal(a.layers[i], b.layers[i])) return false;
  for (size_t i = 0; i < a.mtp.size(); ++i)
    if (!layer_equal(a.mtp[i], b.mtp[i])) return false;
  return true;
}

}  // namespace ds4
