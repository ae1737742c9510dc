// Internal: the CUDA backend's device weights, state and ops (CudaOps, the BackendOps of the
// forward graph) shared by forward_cuda.cpp, forward_cuda_attn.cpp and forward_cuda_ffn.cpp. See
// forward_cuda.h for the design.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cuda/forward_cuda.h"
#include "backend/cuda/forward_cuda_kernels.h"
#include "backend/cuda/ops_cuda.h"
#include "ds4/cuda_matmul.h"
#include "ds4/engine.h"
#include "ds4/error.h"
#include "forward/backend_ops.h"
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
  // The device copy of each host weight the graph names (ModelWeights' own objects, by address;
  // the Model outlives its device weights' use).
  std::unordered_map<const WeightRef*, const DMat*> mats;
  std::unordered_map<const Vec*, const DevMem*> vecs;
  std::unordered_map<const LayerWeights*, const DLayer*> blocks;
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

// The enum value (ops_cuda.h) of the CUDA kernel of a variant of engine/variants.def, by the name
// the forward graph picks from the gates: the enums are numbered 0, 1, ... and cuda::variant_name()
// names each value (past the last, a name ending in "__unknown", or a repeat). Throws naming the
// variant when this backend has no kernel for it. A new CUDA variant is its enum value and its
// kernel, case and name in the .cu: nothing here changes.
template <class E>
E cuda_variant(const char* name) {
  for (int i = 0; i < 64; ++i) {
    const std::string n = cuda::variant_name(static_cast<E>(i));
    if (n.size() > 9 && n.compare(n.size() - 9, 9, "__unknown") == 0) break;
    if (n == name) return static_cast<E>(i);
  }
  fail(std::string("CUDA backend: no kernel for variant '") + name + "' (engine/gates.def lists it for cuda)");
}

// The BackendOps of the CUDA backend (forward/backend_ops.h): device buffers, the per-layer
// device caches, and the kernels of ops_cuda.h / cuda_matmul.h. The graph (engine/forward) runs
// the model; these are its ops.
class CudaOps final : public BackendOps {
 public:
  CudaOps(std::shared_ptr<const Model> model, const SessionOptions& opt);

  const char* name() const override { return "cuda"; }

  // ---- memory (forward_cuda.cpp) ----
  bool host_memory() const override { return false; }
  void* scratch(const char* name, size_t bytes) override;
  void upload(void* dst, const void* host, size_t bytes) override;
  void download(void* host, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void finish(const char* what) override;
  int64_t chunk_rows() const override { return chunk_; }

  // ---- state (forward_cuda.cpp) ----
  void reset_state() override;
  void save_state(int64_t pos, SessionState* s) override;
  void load_state(const SessionState& s) override;
  float* last_hc() override { return last_hc_.f(); }
  int64_t ring_rows(int block) const override { return state(block).ring; }
  int64_t compressed_rows(int block, bool indexer) const override {
    return indexer ? state(block).n_idx : state(block).n_comp;
  }

  // ---- weight matmuls (forward_cuda.cpp) ----
  const char* matmul(const WeightRef& w, const float* x, int64_t n, float* y, MatmulKind kind) override;
  const char* matmul_grouped(const WeightRef& w, int groups, const float* x, int64_t n, float* y,
                             MatmulKind kind) override;

  // ---- row-independent ops, caches and attention (forward_cuda_attn.cpp) ----
  const char* rmsnorm(const float* x, const Vec* w, float* y, int64_t n_rows, int64_t n) override;
  const char* hc_split(const float* m, const Vec& scale, const Vec& base, float* pre, float* post, float* comb,
                       int64_t n_rows) override;
  const char* hc_collapse_norm(const float* X, const float* pre, const Vec& norm, float* x, float* xn,
                               int64_t n_rows) override;
  const char* hc_post(const float* X, const float* y, const float* post, const float* comb, float* X_out,
                      int64_t n_rows) override;
  void hc_head(const float* X, const float* m, float scale, const Vec& base, float* E, int64_t n_rows) override;
  void rope(float* x, int64_t n_rows, int n_head, int head_dim, const int64_t* pos_host, RopeKind k,
            bool inverse) override;
  void kv_fp8_f16(float* x, int64_t n_rows, int row_len) override;
  void indexer_qat(float* x, int64_t n_rows, int n, bool round_f16) override;
  void ape_add(float* G, const Vec& ape, int64_t n_rows, int width, int ratio, int64_t pos0) override;
  void swiglu(const float* g, const float* u, float* h, int64_t n, float limit) override;
  const char* add(float* y, const float* x, int64_t n) override;
  const char* add_variant() const override { return "add__rows"; }
  void store_raw(int block, const float* kv, int64_t pos0, int64_t n_rows) override;
  float* compress(int block, bool indexer, const float* A, const float* G, int64_t stride, int64_t pos0,
                  int64_t n_rows, std::vector<int64_t>* emit_pos) override;
  const char* compress_variant() const override { return "compressor_pool__update"; }
  const char* indexer_scores(int block, const float* qi, const float* wi, const int32_t* n_visible, int64_t n_tok,
                             float* scores, int64_t stride, const char* variant) override;
  const char* topk(const float* scores, const int32_t* n_visible, int64_t n_tok, int64_t stride, int k, int32_t* idx,
                   int32_t* count, const char* variant) override;
  void cand_indexed(int32_t* cand, int max_cand, const int32_t* n_raw, const int32_t* idx, int k, const int32_t* count,
                    int64_t n_rows, int32_t base) override;
  void attention(int block, const float* q, const int32_t* cand, const int32_t* n_cand, int max_cand, const Vec& sinks,
                 float* out, int64_t n_tok, const char* variant) override;

  // ---- FFN (forward_cuda_ffn.cpp) ----
  const char* routed_experts(const LayerWeights& L, const float* XN, int64_t n, const std::vector<int32_t>& experts,
                             const std::vector<float>& weights, float clamp, const char* variant, float* Y) override;

 private:
  const char* linear_gemm(const DMat& w, const float* x, int64_t n, float* y);
  const char* linear_exact(const DMat& w, const float* x, int64_t n, float* y);
  void kquant_routed_experts(const DLayer& D, const float* XN, int64_t N, const int32_t* dexp, const float* dwts,
                             float clamp_exp, cuda::MoeVariant mv, float* Y);
  void routed_experts_matvec(const DLayer& D, const float* XN, int64_t N, const std::vector<int32_t>& experts,
                             const std::vector<float>& weights, float clamp, float* Y);
  DLayerState make_state(uint32_t ratio, int64_t ring, const std::string& what);
  bool plain() const { return opt_.profile == Profile::Plain; }
  // The device copies of the graph's host weights (a one-line error when a weight has none).
  const DMat& dmat(const WeightRef& w) const;
  const DevMem& dvec(const Vec& v) const;
  DLayerState& state(int block) { return block < static_cast<int>(hp.n_layer) ? st_[block] : mtp_st_[block - hp.n_layer]; }
  const DLayerState& state(int block) const {
    return block < static_cast<int>(hp.n_layer) ? st_[block] : mtp_st_[block - hp.n_layer];
  }
  float* buf(const char* name, size_t n_floats) { return fbuf(name, n_floats); }
  int64_t* lbuf(const char* name, size_t n) { return static_cast<int64_t*>(scratch(name, n * 8)); }

  std::shared_ptr<const Model> model_;
  const HParams& hp;
  const ModelWeights& w;
  SessionOptions opt_;
  std::shared_ptr<DeviceWeights> dw_;
  CudaMatmulContext mm_;
  std::vector<DLayerState> st_;
  std::vector<DLayerState> mtp_st_;  // the MTP block's cache (ring = window, no compressor)
  DevMem last_hc_;
  int64_t chunk_ = 256;    // rows of one cache/attention chunk
  int64_t ring_rows_ = 0;  // window + chunk_: the trunk layers' ring
  std::map<std::string, DevMem> scratch_;
};

}  // namespace ds4::cudafwd
