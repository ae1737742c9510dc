// Host API of the CUDA op kernels (engine/ops/<family>/*_cuda.cu): one function per op, each
// with named kernel variants (style.md rule 3). Internal to the engine, tests and benchmarks; no
// CUDA types, so host-only code can include it. Sections follow the forward pass
// (ds4-model.md §4): norm, RoPE, HC, storage numerics, attention, indexer, compressor, MoE.
//
// Conventions for every function here:
//   * All tensor pointers are device memory (cudaMalloc'd, so 256-byte aligned at the start);
//     shapes are given as (rows, cols) row-major with the dtype, e.g. "(n_rows, d) F32".
//   * Work is queued on the default stream and is asynchronous; launch errors are checked
//     (ds4::Error naming the kernel), execution errors surface at the next
//     ds4::cuda::synchronize(). Bad arguments throw ds4::Error with a one-line message before
//     anything is launched.
//   * No atomics and no data-dependent scheduling anywhere: every variant gives the same bits run
//     to run (ds4's N=1 indexed attention did not, ds4-dispatch.md §0.2).
//   * Each variant's comment states its reduction order and its relation to the CPU reference
//     (the function in engine/ops/<family>/*_ref.cpp or *_fast.cpp with the same variant name)
//     and to the decode (N=1) kernel. The tolerance tier of every variant against its CPU twin is
//     the table in tests/unit/cuda_ops_test.cpp.
//   * F32 arithmetic that must match a CPU expression uses __fmul_rn / __fadd_rn / __fdiv_rn so
//     that nvcc never contracts a*b+c into an FMA (the CPU build has no FMA contraction either).
//   * exp is evaluated as (float)exp((double)x): correctly rounded F32 exp (up to a 2^-29 chance
//     of a double-rounding miss). glibc's expf is not always correctly rounded (about 6e-4 of
//     random arguments differ by one ulp, measured here), so ops with an exp are not declared
//     bitwise against the CPU: see the tier table.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ds4::cuda {

// =============================================================================================
// Norm (engine/ops/norm/rmsnorm_cuda.cu)
// =============================================================================================

// rmsnorm__block256_f64: y (n_rows, n) = x * w / sqrt(mean(x^2) + eps) per row; w (n) F32 or
// nullptr (RMSNorm0: the per-head q norm, the HC-pre norm). In place allowed (y == x).
// One 256-thread block per row. Sum of squares in double (each square exact): thread t sums
// i = t, t+256, ... in order, then a shared-memory halving tree (s[t] += s[t+off], off = 128..1);
// scale = 1/sqrt(float(ss/n) + eps) and y = (x*scale)*w in F32 as rmsnorm_ref. Differs from
// rmsnorm_ref only in the order of the double sum (tier ulp<=2). Row-independent: the same
// kernel serves N=1 and N rows, per row bit-equal.
void rmsnorm_rows(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps);

// HC collapse + RMSNorm of the sublayer input (ds4-dispatch.md §1.2 row H1):
//   x (n_rows, d) = sum_i pre_i X_i (i ascending, F32, as hc_collapse_ref);
//   xn (n_rows, d) = rmsnorm(x; w) (w may be nullptr).
//   X (n_rows, n_hc, d) F32, pre (n_rows, n_hc) F32.
enum class HcNormVariant {
  fused,  // hc_collapse_norm__fused: ds4's N=1 kernel: one block per row computes x and its sum
          // of squares in the same thread-strided order as rmsnorm__block256_f64.
  split,  // hc_collapse_norm__split: the batched path: hc_collapse__rows then
          // rmsnorm__block256_f64. Per row bit-equal to fused (ds4 probe: EQUAL).
};
const char* variant_name(HcNormVariant v);
void hc_collapse_norm(const float* X, const float* pre, const float* w, float* x, float* xn,
                      int64_t n_rows, int n_hc, int64_t d, float eps, HcNormVariant v);

// =============================================================================================
// RoPE (engine/ops/rope/rope_cuda.cu)
// =============================================================================================

// rope_tail__pairs: rotates the last n_rot dims of every head in place, adjacent pairs, as
// rope_tail_ref: theta = float(pos) * inv_freq[i] (F32), c/s = cos/sin(double(theta)) rounded
// to F32, x0' = x0*c - x1*s, x1' = x0*s + x1*c (F32, no FMA); inverse negates s.
//   x (n_rows, n_head, head_dim) F32; pos (n_rows) int64; inv_freq (n_rot/2) F32, from the CPU
//   ds4::rope_params (plain or YaRN) uploaded as is.
// One thread per pair; elementwise, bitwise against rope_tail_ref (up to cos/sin double-rounding
// misses, probability about 1e-8 per angle).
void rope_tail(float* x, int64_t n_rows, int n_head, int head_dim, int n_rot, const int64_t* pos,
               const float* inv_freq, bool inverse);

// =============================================================================================
// Hyper-connections (engine/ops/hc/hc_cuda.cu)
// =============================================================================================

// hc_split__sinkhorn_serial: from raw mixes m (n_rows, (2+n_hc)*n_hc) F32, scale (3) F32 and
// base ((2+n_hc)*n_hc) F32 computes pre (n_rows, n_hc), post (n_rows, n_hc) and comb
// (n_rows, n_hc*n_hc) exactly as hc_split_ref (one thread per row, same operation order).
// n_hc <= 8.
void hc_split(const float* m, const float* scale, const float* base, float* pre, float* post,
              float* comb, int64_t n_rows, int n_hc, int iters, float hc_eps);
// hc_collapse__rows: x (n_rows, d) = sum_i w_i X_i, i ascending (w (n_rows, n_hc)); bitwise
// against hc_collapse_ref.
void hc_collapse(const float* X, const float* w, float* x, int64_t n_rows, int n_hc, int64_t d);
// hc_post__rows: X_out (n_rows, n_hc, d): X'_b = post_b*y + sum_a C[a][b] X_a (a ascending);
// y (n_rows, d), post (n_rows, n_hc), comb (n_rows, n_hc*n_hc). Bitwise against hc_post_ref.
void hc_post(const float* X, const float* y, const float* post, const float* comb, float* X_out,
             int64_t n_rows, int n_hc, int64_t d);
// hc_head_weights__rows: w (n_rows, n_hc) = sigmoid(scale*m + base) + hc_eps, m (n_rows, n_hc),
// base (n_hc); as hc_head_weights_ref.
void hc_head_weights(const float* m, float scale, const float* base, float* w, int64_t n_rows,
                     int n_hc, float hc_eps);

// =============================================================================================
// Storage numerics (engine/ops/numerics/qat_cuda.cu)
// =============================================================================================

// kv_fp8__block64: FP8 E4M3 round trip of x[0..n_nope) of every row in blocks of 64 (one warp
// per block; amax by a max-shuffle, order-free), then, when round_f16, the whole row rounded to
// F16 (the KV cache store). x (n_rows, row_len) F32 in place. Bitwise against
// kv_fp8_roundtrip_ref (+ round_f16_inplace).
void kv_fp8_roundtrip(float* x, int64_t n_rows, int row_len, int n_nope, bool round_f16);
// indexer_qat__hadamard_fp4: per row of n (a power of two, 32 <= n <= 1024) values: the
// Walsh-Hadamard butterflies of hadamard_ref (each output one add or subtract, so the stage
// order is all that matters), * 1/sqrt(n), then the FP4 E2M1 round trip in blocks of 32, then
// F16 rounding when round_f16 (compressed indexer rows; queries are not rounded). x (n_rows, n)
// F32 in place. Bitwise against hadamard_ref + fp4_roundtrip_ref (+ round_f16_inplace).
void indexer_qat(float* x, int64_t n_rows, int n, bool round_f16);

// =============================================================================================
// Attention (engine/ops/attention/attention_cuda.cu)
// =============================================================================================

// Sink-softmax attention of n_tok query rows over per-token candidate lists of KV rows
// (ds4-model.md §4.4 step 9; K = V, one KV head shared by all query heads).
struct AttnArgs {
  const float* q = nullptr;        // (n_tok, n_head, head_dim) F32
  const float* kv = nullptr;       // (n_pool, head_dim) F32 KV rows (raw window + compressed)
  const int32_t* cand = nullptr;   // (n_tok, max_cand) int32: candidate rows of each token in
                                   // attention order (raw rows, then compressed rows: all of
                                   // them, or the indexer's selection in its order)
  const int32_t* n_cand = nullptr; // (n_tok) int32: candidates used per token (<= max_cand)
  const float* sinks = nullptr;    // (n_head) F32 learned sink logits
  float* out = nullptr;            // (n_tok, n_head, head_dim) F32
  int64_t n_tok = 0;
  int n_head = 0;
  int head_dim = 0;                // multiple of 32, <= 512
  int max_cand = 0;                // row stride of cand; the materialised variants keep
                                   // (head_dim + 2*max_cand) floats in shared memory, so
                                   // max_cand <= 28000
  float scale = 0.0f;              // 1/sqrt(head_dim), computed by the caller as the CPU does
};
enum class AttnVariant {
  // attn_dense__serial_dot: ds4's N=1 branch of attention_decode_mixed_kernel. One 256-thread
  //   block per (token, head); thread t scores candidates j = t, t+256, ... with a sequential
  //   F32 dot over head_dim (index order, as dot_f32_f32); scores materialised in shared memory;
  //   max by an order-free fmax tree; e_j = exp(s_j - M); the denominator
  //   exp(sink - M) + sum_j e_j summed serially in candidate order by thread 0; p_j = e_j/den;
  //   out[i] = sum_j p_j k_j[i] serially in candidate order (thread per dim). Same operation
  //   order as attention_head_ref (differs only by exp rounding). The exact variant of D1.
  dense_serial_dot,
  // attn_indexed__scalar: the same kernel for indexed (ratio-4) rows. Deterministic where
  //   ds4's attention_indexed_mixed_kernel compacted the top-k list with atomicAdd (40 distinct
  //   results in 40 runs): here the candidate order is the list order, always.
  indexed_scalar,
  // attn_dense__lane8_dot: ds4's n_tokens > 1 branch (D1 fast): as dense_serial_dot, but each
  //   q.k is an 8-lane strided dot (lane l sums elements l, l+8, ... in order) reduced by a
  //   shuffle tree (l += l+4, l+2, l+1), as attention_head_lane8. Not bit-equal to serial.
  dense_lane8_dot,
  // attn_indexed__heads8_online: ds4's heads8 online-softmax kernel (I3 fast, and dense
  //   N >= 128): one block per (token, 8 heads), one warp per head, candidate rows staged 8 at a
  //   time in shared memory; per row a 32-lane strided dot + shuffle tree (16..1); running max m,
  //   sum l and per-lane accumulators rescaled by exp(m_old - m_new) when the max grows; the
  //   sink is folded in at the end. Same order as attention_head_online. Not bit-equal to serial.
  indexed_heads8_online,
};
const char* variant_name(AttnVariant v);
void attention(const AttnArgs& a, AttnVariant v);

// =============================================================================================
// Indexer (engine/ops/indexer/indexer_cuda.cu)
// =============================================================================================

struct IndexerArgs {
  const float* q = nullptr;          // (n_tok, n_head, head_dim) F32 (after RoPE + QAT)
  const float* w = nullptr;          // (n_tok, n_head) F32 head weights (W_Iproj xn, unscaled)
  const float* K = nullptr;          // (n_rows, head_dim) F32 compressed indexer rows
  const int32_t* n_visible = nullptr;// (n_tok) int32 rows visible to each token (<= n_rows)
  float* scores = nullptr;           // (n_tok, n_rows) F32; -inf beyond a token's n_visible
  int64_t n_tok = 0;
  int64_t n_rows = 0;
  int n_head = 0;                    // <= 64
  int head_dim = 0;                  // <= 128 (wmma_f16: a multiple of 16)
};
enum class IndexerVariant {
  // indexer_scores__direct_one: the N=1 kernel (I1 exact). Thread (row, head) does the F32 dot
  //   in index order; term_h = (relu(dot) * (1/sqrt(head_dim))) * (w_h * (1/sqrt(n_head)));
  //   one thread per row sums the terms over heads ascending. Same order as
  //   indexer_scores_ref: bitwise.
  direct_one,
  // indexer_scores__scalar (I1 fast without WMMA): per head a halving-tree dot over the
  //   next power of two >= head_dim (zero padded), relu(dot)*w_h summed over heads ascending,
  //   the combined scale applied once at the end. Same order as indexer_scores_scalar: bitwise.
  scalar,
  // indexer_scores__wmma_f16 (I1 fast): q and K rounded to F16, per head 16x16x16 HMMA tiles
  //   (F16 inputs, F32 accumulate, k-chunks of 16 in order) over 16-row tiles; relu(dot)*w_h
  //   summed over heads ascending by one thread per row, scale once at the end. The order of
  //   the additions inside one 16-wide chunk is the tensor core's, so it matches
  //   indexer_scores_wmma only within the nmse tier.
  wmma_f16,
};
const char* variant_name(IndexerVariant v);
void indexer_scores(const IndexerArgs& a, IndexerVariant v);

// Top-k of each token's visible scores (I2/I3): the min(k, n_visible) highest scores, ties to
// the lower index, -0.0 equal to +0.0 (as topk_ascending_ref's comparator). One 1024-thread block
// per token: keys (descending score, ascending index) bitonic-sorted in a 4096-entry shared
// buffer that keeps the best k and takes 4096 - k new scores per pass. Deterministic; NaN
// scores are not supported.
//   scores (n_tok, n_rows) F32, n_visible (n_tok) int32, idx (n_tok, k) int32 out (-1 past
//   count), count (n_tok) int32 out. 1 <= k <= 2048.
enum class TopkVariant {
  score_order,       // topk__score_order: highest first (the order N=1 decode attends in)
  resort_ascending,  // topk__resort_ascending: the same set re-sorted by index (ds4 N>1)
};
const char* variant_name(TopkVariant v);
void topk(const float* scores, const int32_t* n_visible, int64_t n_tok, int64_t n_rows, int k,
          int32_t* idx, int32_t* count, TopkVariant v);

// =============================================================================================
// Compressor (engine/ops/compressor/compressor_cuda.cu)
// =============================================================================================

// Device twin of ds4::CompressorState (ops/compressor/compressor.h): rows() x width F32 each,
// initialised by the caller to kv = 0, score = -inf (compressor_state_init).
struct CompressorDeviceState {
  float* kv = nullptr;     // (rows, width) F32
  float* score = nullptr;  // (rows, width) F32
  int ratio = 0;           // 4 or 128
  int head_dim = 0;        // pooled row width
  int width() const { return (ratio == 4 ? 2 : 1) * head_dim; }
  int rows() const { return ratio == 4 ? 8 : ratio; }
};
void compressor_state_init(const CompressorDeviceState& st);

// compressor_pool__update (C1, the decode path): stores one token's a (width) and g (width,
// APE already added) at position p; when p closes a window writes the pooled row (head_dim) to
// `pooled` and returns true (then, for ratio 4, rows 4..7 move to 0..3). One block; per channel:
// M = fmax over candidates, e_c = exp(g_c - M), den = sum_c e_c (candidate order), c = sum_c
// (e_c/den) a_c (candidate order), as compressor_push_ref.
bool compressor_update(const CompressorDeviceState& st, const float* a, const float* g, int64_t p,
                       float* pooled);
// compressor_pool__prefill (C1, aligned batches: pos0 % ratio == 0 and n_tok % ratio == 0):
// pools all n_tok/ratio windows of A (n_tok, width) / G (n_tok, width) at once into pooled
// (n_tok/ratio, head_dim), reading the previous window of ratio-4 streams from the state, and
// leaves the state as n_tok compressor_update calls would. Per row bit-equal to the update path.
void compressor_prefill(const CompressorDeviceState& st, const float* A, const float* G,
                        int64_t pos0, int64_t n_tok, float* pooled);

// =============================================================================================
// MoE (engine/ops/moe/moe_cuda.cu)
// =============================================================================================

// quantize_q8_k__block256: x (n_rows, n) F32 -> y (n_rows * n/256) ds4::BlockQ8K (292 bytes
// each), bit-equal to ds4::quantize_act_q8_k (value of largest magnitude, first on ties).
void quantize_q8_k(const float* x, int64_t n_rows, int64_t n, void* y);

// Expert weight types (ds4-model.md §3): row bytes per 256 values iq2_xxs 66, q2_k 84, q4_k 144.
// gate and up always share one type; down has its own. Any of the three is valid for either.
enum class ExpertType { iq2_xxs, q2_k, q4_k };

// Routed experts of n_tok rows (ds4-model.md §4.7 step 4; ds4-dispatch.md §1.2 rows M1 and M2).
struct MoeArgs {
  const void* gate = nullptr;        // (n_expert, ff, d) gate_up_type
  const void* up = nullptr;          // (n_expert, ff, d) gate_up_type
  const void* down = nullptr;        // (n_expert, d, ff) down_type
  ExpertType gate_up_type = ExpertType::iq2_xxs;
  ExpertType down_type = ExpertType::q2_k;
  const float* x = nullptr;          // (n_tok, d) F32 normed FFN input
  const int32_t* experts = nullptr;  // (n_tok, n_used) int32 selected experts, slot order
  const float* weights = nullptr;    // (n_tok, n_used) F32 routing weights
  const uint64_t* iq2_grid = nullptr;// (256) the IQ2_XXS lattice (ggml iq2xxs_grid, uploaded
                                     // once from ds4::quant_detail::kIq2xxsGrid by the caller,
                                     // so that ds4_cuda needs no symbol of ds4_engine); required
                                     // only when gate_up_type or down_type is iq2_xxs
  float* y = nullptr;                // (n_tok, d) F32 routed output (sum over slots)
  float* mid = nullptr;              // optional (n_tok, n_used, ff) F32: weighted SwiGLU output
                                     // (tap ffn_moe_weighted_swiglu); nullptr: kept in scratch
  void* scratch = nullptr;           // moe_scratch_bytes(...) bytes of device memory
  int64_t n_tok = 0;
  int n_expert = 0;
  int n_used = 0;                    // <= 16; n_tok * n_used <= 65535
  int64_t d = 0;                     // multiple of 256
  int64_t ff = 0;                    // multiple of 256
  float limit = 0.0f;                // SwiGLU clamp (none when <= 1e-6)
};
enum class MoeVariant {
  // moe__decode_lut (M1 exact; the name of ds4's decode kernel): x quantised to Q8_K; per
  //   (token, slot) one warp per gate/up row pair computes both IQ2_XXS.Q8_K dots (integer block
  //   sums split across lanes, exact; the F32 block terms added in block order as
  //   dot_iq2_xxs_q8_k), clamped SwiGLU times the routing weight; mid quantised to Q8_K; one warp
  //   per output row computes the Q2_K.Q8_K dot of each slot (block order, as dot_q2_k_q8_k) and
  //   sums the slots in slot order. Same order as expert_ffn_ref + the slot sum of ffn_layer
  //   (differs only by the SwiGLU exp rounding). Any n_tok; per token bit-equal to n_tok = 1.
  //   The dots of every expert type (IQ2_XXS, Q2_K, Q4_K) repeat dot_<type>_q8_k's operations.
  decode_lut,
  // moe__expert_tiles (M1 fast): (token, slot) pairs sorted by expert (stable, deterministic);
  //   per expert and tile of 8 pairs, one warp per weight row dequantises it exactly (F32, as
  //   dequantize_row) and does F32 dots with the F32 activations (no Q8_K), lane-strided with a
  //   shuffle tree; routing weight before down; each token's slots summed in expert-id order.
  //   Mirrors moe_expert_tiles (whose GEMM order is Eigen's): nmse tier.
  expert_tiles,
  // moe__sorted_exact (M1/M2 exact, batched): pairs sorted by expert as expert_tiles; per
  //   (expert, 8 output rows) block one warp per weight row reads the row's blocks once per tile
  //   of up to 8 pairs and computes each pair's Q8_K dot with decode_lut's very operations (the
  //   same templated warp dot, more activations per weight load); down per pair into scratch,
  //   then each token's slots summed in slot order. Bit-equal to decode_lut for every token
  //   and every n_tok (y and mid), by construction; a drop-in for decode_lut at N > 1.
  sorted_exact,
};
const char* variant_name(MoeVariant v);
size_t moe_scratch_bytes(int64_t n_tok, int n_used, int n_expert, int64_t d, int64_t ff,
                         MoeVariant v);
void moe(const MoeArgs& a, MoeVariant v);

}  // namespace ds4::cuda
