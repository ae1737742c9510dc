// ds4/quant.h, part 1: type table, F16/BF16 conversions, Q8_0 blocks, the activation quantisers,
// the Q8_0 / F16 / F32 dots, and FP8 E4M3 / FP4 E2M1 rounding.
// K-quants are in quant_kquants_test.cpp, IQ2_XXS in quant_iq2_xxs_test.cpp.
#include "ds4/quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "ds4/error.h"
#include "quant_test_util.h"

namespace ds4 {
namespace {

using namespace quant_test;

// ============================================================================================
// Type table
// ============================================================================================

TEST(QuantTypes, TableMatchesGgml) {
  struct Row {
    QType type;
    uint32_t id;
    const char* name;
    int elems;
    int bytes;
  };
  const Row rows[] = {
      {QType::F32, 0, "f32", 1, 4},
      {QType::F16, 1, "f16", 1, 2},
      {QType::Q8_0, 8, "q8_0", 32, 34},
      {QType::Q2_K, 10, "q2_K", 256, 84},
      {QType::Q4_K, 12, "q4_K", 256, 144},
      {QType::Q8_K, 15, "q8_K", 256, 292},
      {QType::IQ2_XXS, 16, "iq2_xxs", 256, 66},
      {QType::I32, 26, "i32", 1, 4},
      {QType::BF16, 30, "bf16", 1, 2},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    EXPECT_EQ(static_cast<uint32_t>(r.type), r.id);
    EXPECT_TRUE(qtype_known(r.id));
    const QTypeInfo& info = qtype_info(r.type);
    EXPECT_STREQ(info.name, r.name);
    EXPECT_STREQ(qtype_name(r.type), r.name);
    EXPECT_EQ(info.block_elems, r.elems);
    EXPECT_EQ(info.block_bytes, r.bytes);
    EXPECT_EQ(qtype_from_name(r.name), r.type);  // name -> id -> name round trip
  }
}

TEST(QuantTypes, UnknownIdsAndNames) {
  for (uint32_t id : {2u, 3u, 6u, 7u, 9u, 11u, 13u, 14u, 17u, 29u, 31u, 1000u}) {
    EXPECT_FALSE(qtype_known(id)) << id;
  }
  EXPECT_THROW(qtype_info(static_cast<QType>(2)), Error);
  EXPECT_THROW(qtype_name(static_cast<QType>(99)), Error);
  try {
    qtype_from_name("q5_K");
    FAIL() << "expected ds4::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q5_K"), std::string::npos) << e.what();
  }
  EXPECT_THROW(qtype_from_name(""), Error);
}

TEST(QuantTypes, NamesAreCaseInsensitive) {
  EXPECT_EQ(qtype_from_name("Q8_0"), QType::Q8_0);
  EXPECT_EQ(qtype_from_name("F16"), QType::F16);
  EXPECT_EQ(qtype_from_name("IQ2_XXS"), QType::IQ2_XXS);
  EXPECT_EQ(qtype_from_name("q2_k"), QType::Q2_K);
  EXPECT_EQ(qtype_from_name("Q4_K"), QType::Q4_K);
  EXPECT_EQ(qtype_from_name("BF16"), QType::BF16);
}

TEST(QuantTypes, RowBytes) {
  EXPECT_EQ(qtype_row_bytes(QType::F32, 7), 28u);
  EXPECT_EQ(qtype_row_bytes(QType::F16, 4096), 8192u);
  EXPECT_EQ(qtype_row_bytes(QType::BF16, 3), 6u);
  EXPECT_EQ(qtype_row_bytes(QType::I32, 5), 20u);
  EXPECT_EQ(qtype_row_bytes(QType::Q8_0, 4096), 128u * 34u);
  EXPECT_EQ(qtype_row_bytes(QType::Q2_K, 7168), 28u * 84u);
  EXPECT_EQ(qtype_row_bytes(QType::Q4_K, 2048), 8u * 144u);
  EXPECT_EQ(qtype_row_bytes(QType::Q8_K, 512), 2u * 292u);
  EXPECT_EQ(qtype_row_bytes(QType::IQ2_XXS, 4096), 16u * 66u);
  EXPECT_EQ(qtype_row_bytes(QType::Q8_0, 0), 0u);
  EXPECT_THROW(qtype_row_bytes(QType::Q8_0, 33), Error);
  EXPECT_THROW(qtype_row_bytes(QType::Q2_K, 128), Error);
  EXPECT_THROW(qtype_row_bytes(QType::IQ2_XXS, 255), Error);
  EXPECT_THROW(qtype_row_bytes(QType::F32, -1), Error);
  EXPECT_THROW(qtype_row_bytes(static_cast<QType>(2), 32), Error);
}

TEST(QuantTypes, RowFunctionsRejectBadArguments) {
  std::vector<float> x(64, 1.0f);
  std::vector<uint8_t> buf(1024);
  EXPECT_THROW(quantize_row(QType::Q8_0, x.data(), buf.data(), 33), Error);
  EXPECT_THROW(dequantize_row(QType::Q4_K, buf.data(), x.data(), 64), Error);
  EXPECT_THROW(quantize_row(QType::I32, x.data(), buf.data(), 4), Error);  // no I32 quantiser
  EXPECT_THROW(quantize_row(static_cast<QType>(2), x.data(), buf.data(), 32), Error);
  EXPECT_THROW(dequantize_row(static_cast<QType>(2), buf.data(), x.data(), 32), Error);
}

// ============================================================================================
// F16 / BF16
// ============================================================================================

TEST(QuantF16, KnownBitPatterns) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2e66);      // 0.0999755859375
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);  // largest finite half
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // tie between 65504 (odd) and 65536 -> inf
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-1e6f), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  const uint16_t qnan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(qnan & 0x7c00, 0x7c00);
  EXPECT_NE(qnan & 0x03ff, 0);
  EXPECT_NE(f32_to_f16(bits_float(0x7f800001u)) & 0x03ff, 0);  // signalling NaN stays NaN

  // Normal/subnormal boundary: 2^-14 = 6.103515625e-05 is the smallest normal (0x0400).
  EXPECT_EQ(f32_to_f16(6.103515625e-05f), 0x0400);
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.0f, -24)), 0x03ff);  // largest subnormal
  // Halfway between 0x03ff (odd) and 0x0400: ties to even -> 0x0400.
  EXPECT_EQ(f32_to_f16(std::ldexp(2047.0f, -25)), 0x0400);
  // Halfway between 0x03fe (even) and 0x03ff -> 0x03fe.
  EXPECT_EQ(f32_to_f16(std::ldexp(2045.0f, -25)), 0x03fe);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24 -> 0
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -25)), 0x8000);
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 -> 2
  EXPECT_EQ(f32_to_f16(std::ldexp(5.0f, -25)), 0x0002);  // tie between 2 and 3 -> 2
  EXPECT_EQ(f32_to_f16(1e-10f), 0x0000);

  // Round-to-nearest-even in the normal range (half spacing at 1.0 is 2^-10).
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even 0x3c00
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie -> even 0x3c02
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  EXPECT_EQ(f32_to_f16(2049.0f), 0x6800);  // 2048: tie between 2048 (even) and 2050
  EXPECT_EQ(f32_to_f16(2051.0f), 0x6802);  // 2052: tie between 2050 (odd) and 2052
  EXPECT_EQ(f32_to_f16(2047.5f), 0x6800);  // 2047.5 rounds up across the binade to 2048
}

TEST(QuantF16, DecodeKnownBits) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0200), std::ldexp(1.0f, -15));
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_EQ(f16_to_f32(0x8000), 0.0f);
  EXPECT_EQ(f16_to_f32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));
  EXPECT_EQ(round_f16(0.1f), 0.0999755859375f);
}

TEST(QuantF16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

TEST(QuantBF16, KnownBitPatterns) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_bf16(bits_float(0x3f808000u)), 0x3f80);  // tie -> even 0x3f80
  EXPECT_EQ(f32_to_bf16(bits_float(0x3f818000u)), 0x3f82);  // tie -> even 0x3f82
  EXPECT_EQ(f32_to_bf16(bits_float(0x3f808001u)), 0x3f81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(bits_float(0x7f7fffffu)), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(f32_to_bf16(bits_float(0x00000001u)), 0x0000);  // tiny subnormal -> 0
  // NaN stays NaN, including a signalling NaN whose payload lives only in the low bits.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_float(0x7f800001u)))));
  EXPECT_EQ(f32_to_bf16(bits_float(0x7f800001u)), 0x7fc0);
  EXPECT_EQ(f32_to_bf16(bits_float(0xffc00000u)), 0xffc0);
}

TEST(QuantBF16, EveryBF16RoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h) << std::hex << h;
  }
}

TEST(QuantRows, ScalarTypesRoundTrip) {
  const std::vector<float> x = {1.0f, -2.5f, 0.1f, 65504.0f, -0.0f, 3.0e-6f};
  const int64_t n = static_cast<int64_t>(x.size());
  auto f32 = dequantize(QType::F32, quantize(QType::F32, x).data(), n);
  EXPECT_EQ(f32, x);
  auto f16 = dequantize(QType::F16, quantize(QType::F16, x).data(), n);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(f16[i], round_f16(x[i]));
  auto bq = quantize(QType::BF16, x);
  EXPECT_EQ(bq[0], 0x80);  // little-endian 0x3f80
  EXPECT_EQ(bq[1], 0x3f);
  auto bf = dequantize(QType::BF16, bq.data(), n);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(bf[i], bf16_to_f32(f32_to_bf16(x[i])));

  const uint8_t i32[8] = {0xfb, 0xff, 0xff, 0xff, 0x10, 0x00, 0x00, 0x00};  // -5, 16
  auto iv = dequantize(QType::I32, i32, 2);
  EXPECT_EQ(iv[0], -5.0f);
  EXPECT_EQ(iv[1], 16.0f);
}

// ============================================================================================
// Q8_0
// ============================================================================================

TEST(QuantQ8_0, KnownBlock) {
  // Block 0: d = 0.5 (f16 0x3800), q = {0, 1, -1, 127, -128, 2, 3, ..., 28}: x = 0.5 * q.
  // Block 1: d = -0.25 (f16 0xb400), q[i] = i - 16: x = -0.25 * (i - 16), e.g. x[0] = 4.
  uint8_t blk[68] = {};
  blk[0] = 0x00;
  blk[1] = 0x38;
  const int8_t q0[5] = {0, 1, -1, 127, -128};
  for (int i = 0; i < 32; ++i) {
    const int8_t q = i < 5 ? q0[i] : static_cast<int8_t>(i - 3);
    blk[2 + i] = static_cast<uint8_t>(q);
  }
  blk[34] = 0x00;
  blk[35] = 0xb4;
  for (int i = 0; i < 32; ++i) blk[36 + i] = static_cast<uint8_t>(static_cast<int8_t>(i - 16));
  const auto y = dequantize(QType::Q8_0, blk, 64);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], 0.5f);
  EXPECT_EQ(y[2], -0.5f);
  EXPECT_EQ(y[3], 63.5f);
  EXPECT_EQ(y[4], -64.0f);
  EXPECT_EQ(y[31], 14.0f);  // q = 28
  EXPECT_EQ(y[32], 4.0f);   // -0.25 * -16
  EXPECT_EQ(y[48], -0.0f);
  EXPECT_EQ(y[63], -3.75f);  // -0.25 * 15
}

TEST(QuantQ8_0, QuantiserKnownValues) {
  // x[i] = i - 16: amax = 16, d = 16/127 (stored as f16), q = roundf(x * 127/16).
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i - 16);
  const auto q = quantize(QType::Q8_0, x);
  EXPECT_EQ(q[0] | (q[1] << 8), f32_to_f16(16.0f / 127.0f));
  EXPECT_EQ(static_cast<int8_t>(q[2 + 0]), -127);  // x = -16
  EXPECT_EQ(static_cast<int8_t>(q[2 + 16]), 0);    // x = 0
  EXPECT_EQ(static_cast<int8_t>(q[2 + 17]), 8);    // 7.9375 -> 8
  EXPECT_EQ(static_cast<int8_t>(q[2 + 31]), 119);  // 15 * 7.9375 = 119.06 -> 119
  // An all-zero block has d = 0 and q = 0.
  const auto z = quantize(QType::Q8_0, std::vector<float>(32, 0.0f));
  for (uint8_t b : z) EXPECT_EQ(b, 0);
}

TEST(QuantQ8_0, RoundTripGaussian) {
  const auto x = gaussian(32 * 1024, 1);
  const auto y =
      dequantize(QType::Q8_0, quantize(QType::Q8_0, x).data(), static_cast<int64_t>(x.size()));
  const double err = relative_rmse(x, y);
  RecordProperty("q8_0_relative_rmse", std::to_string(err));
  std::printf("Q8_0 round trip relative RMSE: %.5f\n", err);
  // Measured 0.00533 (seed 1, 32768 values; bound = measured + ~10%): uniform rounding noise
  // d/sqrt(12) with d = amax/127 ~ 2.2/127 against sigma = 1 is ~0.005.
  EXPECT_LT(err, 0.0059);
}

// ============================================================================================
// Activation quantisers
// ============================================================================================

TEST(QuantActQ8_0, ScaleInF32AndTiesToEven) {
  // Block 0: amax = 127 -> d = 1 exactly, so q = lrintf(x): ties go to even.
  // Block 1: amax = 0.3 -> d = 0.3f/127 in F32 (not rounded to F16).
  // Block 2: all zero -> d = 0, q = 0.
  std::vector<float> x(96, 0.0f);
  const float in0[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.49f, -127.0f, 100.25f};
  const int out0[] = {127, 0, 2, 2, 0, -2, -2, 3, -127, 100};
  for (int i = 0; i < 10; ++i) x[static_cast<size_t>(i)] = in0[i];
  for (int i = 0; i < 32; ++i)
    x[static_cast<size_t>(32 + i)] = 0.3f * static_cast<float>(i - 16) / 16.0f;
  std::vector<float> d(3);
  std::vector<int8_t> q(96);
  quantize_act_q8_0(x.data(), 96, d.data(), q.data());
  EXPECT_EQ(d[0], 1.0f);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(q[static_cast<size_t>(i)], out0[i]) << in0[i];
  EXPECT_EQ(float_bits(d[1]), float_bits(0.3f / 127.0f));
  EXPECT_NE(d[1], round_f16(d[1]));  // really F32
  const float id = 1.0f / d[1];
  for (int i = 0; i < 32; ++i) {
    const float xv = x[static_cast<size_t>(32 + i)];
    EXPECT_EQ(q[static_cast<size_t>(32 + i)], static_cast<int8_t>(std::lrintf(xv * id))) << i;
  }
  EXPECT_EQ(q[32], -127);
  EXPECT_EQ(d[2], 0.0f);
  for (int i = 64; i < 96; ++i) EXPECT_EQ(q[static_cast<size_t>(i)], 0);
  EXPECT_THROW(quantize_act_q8_0(x.data(), 40, d.data(), q.data()), Error);
}

TEST(QuantActQ8_K, MatchesGgmlConvention) {
  // Block 0: the largest magnitude is x = -2 -> iscale = -127/-2 = 63.5, d = 1/63.5.
  //   x = 1 -> 63.5 -> 64 (tie to even), x = 0.5 -> 31.75 -> 32, x = -2 -> -127.
  // Block 1: largest is +4 (first of +4 / -4) -> iscale = -31.75: x = 4 -> -127, x = -4 -> 127,
  //   x = 2 -> -63.5 -> -64.
  // Block 2: zero -> d = 0, q = 0, bsums = 0.
  std::vector<float> x(768, 0.0f);
  x[0] = 1.0f;
  x[1] = 0.5f;
  x[17] = -2.0f;
  x[256 + 3] = 4.0f;
  x[256 + 200] = -4.0f;
  x[256 + 201] = 2.0f;
  std::vector<BlockQ8K> y(3);
  quantize_act_q8_k(x.data(), 768, y.data());
  EXPECT_EQ(y[0].d, 1.0f / 63.5f);
  EXPECT_EQ(y[0].qs[0], 64);
  EXPECT_EQ(y[0].qs[1], 32);
  EXPECT_EQ(y[0].qs[17], -127);
  EXPECT_EQ(y[0].bsums[0], 96);
  EXPECT_EQ(y[0].bsums[1], -127);
  EXPECT_EQ(y[0].bsums[2], 0);
  EXPECT_EQ(y[1].d, 1.0f / -31.75f);
  EXPECT_EQ(y[1].qs[3], -127);
  EXPECT_EQ(y[1].qs[200], 127);
  EXPECT_EQ(y[1].qs[201], -64);
  EXPECT_EQ(y[1].bsums[12], 63);
  EXPECT_EQ(y[2].d, 0.0f);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[2].qs[i], 0);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(y[2].bsums[j], 0);
  EXPECT_THROW(quantize_act_q8_k(x.data(), 100, y.data()), Error);
}

TEST(QuantActQ8_K, BlockBytesAndBsums) {
  const auto x = gaussian(512, 7);
  std::vector<BlockQ8K> y(2);
  quantize_act_q8_k(x.data(), 512, y.data());
  // quantize_row(Q8_K) writes the same bytes as the struct (ggml block_q8_K layout).
  const auto bytes = quantize(QType::Q8_K, x);
  ASSERT_EQ(bytes.size(), 584u);
  EXPECT_EQ(std::memcmp(bytes.data(), y.data(), 584), 0);
  for (int b = 0; b < 2; ++b) {
    for (int j = 0; j < 16; ++j) {
      int s = 0;
      for (int i = 0; i < 16; ++i) s += y[static_cast<size_t>(b)].qs[16 * j + i];
      EXPECT_EQ(y[static_cast<size_t>(b)].bsums[j], s);
    }
  }
  const auto back = dequantize(QType::Q8_K, bytes.data(), 512);
  for (int i = 0; i < 512; ++i) {
    const BlockQ8K& b = y[static_cast<size_t>(i / 256)];
    EXPECT_EQ(back[static_cast<size_t>(i)], b.d * static_cast<float>(b.qs[i % 256]));
  }
  EXPECT_LT(relative_rmse(x, back), 0.01);
}

// ============================================================================================
// Dots
// ============================================================================================

TEST(QuantDotQ8_0, MatchesFp64AndStatedOrder) {
  for (int64_t n : {32, 96, 4096, 7168}) {
    SCOPED_TRACE(n);
    const auto wf = gaussian(n, 11 + static_cast<uint32_t>(n), 0.05f);
    const auto x = gaussian(n, 12 + static_cast<uint32_t>(n), 3.0f);
    const auto w = quantize(QType::Q8_0, wf);
    std::vector<float> d(static_cast<size_t>(n / 32));
    std::vector<int8_t> q(static_cast<size_t>(n));
    quantize_act_q8_0(x.data(), n, d.data(), q.data());
    const float got = dot_q8_0_q8_0act(w.data(), d.data(), q.data(), n);

    // fp64 reference of dequant(w) . dequant(act).
    const auto wd = dequantize(QType::Q8_0, w.data(), n);
    double ref = 0.0, abs_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double xv =
          static_cast<double>(d[static_cast<size_t>(i / 32)]) * q[static_cast<size_t>(i)];
      ref += wd[static_cast<size_t>(i)] * xv;
      abs_sum += std::fabs(wd[static_cast<size_t>(i)] * xv);
    }
    EXPECT_NEAR(got, ref, 1e-5 * abs_sum);

    // The stated order, recomputed here: per block isum in int32, acc += (dw*dx) * isum in F32.
    float acc = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b) {
      const uint8_t* blk = w.data() + b * 34;
      const float dw = f16_to_f32(static_cast<uint16_t>(blk[0] | (blk[1] << 8)));
      int32_t isum = 0;
      for (int i = 0; i < 32; ++i) {
        isum += static_cast<int8_t>(blk[2 + i]) * q[static_cast<size_t>(b * 32 + i)];
      }
      const float dd = dw * d[static_cast<size_t>(b)];
      acc += dd * static_cast<float>(isum);
    }
    EXPECT_EQ(float_bits(got), float_bits(acc));
  }
  std::vector<float> d(1);
  std::vector<int8_t> q(32);
  uint8_t w[34] = {};
  EXPECT_THROW(dot_q8_0_q8_0act(w, d.data(), q.data(), 31), Error);
}

TEST(QuantDotF16F32, IndexOrderF32) {
  const int64_t n = 4099;
  const auto wf = gaussian(n, 21);
  const auto x = gaussian(n, 22);
  std::vector<uint16_t> wh(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    wh[static_cast<size_t>(i)] = f32_to_f16(wf[static_cast<size_t>(i)]);
  float acc16 = 0.0f, acc32 = 0.0f;
  double ref16 = 0.0, ref32 = 0.0, abs16 = 0.0, abs32 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float w16 = f16_to_f32(wh[static_cast<size_t>(i)]);
    const float w32 = wf[static_cast<size_t>(i)];
    const float xv = x[static_cast<size_t>(i)];
    acc16 += w16 * xv;
    acc32 += w32 * xv;
    ref16 += static_cast<double>(w16) * xv;
    ref32 += static_cast<double>(w32) * xv;
    abs16 += std::fabs(static_cast<double>(w16) * xv);
    abs32 += std::fabs(static_cast<double>(w32) * xv);
  }
  const float got16 = dot_f16_f32(wh.data(), x.data(), n);
  const float got32 = dot_f32_f32(wf.data(), x.data(), n);
  EXPECT_EQ(float_bits(got16), float_bits(acc16));
  EXPECT_EQ(float_bits(got32), float_bits(acc32));
  EXPECT_NEAR(got16, ref16, 1e-5 * abs16);
  EXPECT_NEAR(got32, ref32, 1e-5 * abs32);
  EXPECT_EQ(dot_f32_f32(wf.data(), x.data(), 0), 0.0f);
}

// ============================================================================================
// FP8 E4M3 / FP4 E2M1
// ============================================================================================

// E4M3 code i (0..126) -> value, written out from the format definition.
float e4m3_value(int i) {
  const int exp = i >> 3;
  const int mant = i & 7;
  if (exp == 0) return std::ldexp(static_cast<float>(mant), -9);
  return std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, exp - 7);
}

TEST(QuantFp8, KnownValues) {
  EXPECT_EQ(round_e4m3(448.0f), 448.0f);
  EXPECT_EQ(round_e4m3(500.0f), 448.0f);  // saturates
  EXPECT_EQ(round_e4m3(-1e9f), -448.0f);
  EXPECT_EQ(round_e4m3(0.0f), 0.0f);
  EXPECT_EQ(round_e4m3(1.0f), 1.0f);
  EXPECT_EQ(round_e4m3(0.001953125f), 0.001953125f);  // 2^-9, smallest subnormal
  EXPECT_EQ(round_e4m3(0.0009765625f), 0.0f);         // 2^-10: tie 0 / 2^-9 -> 0 (even)
  EXPECT_EQ(round_e4m3(0.0009766f), 0.001953125f);    // just above the tie
  EXPECT_EQ(round_e4m3(0.0029296875f), 0.00390625f);  // 1.5 * 2^-9: tie 1 / 2 -> 2
  EXPECT_EQ(round_e4m3(0.005f), 0.005859375f);        // 2.56 units of 2^-9 -> 3
  EXPECT_EQ(round_e4m3(0.015625f), 0.015625f);        // 2^-6, smallest normal
  EXPECT_EQ(round_e4m3(1.0625f), 1.0f);               // tie 1.0 (m=0) / 1.125 (m=1) -> 1.0
  EXPECT_EQ(round_e4m3(1.1875f), 1.25f);              // tie 1.125 (m=1) / 1.25 (m=2) -> 1.25
  EXPECT_EQ(round_e4m3(15.5f), 16.0f);                // tie 15 (m=7) / 16 (m=0) -> 16
  EXPECT_EQ(round_e4m3(432.0f), 448.0f);              // tie 416 (m=5) / 448 (m=6) -> 448
  EXPECT_EQ(round_e4m3(424.0f), 416.0f);
  EXPECT_EQ(round_e4m3(0.3f), 0.3125f);  // 0.3 / 2^-5 = 9.6 -> 10
  EXPECT_EQ(round_e4m3(-1.0625f), -1.0f);
  EXPECT_TRUE(std::isnan(round_e4m3(std::numeric_limits<float>::quiet_NaN())));
}

TEST(QuantFp8, EveryCodeAndEveryMidpoint) {
  for (int i = 0; i <= 126; ++i) {
    const float v = e4m3_value(i);
    ASSERT_EQ(round_e4m3(v), v) << i;
    ASSERT_EQ(round_e4m3(-v), -v) << i;
    if (i == 126) break;
    const float next = e4m3_value(i + 1);
    const float mid = 0.5f * (v + next);  // exact: both are short binary fractions
    const float even = (i % 2 == 0) ? v : next;
    ASSERT_EQ(round_e4m3(mid), even) << i;
    ASSERT_EQ(round_e4m3(std::nextafter(mid, 0.0f)), v) << i;
    ASSERT_EQ(round_e4m3(std::nextafter(mid, 1000.0f)), next) << i;
  }
}

TEST(QuantFp4, KnownValuesAndTies) {
  const float in[] = {0.0f,  0.25f, 0.26f,  0.75f, 1.25f, 1.75f,  2.5f, 3.5f, 5.0f,
                      5.01f, 7.0f,  100.0f, 0.3f,  -2.6f, -0.25f, 1.0f, 6.0f};
  const float out[] = {0.0f, 0.0f, 0.5f, 1.0f, 1.0f,  2.0f,  2.0f, 4.0f, 4.0f,
                       6.0f, 6.0f, 6.0f, 0.5f, -3.0f, -0.0f, 1.0f, 6.0f};
  for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); ++i) {
    EXPECT_EQ(round_e2m1(in[i]), out[i]) << in[i];
  }
  EXPECT_TRUE(std::signbit(round_e2m1(-0.25f)));  // sign of x kept, as ds4
  EXPECT_TRUE(std::isnan(round_e2m1(std::numeric_limits<float>::quiet_NaN())));
}

}  // namespace
}  // namespace ds4
