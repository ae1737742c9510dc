// Internal: the DS4 forward graph, one for every backend (backend_ops.h), shared by session.cpp,
// graph.cpp, attention_layer.cpp and ffn_layer.cpp. The forward is layer-major over the N rows of
// a call; see graph.cpp.
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "ds4/engine.h"
#include "ds4/gates.h"
#include "ds4/tap_list.h"
#include "forward/backend_ops.h"
#include "forward/state.h"
#include "forward/weights.h"

namespace ds4 {

// Rows of one call: X (n, n_hc * d) is the HC state in backend memory, X2 its ping-pong twin;
// row r has position pos0 + r and token tokens[r].
struct Rows {
  int64_t n = 0;
  int64_t pos0 = 0;
  std::span<const int32_t> tokens;
  std::vector<int64_t> pos;  // host: pos0 + r
  float* X = nullptr;
  float* X2 = nullptr;
};

// The weights of an output head: the trunk's output_hc_* / output_norm, or the MTP block's
// mtp_hc_* / mtp_norm; both multiply by the trunk's `output`. tap_layer: -1 or n_layer (MTP).
struct Head {
  const WeightRef* hc_fn = nullptr;
  const Vec* hc_scale = nullptr;
  const Vec* hc_base = nullptr;
  const Vec* norm = nullptr;
  int tap_layer = -1;
};

struct Session::Impl {
  const HParams& hp;
  const ModelWeights& w;
  SessionOptions opt;
  TapSink** taps;
  std::unique_ptr<BackendOps> ops;
  int64_t pos = 0;      // next position of the trunk
  int64_t mtp_pos = 0;  // next position of the MTP block's own window

  Impl(const Model& model, const SessionOptions& o, TapSink** taps_, std::unique_ptr<BackendOps> ops_);
  void reset();
  std::vector<float> forward(std::span<const int32_t> tokens);
  std::vector<float> mtp_draft(int32_t next_token);
  std::shared_ptr<const SessionState> snapshot() const;
  void restore(const SessionState& s);
  void check_token(int32_t t) const;

  // ---- gates -> kernel kinds (graph.cpp) ----
  // True when the gate's fast variant applies to this call (gates only apply at N >= 2: N = 1 is
  // decode, always exact).
  bool fast(Gate g, int64_t n) const { return n >= 2 && opt.gates.fast(g); }
  // A weight matmul whose kernel family follows the gate of its weight type; `q8_gate` names the
  // gate of a Q8_0 weight at this call site (q8_gemm, or output_head_preq for the head).
  const char* linear(const WeightRef& w, const float* x, int64_t n, float* y, Gate q8_gate = Gate::q8_gemm);
  const char* linear_exact(const WeightRef& w, const float* x, int64_t n, float* y) {
    return ops->matmul(w, x, n, y, MatmulKind::exact);
  }

  // ---- taps (graph.cpp) ----
  // A tap point on n_rows rows of `width` floats in backend memory, positions pos0... The data is
  // the live buffer that feeds the rest of the forward: the fault injector (a negative control,
  // off by default) perturbs it before the sink sees it, and a backend with device memory gets
  // the perturbed row back. With no sink and no fault this costs one branch. Names come from
  // engine/taps.def (enum Tap), variants from engine/variants.def (tap_list_test checks both).
  // row_variants: one variant per row instead of `variant`.
  bool tapping() const { return *taps || opt.fault.enabled; }
  void tap(int layer, Tap t, int64_t pos0, int64_t n_rows, float* data, size_t width, const char* variant,
           const std::vector<const char*>* row_variants = nullptr);
  // The same on host data (n values of one position).
  void tap_host(int layer, Tap t, int64_t p, float* data, size_t n, const char* variant);
  // True when the fault injector targets tap t of this layer (whatever the position).
  bool fault_on(int layer, Tap t) const { return opt.fault.enabled && opt.fault.layer == layer && opt.fault.tap == tap_name(t); }

  // ---- sublayers (attention_layer.cpp, ffn_layer.cpp) ----
  // HC pre of a sublayer for every row: RMSNorm0 + mixer projection, split + Sinkhorn (into the
  // "hc_pre", "hc_post", "hc_comb" scratch buffers, which hc_post reads), collapse and the
  // sublayer's RMSNorm into XN (n, d).
  void hc_pre(int il, bool attn, const WeightRef& fn, const Vec& scale, const Vec& base, const Vec& norm,
              const Rows& R, float* XN);
  void hc_post(int il, Tap t, Rows& R, const float* Y);
  void attention_layer(int il, int block, const LayerWeights& L, Rows& R);
  void attention_chunk(int il, int block, const LayerWeights& L, const Rows& R, int64_t r0, int64_t r1,
                       float* Q, const float* QI, float* WI, const float* KV, const float* CA, const float* CG,
                       const float* IA, const float* IG, float* O, const char* v_qi, const char* v_wi);
  void compress(int il, int block, const LayerWeights& L, bool indexer, const float* A, const float* G,
                int64_t stride, int64_t p0, int64_t n_rows);
  void ffn_layer(int il, const LayerWeights& L, Rows& R, float clamp_exp, float clamp_sh);
  void output_head(const Rows& R, const Head& h, float* logits_host);
  Rows make_rows(std::span<const int32_t> tokens, int64_t pos0);
};

}  // namespace ds4
