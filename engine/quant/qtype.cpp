// Type table, names and row sizes of the GGML types we read and write (ds4-model.md §3), the
// scalar F16 / BF16 conversions, and the row-level dequantize/quantize dispatch.
//
// Conversions round to nearest, ties to even, as ds4 (ds4.c f32_to_f16) and ggml
// (ggml_compute_fp32_to_fp16 / _bf16) do; F16 keeps subnormals, overflows to ±inf, maps NaN to a
// quiet NaN; BF16 keeps NaN a NaN by forcing the quiet bit (0x40), as ggml does.
#include <cctype>
#include <cstring>
#include <string>

#include "ds4/error.h"
#include "ds4/quant.h"
#include "quant/quant_detail.h"

namespace ds4 {

using namespace quant_detail;

// ============================================================================================
// Type table
// ============================================================================================

namespace {

struct QTypeEntry {
  QType type;
  QTypeInfo info;
};

// One row per QType value; names are ggml's (ggml_type_name).
constexpr QTypeEntry kTypes[] = {
    {QType::F32, {"f32", 1, 4}},
    {QType::F16, {"f16", 1, 2}},
    {QType::Q8_0, {"q8_0", kQ8_0Elems, kQ8_0Bytes}},
    {QType::Q2_K, {"q2_K", kQKElems, kQ2_KBytes}},
    {QType::Q4_K, {"q4_K", kQKElems, kQ4_KBytes}},
    {QType::Q8_K, {"q8_K", kQKElems, kQ8_KBytes}},
    {QType::IQ2_XXS, {"iq2_xxs", kQKElems, kIQ2_XXSBytes}},
    {QType::I32, {"i32", 1, 4}},
    {QType::BF16, {"bf16", 1, 2}},
};
static_assert(sizeof(kTypes) / sizeof(kTypes[0]) == 9, "one table row per QType value");

const QTypeEntry* find_type(uint32_t id) {
  for (const QTypeEntry& e : kTypes) {
    if (static_cast<uint32_t>(e.type) == id) return &e;
  }
  return nullptr;
}

std::string lower(const std::string& s) {
  std::string out = s;
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

bool qtype_known(uint32_t id) { return find_type(id) != nullptr; }

const QTypeInfo& qtype_info(QType type) {
  const QTypeEntry* e = find_type(static_cast<uint32_t>(type));
  if (!e) fail("unknown ggml type id " + std::to_string(static_cast<uint32_t>(type)));
  return e->info;
}

const char* qtype_name(QType type) { return qtype_info(type).name; }

QType qtype_from_name(const std::string& name) {
  const std::string want = lower(name);
  for (const QTypeEntry& e : kTypes) {
    if (lower(e.info.name) == want) return e.type;
  }
  fail("unknown quant type name '" + name + "'");
}

size_t qtype_row_bytes(QType type, int64_t n) {
  const QTypeInfo& info = qtype_info(type);
  if (n < 0 || n % info.block_elems != 0) {
    fail(std::string("row of ") + std::to_string(n) + " elements is not a multiple of the " +
         info.name + " block size " + std::to_string(info.block_elems));
  }
  return static_cast<size_t>(n / info.block_elems) * static_cast<size_t>(info.block_bytes);
}

// ============================================================================================
// F16 / BF16 scalar conversions
// ============================================================================================

namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);  // ±0
  // Subnormal: mant * 2^-24. Normalise: shift until the implicit bit (0x400) is set.
  int e = 113;  // biased float exponent of 2^-14
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return bits_float(sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3ffu) << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;  // |f| bits
  if (a > 0x7f800000u) {
    // NaN: quiet, keeping the top payload bits.
    return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  // 65520 = 0x477ff000 is halfway between 65504 (odd mantissa) and 65536: ties-to-even -> inf.
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) {
    // Normal half (|f| >= 2^-14): rebias the exponent (127 -> 15), then round the 13 dropped
    // mantissa bits to nearest even; a mantissa carry correctly bumps the exponent.
    const uint32_t r = a - (112u << 23);
    return static_cast<uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
  // Subnormal half: units of 2^-24. 2^-25 (0x33000000) is the tie between 0 and 2^-24 -> 0.
  if (a <= 0x33000000u) return sign;
  const uint32_t e = a >> 23;  // 102..112 here; |f| = m * 2^(e-150)
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // |f| / 2^-24 = m >> shift (14..24)
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // h may become 0x400 = 2^-14, still right
  return static_cast<uint16_t>(sign | h);
}

float bf16_to_f32(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN (quiet bit forced)
  }
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// ============================================================================================
// Row dispatch
// ============================================================================================

namespace {

int64_t block_count(QType type, int64_t n, const char* what) {
  const QTypeInfo& info = qtype_info(type);
  if (n < 0 || n % info.block_elems != 0) {
    fail(std::string(what) + ": " + std::to_string(n) + " elements is not a multiple of the " +
         info.name + " block size " + std::to_string(info.block_elems));
  }
  return n / info.block_elems;
}

}  // namespace

void dequantize_row(QType type, const void* src, float* dst, int64_t n) {
  const int64_t nb = block_count(type, n, "dequantize_row");
  const auto* s = static_cast<const uint8_t*>(src);
  switch (type) {
    case QType::F32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case QType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(s + 2 * i));
      return;
    case QType::BF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(s + 2 * i));
      return;
    case QType::I32:
      for (int64_t i = 0; i < n; ++i) {
        dst[i] = static_cast<float>(static_cast<int32_t>(load_u32(s + 4 * i)));
      }
      return;
    case QType::Q8_0:
      dequantize_q8_0(s, dst, nb);
      return;
    case QType::Q8_K:
      dequantize_q8_k(s, dst, nb);
      return;
    case QType::Q2_K:
      dequantize_q2_k(s, dst, nb);
      return;
    case QType::Q4_K:
      dequantize_q4_k(s, dst, nb);
      return;
    case QType::IQ2_XXS:
      dequantize_iq2_xxs(s, dst, nb);
      return;
  }
  fail(std::string("dequantize_row: unsupported type ") + qtype_name(type));
}

void quantize_row(QType type, const float* src, void* dst, int64_t n) {
  const int64_t nb = block_count(type, n, "quantize_row");
  auto* d = static_cast<uint8_t*>(dst);
  switch (type) {
    case QType::F32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case QType::F16:
      for (int64_t i = 0; i < n; ++i) store_u16(d + 2 * i, f32_to_f16(src[i]));
      return;
    case QType::BF16:
      for (int64_t i = 0; i < n; ++i) store_u16(d + 2 * i, f32_to_bf16(src[i]));
      return;
    case QType::Q8_0:
      quantize_q8_0(src, d, nb);
      return;
    case QType::Q8_K:
      for (int64_t b = 0; b < nb; ++b) {
        BlockQ8K blk;
        quantize_act_q8_k(src + b * kQKElems, kQKElems, &blk);
        std::memcpy(d + b * kQ8_KBytes, &blk, sizeof(blk));  // host struct == ggml block bytes
      }
      return;
    case QType::Q2_K:
      quantize_q2_k(src, d, nb);
      return;
    case QType::Q4_K:
      quantize_q4_k(src, d, nb);
      return;
    case QType::IQ2_XXS:
      quantize_iq2_xxs(src, d, nb);
      return;
    case QType::I32:
      break;
  }
  fail(std::string("quantize_row: unsupported type ") + qtype_name(type));
}

}  // namespace ds4
