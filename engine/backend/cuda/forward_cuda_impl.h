// Internal: the CUDA forward's device weights, state and session shared by forward_cuda.cpp,
// forward_cuda_attn.cpp and forward_cuda_ffn.cpp. See forward_cuda.h for the design.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/forward_cuda.h"
#include "backend/cuda/forward_cuda_kernels.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/cuda_matmul.h"
#include "ds4/engine.h"
#include "ds4/gates.h"
#include "forward/state.h"
#include "forward/weights.h"
#include "ops/rope/rope.h"

namespace ds4::cudafwd {

// Owning device allocation, counted against DS4_CUDA_MEM_LIMIT_MB. A failed cudaMalloc or a
// request over the cap throws "CUDA out of memory allocating N bytes for <what>".
class DevMem {
 public:
  DevMem() = default;
  DevMem(size_t bytes, const std::string& what);
  ~DevMem();
  DevMem(DevMem&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DevMem& operator=(DevMem&& o) noexcept;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  void* get() const { return p_; }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  float* f() const { return static_cast<float*>(p_); }
  size_t size() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};
// Uploads a host vector into a new DevMem.
DevMem upload(const void* host, size_t bytes, const std::string& what);
inline DevMem upload_vec(const std::vector<float>& v, const std::string& what) {
  return upload(v.data(), v.size() * sizeof(float), what);
}
// Sets the cap (bytes, 0 = none) that later allocations are checked against.
void set_mem_limit(int64_t bytes);
// Counts `bytes` allocated elsewhere (CudaMatrix) against the cap, or releases them.
void reserve_bytes(size_t bytes, const std::string& what);
void release_bytes(size_t bytes);
[[noreturn]] void fail_oom(size_t bytes, const std::string& what);

// A weight matrix on the device (CudaMatrix, with its bytes counted against the cap).
struct DMat {
  std::unique_ptr<CudaMatrix> m;
  size_t counted = 0;
  CudaWeightType type = CudaWeightType::f32;
  int64_t in = 0, out = 0;  // in and out of the whole matrix (out = groups * per-group out)
  DMat() = default;
  DMat(DMat&& o) noexcept : m(std::move(o.m)), counted(o.counted), type(o.type), in(o.in), out(o.out) { o.counted = 0; }
  DMat& operator=(DMat&& o) noexcept {
    if (this != &o) {
      release_bytes(counted);
      m = std::move(o.m);
      counted = o.counted, type = o.type, in = o.in, out = o.out;
      o.counted = 0;
    }
    return *this;
  }
  ~DMat() { release_bytes(counted); }
  explicit operator bool() const { return m != nullptr; }
};

struct DLayer {
  uint32_t ratio = 0;
  DMat hc_attn_fn, hc_ffn_fn, q_a, q_b, kv, out_a, out_b;
  DMat comp_kv, comp_gate, idx_q_b, idx_proj, idx_comp_kv, idx_comp_gate;
  DMat router, gate_sh, up_sh, down_sh;
  DevMem hc_attn_scale, hc_attn_base, hc_ffn_scale, hc_ffn_base, attn_norm, q_a_norm, kv_norm, sinks, ffn_norm;
  DevMem comp_ape, comp_norm, idx_comp_ape, idx_comp_norm;
  // Routed experts. The k-quant mixes (gate/up one of IQ2_XXS, Q2_K, Q4_K, the same type for
  // both; down one of IQ2_XXS, Q2_K, Q4_K; the ds4 mix is IQ2_XXS + Q2_K, the q4_k mix Q4_K +
  // Q4_K) are uploaded as raw GGUF bytes for ds4::cuda::moe; any other mix (F32/F16/Q8_0
  // experts, e.g. ds4-convert's F32 GGUF of the HF oracle) as one CudaMatrix per expert slice:
  // gate_e[e], up_e[e] (d -> ff), down_e[e] (ff -> d).
  bool kquant_experts = true;
  cuda::ExpertType gate_up_type = cuda::ExpertType::iq2_xxs, down_type = cuda::ExpertType::q2_k;
  DevMem gate_exps, up_exps, down_exps;  // (n_expert, ff|d, row bytes) when kquant_experts
  std::vector<DMat> gate_e, up_e, down_e;  // n_expert each otherwise
  // MTP block only (ds4-model.md, MTP): X_i = eh_proj [enorm(e); hnorm(H_i)], and its own head.
  DMat eh_proj, mtp_hc_fn;
  DevMem enorm, hnorm, mtp_norm, mtp_hc_base;
};

// Everything uploaded once per Model (shared by all its sessions; see device_weights_for).
struct DeviceWeights {
  std::vector<DLayer> layers;
  std::vector<DLayer> mtp;  // 0 or 1 MTP block (ModelWeights::mtp)
  DMat output, output_hc_fn;
  DevMem output_hc_base, output_norm, iq2_grid, inv_freq_main, inv_freq_comp;
  size_t weight_bytes = 0;  // bytes of the stored weights (what an exact pass reads)
};
std::shared_ptr<DeviceWeights> device_weights_for(const std::shared_ptr<const Model>& model);

// Per-layer device state. pool: the KV rows attention reads: `ring` slots (position t in slot
// t mod ring) followed by comp_cap compressed rows; idx_rows: indexer rows. Trunk layers have
// ring = window + chunk (a batched chunk never overwrites a row another row of it still sees);
// the MTP block, which runs one row per call, has ring = window: the CPU's raw layout slot for
// slot (its positions need not be consecutive: a draft is not made at every position).
struct DLayerState {
  int64_t ring = 0;
  DevMem pool, idx_rows, comp_kv, comp_score, idx_kv, idx_score;
  cuda::CompressorDeviceState comp, idx_comp;
  int64_t n_comp = 0, n_idx = 0, comp_cap = 0, idx_cap = 0;
};

// The weights of an output head (the trunk's output_hc_* / output_norm, or the MTP block's
// mtp_hc_* / mtp_norm); both multiply by the trunk's `output`. tap_layer: -1 or n_layer (MTP).
struct DHead {
  const DMat* hc_fn = nullptr;
  float hc_scale = 0.0f;
  const float* hc_base = nullptr;
  const float* norm = nullptr;
  int tap_layer = -1;
};

// The rows of one call: X is the HC state (n, n_hc*d) on the device, X2 its ping-pong twin.
struct DRows {
  int64_t n = 0, pos0 = 0;
  std::span<const int32_t> tokens;
  float* X = nullptr;
  float* X2 = nullptr;
  const int64_t* pos = nullptr;  // device (n): pos0 + r
};

class Impl final : public CudaSession {
 public:
  Impl(std::shared_ptr<const Model> model, const SessionOptions& opt, TapSink** taps);
  std::vector<float> forward(std::span<const int32_t> tokens) override;
  int64_t pos() const override { return pos_; }
  std::shared_ptr<const SessionState> snapshot() const override;
  void restore(const SessionState& state) override;
  void reset() override;
  void set_gates(const GateSet& gates) override { opt_.gates = gates; }
  std::vector<float> mtp_draft(int32_t) override;

  // Matmul dispatch (same gates as ops/matmul/linear.h). Returns the variant name.
  const char* linear(const DMat& w, const float* x, int64_t n, float* y, Gate q8_gate = Gate::q8_gemm);
  const char* linear_gemm(const DMat& w, const float* x, int64_t n, float* y);
  const char* linear_exact(const DMat& w, const float* x, int64_t n, float* y);
  bool fast(Gate g, int64_t n) const { return n >= 2 && opt_.gates.fast(g); }

  // Scratch device buffers by name, grown on demand (contents undefined after growth).
  float* buf(const std::string& name, size_t n_floats) { return static_cast<float*>(raw(name, n_floats * 4)); }
  int32_t* ibuf(const std::string& name, size_t n) { return static_cast<int32_t*>(raw(name, n * 4)); }
  int64_t* lbuf(const std::string& name, size_t n) { return static_cast<int64_t*>(raw(name, n * 8)); }
  void* raw(const std::string& name, size_t bytes);

  // Taps (as Session::Impl::tap): host data, or n_rows device rows of `width` floats (downloaded
  // only when a sink or a matching fault is attached; a fault's perturbation is uploaded back so
  // that it feeds the rest of the forward).
  bool tapping() const { return *taps_ || opt_.fault.enabled; }
  void tap_host(int layer, const char* name, int64_t pos, float* data, size_t n, const char* variant);
  void tap_dev(int layer, const char* name, int64_t pos0, int64_t n_rows, float* d, size_t width,
               const char* variant, const std::vector<const char*>* row_variants = nullptr);

  // Sublayers.
  void hc_pre(int il, const char* which, const DMat& fn, const DevMem& scale, const DevMem& base,
              const DevMem& norm, const DRows& R, float* XN);
  void attention_layer(int il, const LayerWeights& L, const DLayer& D, DLayerState& S, DRows& R);
  void attention_chunk(int il, const LayerWeights& L, const DLayer& D, DLayerState& S, const DRows& R,
                       int64_t r0, int64_t r1, const float* Q, const float* QIall, float* WI, const float* KV,
                       const float* CA, const float* CG, const float* IA, const float* IG, float* O);
  void topk_torch_host(const float* scores, int64_t n_rows, const std::vector<int32_t>& nvis, int top_k, int32_t* idx,
                       int32_t* cnt);
  void ffn_layer(int il, const LayerWeights& L, const DLayer& D, DRows& R, float clamp_exp, float clamp_sh);
  void kquant_routed_experts(int il, const DLayer& D, const float* XN, const DRows& R, const int32_t* dexp,
                             const float* dwts, float clamp_exp, float* Y);
  void routed_experts_matvec(const DLayer& D, const float* XN, int64_t N, const std::vector<int32_t>& experts,
                             const std::vector<float>& weights, float clamp, float* Y);
  bool plain() const { return opt_.profile == Profile::Plain; }
  void output_head(const DRows& R, const DHead& head, float* logits_host);
  DLayerState make_state(uint32_t ratio, int64_t ring, const std::string& what);

  std::shared_ptr<const Model> model_;
  const HParams& hp;
  const ModelWeights& w;
  SessionOptions opt_;
  TapSink** taps_;
  std::shared_ptr<DeviceWeights> dw_;
  CudaMatmulContext mm_;
  std::vector<DLayerState> st_;
  std::vector<DLayerState> mtp_st_;  // the MTP block's cache (ring = window, no compressor)
  int64_t mtp_pos_ = 0;
  DevMem last_hc_;
  int64_t pos_ = 0;
  int64_t chunk_ = 256;    // rows of one cache/attention chunk
  int64_t ring_rows_ = 0;  // window + chunk_: the trunk layers' ring
  std::map<std::string, DevMem> scratch_;
};

}  // namespace ds4::cudafwd
