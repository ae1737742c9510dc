// Internal: the CPU forward's state and helpers shared by session.cpp, attention_layer.cpp and
// ffn_layer.cpp. The forward is layer-major over the N rows of a call; see session.cpp.
#pragma once
#include <cstring>
#include <vector>

#include "backend/cpu/thread_pool.h"
#include "ds4/engine.h"
#include "ds4/gates.h"
#include "ds4/tap_list.h"
#include "forward/exec.h"
#include "forward/state.h"
#include "forward/weights.h"
#include "ops/hc/hc.h"
#include "ops/rope/rope.h"

namespace ds4 {

// Rows of one call: X[r] is row r's HC state (n_hc * d floats); pos0 + r its position.
struct Rows {
  int64_t n = 0;
  int64_t pos0 = 0;
  std::span<const int32_t> tokens;
  std::vector<float> X;
};

struct Session::Impl {
  const HParams& hp;
  const ModelWeights& w;
  SessionOptions opt;
  ThreadPool pool;
  WeightCache cache;
  RopeParams rope_main, rope_comp;
  SessionState st;
  TapSink** taps;

  Impl(const Model& model, const SessionOptions& o, TapSink** taps_);
  void reset();
  std::vector<float> forward(std::span<const int32_t> tokens);
  std::vector<float> mtp_draft(int32_t next_token);

  ExecCtx ctx(int64_t n_rows) {
    ExecCtx c;
    c.profile = opt.profile;
    c.gates = &opt.gates;
    c.pool = &pool;
    c.cache = &cache;
    c.batched = n_rows >= 2;
    return c;
  }
  const RopeParams& rope_for(uint32_t ratio) const { return ratio == 0 ? rope_main : rope_comp; }

  // A tap point. `data` is the live buffer that feeds the rest of the forward: the fault injector
  // (a negative control, off by default) perturbs it in place before the sink sees it. With no
  // sink and no fault this costs one branch. Names come from engine/taps.def (enum Tap), variants
  // from engine/variants.def (tests/unit/tap_list_test.cpp checks both).
  void tap(int layer, Tap t, int64_t pos, float* data, size_t n, const char* variant) {
    if (!*taps && !opt.fault.enabled) return;
    const char* name = tap_name(t);
    if (opt.fault.enabled) inject_fault(layer, name, pos, data, n);
    if (*taps) (*taps)->tap(layer, name, pos, data, n, variant);
  }
  // Taps every row of a row-major [n_rows][width] block.
  void tap_rows(int layer, Tap t, const Rows& R, std::vector<float>& m, size_t width, const char* variant) {
    if (!*taps && !opt.fault.enabled) return;
    for (int64_t r = 0; r < R.n; ++r) tap(layer, t, R.pos0 + r, &m[r * width], width, variant);
  }
  void inject_fault(int layer, const char* name, int64_t pos, float* data, size_t n);

  // The shared first step of every sublayer and of the head: Z[r] = RMSNorm0(flat X[r]) and the
  // batched mixer projection M = fn Z. Returns the variant of the projection.
  const char* hc_mixes(const WeightRef& fn, const Rows& R, std::vector<float>* M);

  // HC pre of a sublayer ("attn" or "ffn") for every row: mixes, split + Sinkhorn, collapse, and
  // the sublayer's RMSNorm into XN (n_rows x d). Returns each row's mix for the HC post.
  std::vector<HcMix> hc_pre(int il, const char* which, const WeightRef& fn, const Vec& scale, const Vec& base,
                            const Vec& norm, const Rows& R, std::vector<float>* XN);

  // Sublayers (attention_layer.cpp, ffn_layer.cpp) and the output head.
  void attention_layer(int il, const LayerWeights& L, LayerState& S, Rows& R);
  void ffn_layer(int il, const LayerWeights& L, Rows& R, float clamp_exp, float clamp_sh);
  void output_head(const Rows& R, const WeightRef& hc_fn, const Vec& hc_scale, const Vec& hc_base,
                   const Vec& norm, int tap_layer, float* logits);

  // Attention helpers (attention_layer.cpp).
  void compress_row(int il, const LayerWeights& L, LayerState& S, bool indexer, const float* a, const float* g,
                    int64_t p);
  const char* attend_row(int il, const LayerWeights& L, LayerState& S, const ExecCtx& c, const float* q,
                         const float* qi, float* wi, const char* v_qi, const char* v_wi, int64_t p,
                         int64_t batch_final_rows, float* o);
};

}  // namespace ds4
