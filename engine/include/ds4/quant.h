// Quantised block formats (GGML ids and byte layouts, ds4-model.md §3) with reference
// dequantisation, reference quantisers and the dot products the DS4 numerics use.
//
// Reduction orders are part of the contract: every dot below accumulates in the order its
// comment states, so a faster kernel can be checked against it bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ds4 {

// GGML type ids as stored in GGUF tensor infos.
enum class QType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q8_0 = 8,
  Q2_K = 10,
  Q4_K = 12,
  Q8_K = 15,
  IQ2_XXS = 16,
  I32 = 26,
  BF16 = 30,
};

struct QTypeInfo {
  const char* name;   // "q8_0", "iq2_xxs", ... (ggml's names)
  int block_elems;    // elements per block (1 for scalar types)
  int block_bytes;    // bytes per block
};

// True if `id` is one of the QType values above.
bool qtype_known(uint32_t id);
// Info for a known type (throws ds4::Error for an unknown one).
const QTypeInfo& qtype_info(QType type);
const char* qtype_name(QType type);
// Parses "q8_0", "F16", ... (case-insensitive); throws ds4::Error naming the string if unknown.
QType qtype_from_name(const std::string& name);
// Bytes of a row of n elements; throws ds4::Error if n is not a multiple of the block size.
size_t qtype_row_bytes(QType type, int64_t n);

// ---- scalar conversions (round to nearest even, as ds4 and ggml do) ----
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
inline float round_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

// ---- whole rows ----
// Dequantise n elements (a multiple of the block size) of `type` at src into dst (F32).
// Supported for F32 F16 BF16 Q8_0 Q8_K Q2_K Q4_K IQ2_XXS and I32 (converted to float).
void dequantize_row(QType type, const void* src, float* dst, int64_t n);
// Reference quantiser: F32 -> `type` (not optimal, but deterministic and round-trip tested).
// Supported for F32 F16 BF16 Q8_0 Q8_K Q2_K Q4_K IQ2_XXS.
void quantize_row(QType type, const float* src, void* dst, int64_t n);

// ---- activation formats used inside dot products (ds4 numerics) ----
// Q8_0 activation: per 32-block, d = amax/127 kept in F32 (not F16 as in ggml's block),
// q = lrintf(x * (1/d)) (ties to even), clamped to [-128, 127]; d = 0 gives q = 0.
// d has n/32 entries, q has n.
void quantize_act_q8_0(const float* x, int64_t n, float* d, int8_t* q);

// Q8_K activation block (ggml's block_q8_K): 256 values.
struct BlockQ8K {
  float d;             // scale (F32)
  int8_t qs[256];      // quants
  int16_t bsums[16];   // sums of qs in groups of 16
};
static_assert(sizeof(BlockQ8K) == 292, "block_q8_K is 292 bytes");
// ggml's quantize_row_q8_K: per 256-block, take the value of largest magnitude `max`,
// iscale = -127/max, q = nearest_int(iscale * x) clamped to 127, d = 1/iscale; all-zero block -> d = 0.
void quantize_act_q8_k(const float* x, int64_t n, BlockQ8K* y);

// Dot of one Q8_0 weight row (n/32 blocks of 34 bytes) with a Q8_0 activation (d, q).
// Order: for block b = 0..n/32-1 in order: isum = Σ_{i<32} qw*qx (int32), acc += (dw*dx) * isum
// with dw = f16_to_f32(block d) and dx = d[b]; acc is F32 starting at 0.
float dot_q8_0_q8_0act(const void* w_row, const float* act_d, const int8_t* act_q, int64_t n);

// Dots of one K-quant / IQ2 weight row with a Q8_K activation (n/256 blocks), each returns the
// F32 sum over blocks in order 0..n/256-1 of the per-block value given in ds4-model.md §13.2
// (ggml's scalar vec_dot_*_q8_K formulas).
float dot_q2_k_q8_k(const void* w_row, const BlockQ8K* act, int64_t n);
float dot_q4_k_q8_k(const void* w_row, const BlockQ8K* act, int64_t n);
float dot_iq2_xxs_q8_k(const void* w_row, const BlockQ8K* act, int64_t n);

// Dot of one F16 weight row with F32 activations, F32 accumulation in index order 0..n-1.
float dot_f16_f32(const uint16_t* w_row, const float* x, int64_t n);
// Dot of F32 with F32, F32 accumulation in index order 0..n-1.
float dot_f32_f32(const float* w_row, const float* x, int64_t n);

// ---- FP8 / FP4 simulation (ds4 numerics profile) ----
// Nearest FP8 E4M3 value of x (|x| <= 448 expected; ties to even mantissa).
float round_e4m3(float x);
// Nearest FP4 E2M1 value of x from {0, .5, 1, 1.5, 2, 3, 4, 6} with sign (ties to even index).
float round_e2m1(float x);

}  // namespace ds4
