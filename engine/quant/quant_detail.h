// Internal to engine/quant: per-format block routines behind the row functions of ds4/quant.h,
// and the IQ2_XXS tables. Nothing outside engine/quant includes this; the public contract is
// ds4/quant.h.
//
// Every function here takes whole blocks: `nb` is a block count, the caller (quantize_row /
// dequantize_row / the dot entry points) has already checked that n is a multiple of the block.
#pragma once
#include <cstdint>

namespace ds4::quant_detail {

// ---- block sizes (ggml QK8_0 / QK_K and the byte sizes of the ggml block structs) ----
constexpr int kQ8_0Elems = 32;
constexpr int kQ8_0Bytes = 34;     // f16 d; int8 q[32]
constexpr int kQKElems = 256;      // super-block of the K-quants, Q8_K and IQ2_XXS
constexpr int kQ8_KBytes = 292;    // float d; int8 qs[256]; int16 bsums[16]
constexpr int kQ2_KBytes = 84;     // uint8 scales[16]; uint8 qs[64]; f16 d; f16 dmin
constexpr int kQ4_KBytes = 144;    // f16 d; f16 dmin; uint8 scales[12]; uint8 qs[128]
constexpr int kIQ2_XXSBytes = 66;  // f16 d; uint16 qs[32]

// ---- Q8_0 / Q8_K (q8.cpp) ----
void dequantize_q8_0(const uint8_t* src, float* dst, int64_t nb);
void quantize_q8_0(const float* src, uint8_t* dst, int64_t nb);
void dequantize_q8_k(const uint8_t* src, float* dst, int64_t nb);

// ---- K-quants (kquants.cpp) ----
void dequantize_q2_k(const uint8_t* src, float* dst, int64_t nb);
void quantize_q2_k(const float* src, uint8_t* dst, int64_t nb);
void dequantize_q4_k(const uint8_t* src, float* dst, int64_t nb);
void quantize_q4_k(const float* src, uint8_t* dst, int64_t nb);

// ---- IQ2_XXS (iq2_xxs.cpp, iq2_xxs_tables.cpp) ----
void dequantize_iq2_xxs(const uint8_t* src, float* dst, int64_t nb);
void quantize_iq2_xxs(const float* src, uint8_t* dst, int64_t nb);

// ggml's iq2xxs_grid (data, see iq2_xxs_tables.cpp): byte j of entry g = magnitude of element j.
extern const uint64_t kIq2xxsGrid[256];

// ggml's ksigns_iq2xs[i] for i in 0..127: the 7 sign bits of elements 0..6 plus, in bit 7, their
// parity, so every 8-bit sign mask has an even number of set bits (bit j set = element j < 0).
inline uint8_t iq2_sign_mask(uint32_t index7) {
  uint32_t parity = 0;
  for (int b = 0; b < 7; ++b) parity ^= (index7 >> b) & 1u;
  return static_cast<uint8_t>((index7 & 127u) | (parity << 7));
}

// Byte j (0..7) of grid entry g, i.e. ggml's ((const uint8_t*)(iq2xxs_grid + g))[j] on a
// little-endian host, written so that it does not depend on the host byte order.
inline int iq2_grid_value(int g, int j) {
  return static_cast<int>((kIq2xxsGrid[g] >> (8 * j)) & 0xffu);
}

// ---- little-endian field access (the block layouts are little-endian on disk) ----
inline uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
inline void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline void store_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>((v >> (8 * i)) & 0xff);
}

}  // namespace ds4::quant_detail
