// The DS4 forward graph (ds4-model.md §4, summary in §11), one for every backend: the CPU
// (backend/cpu/cpu_ops.cpp) and CUDA (backend/cuda/forward_cuda*.cpp) run it through BackendOps.
//
// forward(tokens) is layer-major: all N rows go through layer 0, then layer 1, ... Inside a
// layer, row-independent projections are batched across rows (attention_layer.cpp,
// ffn_layer.cpp); the cache part runs over chunks of rows (BackendOps::chunk_rows: one row on the
// CPU) in position order, every row seeing exactly the state its N = 1 decode sees. With every
// gate exact each row is computed by the same kernels, on the same inputs, as decode(): the
// batched forward is bit-equal to N decodes by construction (tests/unit/forward_test.cpp checks
// logits, every tap and the final state; cuda_forward_test the same on a GPU). decode(t) is
// forward({t}): N = 1 never takes a gate.
#include <cmath>
#include <cstring>

#include "ds4/error.h"
#include "forward/forward_impl.h"

namespace ds4 {

Session::Impl::Impl(const Model& model, const SessionOptions& o, TapSink** taps_, std::unique_ptr<BackendOps> ops_)
    : hp(model.hparams()), w(model.weights()), opt(o), taps(taps_), ops(std::move(ops_)) {
  reset();
}

void Session::Impl::reset() {
  ops->reset_state();
  pos = 0;
  mtp_pos = 0;
}

void Session::Impl::check_token(int32_t t) const {
  if (t < 0 || t >= static_cast<int32_t>(hp.n_vocab))
    fail("token id " + std::to_string(t) + " out of range (vocab " + std::to_string(hp.n_vocab) + ")");
}

Rows Session::Impl::make_rows(std::span<const int32_t> tokens, int64_t pos0) {
  const int64_t N = static_cast<int64_t>(tokens.size()), hcd = static_cast<int64_t>(hp.n_hc) * hp.n_embd;
  Rows R;
  R.n = N;
  R.pos0 = pos0;
  R.tokens = tokens;
  R.pos.resize(N);
  for (int64_t r = 0; r < N; ++r) R.pos[r] = pos0 + r;
  R.X = ops->fbuf("X", N * hcd);
  R.X2 = ops->fbuf("X2", N * hcd);
  return R;
}

std::vector<float> Session::Impl::forward(std::span<const int32_t> tokens) {
  const int64_t N = static_cast<int64_t>(tokens.size());
  if (N == 0) return {};
  if (pos + N > opt.max_ctx)
    fail("context full: position " + std::to_string(pos + N) + " exceeds max_ctx " + std::to_string(opt.max_ctx));
  for (int32_t t : tokens) check_token(t);
  if (*taps) (*taps)->begin_forward(pos, N);
  const int64_t d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  Rows R = make_rows(tokens, pos);
  // Embedding rows (host lookup of the mmap'd table): every HC stream starts as the embedding.
  std::vector<float> X(N * hcd);
  for (int64_t r = 0; r < N; ++r) {
    weight_row_f32(w.token_embd, tokens[r], &X[r * hcd]);
    for (uint32_t i = 1; i < hp.n_hc; ++i) std::memcpy(&X[r * hcd + i * d], &X[r * hcd], d * sizeof(float));
  }
  ops->upload(R.X, X.data(), X.size() * sizeof(float));
  for (uint32_t il = 0; il < hp.n_layer; ++il) {
    attention_layer(static_cast<int>(il), static_cast<int>(il), w.layers[il], R);
    ffn_layer(static_cast<int>(il), w.layers[il], R, hp.clamp_exp[il], hp.clamp_shexp[il]);
  }
  std::vector<float> logits(N * hp.n_vocab);
  output_head(R, Head{&w.output_hc_fn, &w.output_hc_scale, &w.output_hc_base, &w.output_norm, -1}, logits.data());
  ops->copy(ops->last_hc(), R.X + (N - 1) * hcd, hcd * sizeof(float));
  ops->finish("forward");
  pos += N;
  return logits;
}

// The MTP draft head: the embedding of next_token through enorm; per HC stream i of the trunk's
// last HC state X_i = eh_proj [enorm(e); hnorm(H_i)] (the n_hc streams as n_hc rows of one exact
// matmul), or for a published sidecar X_i = e_proj enorm(e) + h_proj hnorm(H_i) (as ds4.c: two
// products, then one F32 add per element; same maths, other summation order than eh_proj); then
// the block's attention (its own raw window) and FFN (the last layer's clamps), and its head
// (mtp_hc_*, mtp_norm) with the trunk's output matrix. Taps under layer n_layer.
std::vector<float> Session::Impl::mtp_draft(int32_t next_token) {
  if (w.mtp.empty()) fail("model has no MTP block (nextn_predict_layers = 0)");
  if (pos == 0) fail("mtp_draft needs at least one consumed token");
  check_token(next_token);
  const LayerWeights& M = w.mtp[0];
  const int64_t d = hp.n_embd, hcd = static_cast<int64_t>(hp.n_hc) * d;
  const int n_hc = static_cast<int>(hp.n_hc);
  std::vector<float> e(d);
  weight_row_f32(w.token_embd, next_token, e.data());
  float* en = ops->fbuf("mtp_en", d);
  float* hn = ops->fbuf("mtp_hn", hcd);
  ops->upload(en, e.data(), d * sizeof(float));
  ops->rmsnorm(en, &M.enorm, en, 1, d);
  ops->rmsnorm(ops->last_hc(), &M.hnorm, hn, n_hc, d);
  const int32_t tok[1] = {next_token};
  Rows R = make_rows(std::span<const int32_t>(tok, 1), pos);  // the position of next_token
  if (M.eh_proj) {
    float* cat = ops->fbuf("mtp_cat", 2 * hcd);  // (n_hc, 2d)
    for (int i = 0; i < n_hc; ++i) {
      ops->copy(cat + 2 * i * d, en, d * sizeof(float));
      ops->copy(cat + (2 * i + 1) * d, hn + i * d, d * sizeof(float));
    }
    linear_exact(M.eh_proj, cat, n_hc, R.X);
  } else {
    float* ep = ops->fbuf("mtp_ep", d);
    linear_exact(M.e_proj, en, 1, ep);
    linear_exact(M.h_proj, hn, n_hc, R.X);
    for (int i = 0; i < n_hc; ++i) ops->add(R.X + i * d, ep, d);
  }
  const int tap_layer = static_cast<int>(hp.n_layer);
  attention_layer(tap_layer, tap_layer, M, R);
  ffn_layer(tap_layer, M, R, hp.clamp_exp.back(), hp.clamp_shexp.back());
  std::vector<float> logits(hp.n_vocab);
  output_head(R, Head{&M.mtp_hc_fn, &M.mtp_hc_scale, &M.mtp_hc_base, &M.mtp_norm, tap_layer}, logits.data());
  ops->finish("MTP draft");
  mtp_pos = R.pos0 + 1;
  return logits;
}

std::shared_ptr<const SessionState> Session::Impl::snapshot() const {
  auto s = std::make_shared<SessionState>();
  ops->save_state(pos, s.get());
  s->pos = pos;
  s->mtp_pos = mtp_pos;
  return s;
}

void Session::Impl::restore(const SessionState& s) {
  ops->load_state(s);
  pos = s.pos;
  mtp_pos = s.mtp_pos;
}

// ---- gates -> kernel kinds -------------------------------------------------------------------

const char* Session::Impl::linear(const WeightRef& wt, const float* x, int64_t n, float* y, Gate q8_gate) {
  MatmulKind k = MatmulKind::exact;
  switch (wt.type) {
    case QType::Q8_0:
      if (fast(q8_gate, n)) k = q8_gate == Gate::output_head_preq ? MatmulKind::preq_tree : MatmulKind::gemm;
      break;
    case QType::F16:
      if (fast(Gate::f16_gemm, n)) k = MatmulKind::gemm;
      break;
    case QType::F32:
    case QType::BF16:
      if (fast(Gate::f32_gemm, n)) k = MatmulKind::gemm;
      break;
    default:  // IQ2_XXS, Q2_K, Q4_K: no batched variant, always per-row exact
      break;
  }
  return ops->matmul(wt, x, n, y, k);
}

// ---- taps ------------------------------------------------------------------------------------

void Session::Impl::tap_host(int layer, Tap t, int64_t p, float* data, size_t n, const char* variant) {
  if (!tapping()) return;
  const char* name = tap_name(t);
  const FaultInjection& f = opt.fault;
  if (f.enabled && layer == f.layer && p == f.pos && f.tap == name) {
    if (f.element < 0 || static_cast<size_t>(f.element) >= n)
      fail("fault injection: element " + std::to_string(f.element) + " out of range for tap '" + f.tap + "' (" +
           std::to_string(n) + " elements)");
    data[f.element] = std::nextafter(data[f.element], INFINITY);
  }
  if (*taps) (*taps)->tap(layer, name, p, data, n, variant);
}

void Session::Impl::tap(int layer, Tap t, int64_t pos0, int64_t n_rows, float* data, size_t width,
                        const char* variant, const std::vector<const char*>* row_variants) {
  if (!tapping()) return;
  auto variant_of = [&](int64_t r) { return row_variants ? (*row_variants)[r] : variant; };
  if (ops->host_memory()) {
    for (int64_t r = 0; r < n_rows; ++r) tap_host(layer, t, pos0 + r, data + r * width, width, variant_of(r));
    return;
  }
  // Device memory: downloaded only when a sink or a fault on these rows needs it; a fault's
  // perturbed row is uploaded back so that it feeds the rest of the forward.
  const FaultInjection& f = opt.fault;
  const bool hit = fault_on(layer, t) && f.pos >= pos0 && f.pos < pos0 + n_rows;
  if (!*taps && !hit) return;
  std::vector<float> h(static_cast<size_t>(n_rows) * width);
  ops->download(h.data(), data, h.size() * sizeof(float));
  for (int64_t r = 0; r < n_rows; ++r) tap_host(layer, t, pos0 + r, &h[r * width], width, variant_of(r));
  if (hit) {
    const int64_t r = f.pos - pos0;
    ops->upload(data + r * width, &h[r * width], width * sizeof(float));
  }
}

}  // namespace ds4
