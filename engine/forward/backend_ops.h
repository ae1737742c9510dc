// The ops the forward graph (engine/forward/graph.cpp, attention_layer.cpp, ffn_layer.cpp) runs on
// a backend, as CTranslate2 splits an op into op / op_cpu / op_gpu and ggml runs one graph over
// many backends. The CPU implements it (backend/cpu/cpu_ops.cpp). The CUDA session still runs its
// own copy of the graph (backend/cuda/forward_cuda*.cpp); its implementation of this interface
// (CudaOps, which deletes that copy) is in main's history, reverted until a GPU has run it.
//
// What lives where:
//   graph    the order of the ops, every tap (engine/taps.def) and the fault injection, every gate
//            -> kernel-kind choice (engine/gates.def), token / context checks, positions, the
//            candidate lists of attention, the router's selection (host), the snapshot layout
//            (SessionState) and the MTP draft head.
//   backend  its memory (buffers are backend pointers: host for the CPU, device for CUDA), its
//            caches (KV ring, compressors, indexer rows), its device copies of the weights, and
//            the kernels. Each op returns the variant name it ran (engine/variants.def): the
//            provenance the graph reports in its taps.
// Buffers: float* / int32_t* below are backend memory unless a parameter says "host". The graph
// never dereferences them; it moves data with upload / download.
// Weights are named by the model's own host objects (WeightRef, Vec of ModelWeights): a backend
// maps them to its copies (the CPU uses them as they are).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "forward/state.h"
#include "forward/weights.h"

namespace ds4 {

// The kernel family of a weight matmul, chosen by the graph from the gates (graph.cpp).
enum class MatmulKind {
  exact,      // per row the N = 1 kernel's arithmetic (bit-equal to decode)
  gemm,       // the batched GEMM of the weight type (q8_gemm, f16_gemm, f32_gemm, q8_pair, ...)
  preq_tree,  // Q8_0 output head: int8 activations, 256-lane block sums (output_head_preq)
};

// The attention kernel of a row: dense (its candidates are the raw window and every compressed
// row it sees; a row that sees no compressed row runs dense_serial too, reported as attn_raw) or
// indexed (the raw window and the indexer's top-k), the exact serial dot or a gated fast one.
enum class AttnKind { dense_serial, dense_lane8, indexed_scalar, indexed_online };
enum class IndexerKind { direct_one, scalar, wmma_f16 };
enum class TopkKind { score_order, resort_ascending };
enum class MoeKind { exact, tiles };
enum class RopeKind { main, compressed };

class BackendOps {
 public:
  virtual ~BackendOps() = default;

  // ---- memory ----
  // True when buffers are host memory: taps then read and perturb them in place.
  virtual bool host_memory() const = 0;
  // A named scratch buffer of at least `bytes`, kept between calls and grown on demand (contents
  // undefined after growth). Two buffers live at once must have two names.
  virtual void* scratch(const char* name, size_t bytes) = 0;
  float* fbuf(const char* name, size_t n) { return static_cast<float*>(scratch(name, n * sizeof(float))); }
  int32_t* ibuf(const char* name, size_t n) { return static_cast<int32_t*>(scratch(name, n * sizeof(int32_t))); }
  virtual void upload(void* dst, const void* host, size_t bytes) = 0;
  virtual void download(void* host, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  // Waits for the queued work (a no-op on the CPU); `what` names the step in an error.
  virtual void finish(const char* what) = 0;
  // Rows of one cache chunk of attention (the KV ring holds window + chunk rows on CUDA; the CPU
  // attends row by row with a ring of window rows).
  virtual int64_t chunk_rows() const = 0;

  // ---- state (block: trunk layer il, or n_layer + m for MTP block m) ----
  virtual void reset_state() = 0;
  // The caches in the CPU layout of SessionState (forward/state.h); `pos` is the next position.
  virtual void save_state(int64_t pos, SessionState* s) = 0;
  virtual void load_state(const SessionState& s) = 0;
  virtual float* last_hc() = 0;  // the trunk's final HC state of position pos-1 (n_hc * d)
  virtual int64_t ring_rows(int block) const = 0;  // KV ring slots: position t in slot t % ring
  virtual int64_t compressed_rows(int block, bool indexer) const = 0;  // rows emitted so far

  // ---- weight matmuls ----
  // y (n, w.out) = x (n, w.in) W^T with the kernel family `kind`. Returns the variant.
  virtual const char* matmul(const WeightRef& w, const float* x, int64_t n, float* y, MatmulKind kind) = 0;
  // The grouped output LoRA A: group g of x's `groups` column blocks (w.in wide) times its row
  // block of w (w.out / groups rows) into y (n, w.out); kind exact or gemm.
  virtual const char* matmul_grouped(const WeightRef& w, int groups, const float* x, int64_t n, float* y,
                                     MatmulKind kind) = 0;

  // ---- row-independent ops ----
  // y (n_rows, n) = RMSNorm(x; w) (w nullptr: RMSNorm0); in place allowed.
  virtual const char* rmsnorm(const float* x, const Vec* w, float* y, int64_t n_rows, int64_t n) = 0;
  // HC split + Sinkhorn of the raw mixes m (n_rows, mix width) into pre, post (n_rows, n_hc) and
  // comb (n_rows, n_hc * n_hc).
  virtual const char* hc_split(const float* m, const Vec& scale, const Vec& base, float* pre, float* post,
                               float* comb, int64_t n_rows) = 0;
  // x (n_rows, d) = collapse of X by pre; xn = RMSNorm(x; norm). Returns xn's variant.
  virtual const char* hc_collapse_norm(const float* X, const float* pre, const Vec& norm, float* x, float* xn,
                                       int64_t n_rows) = 0;
  // X_out (n_rows, n_hc * d) = the HC post of X with sublayer output y.
  virtual const char* hc_post(const float* X, const float* y, const float* post, const float* comb, float* X_out,
                              int64_t n_rows) = 0;
  // The output head's collapse: E (n_rows, d) = sum_i (sigmoid(scale m_i + base_i) + eps) X_i.
  virtual void hc_head(const float* X, const float* m, float scale, const Vec& base, float* E, int64_t n_rows) = 0;
  // RoPE of the last n_rot dims of every head; pos_host (n_rows) host positions.
  virtual void rope(float* x, int64_t n_rows, int n_head, int head_dim, const int64_t* pos_host, RopeKind k,
                    bool inverse) = 0;
  // ds4 storage numerics: FP8 round trip of the first n_nope values, then the row to F16.
  virtual void kv_fp8_f16(float* x, int64_t n_rows, int row_len) = 0;
  // ds4 indexer numerics: Hadamard + FP4 round trip per row (+ F16 when round_f16).
  virtual void indexer_qat(float* x, int64_t n_rows, int n, bool round_f16) = 0;
  // G[r][j] += ape[(pos0 + r) mod ratio][j].
  virtual void ape_add(float* G, const Vec& ape, int64_t n_rows, int width, int ratio, int64_t pos0) = 0;
  virtual void swiglu(const float* g, const float* u, float* h, int64_t n, float limit) = 0;
  virtual const char* add(float* y, const float* x, int64_t n) = 0;  // y += x
  virtual const char* add_variant() const = 0;                       // the name add() reports

  // ---- caches and attention ----
  // Stores KV rows (n_rows, head_dim) of positions pos0.. into the block's ring.
  virtual void store_raw(int block, const float* kv, int64_t pos0, int64_t n_rows) = 0;
  // Feeds rows pos0.. of the compressor projections A, G (row stride `stride`, APE added) to the
  // block's compressor (indexer: the indexer's). Rows emitted at window ends are appended to the
  // block's compressed rows; returns the first of them (contiguous) and their positions in
  // *emit_pos (host), or nullptr when none.
  virtual float* compress(int block, bool indexer, const float* A, const float* G, int64_t stride, int64_t pos0,
                          int64_t n_rows, std::vector<int64_t>* emit_pos) = 0;
  virtual const char* compress_variant() const = 0;
  // Indexer scores of n_tok queries qi (n_tok, n_idx_head, idx_head_dim) with head weights wi
  // (n_tok, n_idx_head) over the block's first n_visible[j] indexer rows: scores (n_tok, stride).
  virtual const char* indexer_scores(int block, const float* qi, const float* wi, const int32_t* n_visible,
                                     int64_t n_tok, float* scores, int64_t stride, IndexerKind k) = 0;
  // Top-k of each token's visible scores: idx (n_tok, k) (-1 past the count), count (n_tok).
  virtual const char* topk(const float* scores, const int32_t* n_visible, int64_t n_tok, int64_t stride, int k,
                           int32_t* idx, int32_t* count, TopkKind kind) = 0;
  // cand[r][n_raw[r] + j] = base + idx[r][j] for j < count[r].
  virtual void cand_indexed(int32_t* cand, int max_cand, const int32_t* n_raw, const int32_t* idx, int k,
                            const int32_t* count, int64_t n_rows, int32_t base) = 0;
  // Sink-softmax attention of n_tok rows q (n_tok, n_head, head_dim) over their candidate rows
  // (cand (n_tok, max_cand): ring slots < ring_rows, then ring_rows + compressed row).
  virtual void attention(int block, const float* q, const int32_t* cand, const int32_t* n_cand, int max_cand,
                         const Vec& sinks, float* out, int64_t n_tok, AttnKind k) = 0;

  // ---- FFN ----
  // Y (n, d) = the routed experts of L for rows XN (n, d); experts, weights (n, n_used) host, in
  // slot order. Returns the variant (a backend without the kind's kernel for L's types runs its
  // exact path and says so).
  virtual const char* routed_experts(const LayerWeights& L, const float* XN, int64_t n,
                                     const std::vector<int32_t>& experts, const std::vector<float>& weights,
                                     float clamp, MoeKind kind, float* Y) = 0;
};

}  // namespace ds4
