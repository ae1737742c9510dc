// ds4/quant.h, part 2: Q2_K and Q4_K blocks (hand-built bytes), reference quantisers (round-trip
// error), and their dots with a Q8_K activation against an fp64 reference.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ds4/error.h"
#include "ds4/quant.h"
#include "quant_test_util.h"

namespace ds4 {
namespace {

using namespace quant_test;

void put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// ============================================================================================
// Q2_K
// ============================================================================================

// Q2_K block with d = 0.5 (f16 0x3800) and dmin = 0.25 (0x3400), group g having scale s_g = g
// (low nibble) and min m_g = 15 - g (high nibble), so element value = 0.5*g*q - 0.25*(15 - g).
std::vector<uint8_t> q2k_block(const uint8_t qs[64]) {
  std::vector<uint8_t> blk(84, 0);
  for (int g = 0; g < 16; ++g)
    blk[static_cast<size_t>(g)] = static_cast<uint8_t>(g | ((15 - g) << 4));
  for (int i = 0; i < 64; ++i) blk[static_cast<size_t>(16 + i)] = qs[i];
  put16(&blk[80], 0x3800);
  put16(&blk[82], 0x3400);
  return blk;
}

TEST(QuantQ2_K, KnownBlock) {
  uint8_t qs[64] = {};
  // qs[0] = 0b11'10'01'00: the 2-bit fields at shifts 0, 2, 4, 6 hold 0, 1, 2, 3. Byte qs[32h + l]
  // (h = 0, l = 0) feeds elements 32j + 0 for j = 0..3, i.e. elements 0, 32, 64, 96, in groups
  // 2j = 0, 2, 4, 6:
  //   e0:  q=0, g=0: 0.5*0*0 - 0.25*15 = -3.75
  //   e32: q=1, g=2: 0.5*2*1 - 0.25*13 = -2.25
  //   e64: q=2, g=4: 0.5*4*2 - 0.25*11 =  1.25
  //   e96: q=3, g=6: 0.5*6*3 - 0.25*9  =  6.75
  qs[0] = 0xe4;
  // qs[16] = 0b00'00'00'11: element 16 (h = 0, j = 0, l = 16 -> group 1) has q = 3:
  //   e16: 0.5*1*3 - 0.25*14 = -2.0; elements 48, 80, 112 (groups 3, 5, 7) have q = 0.
  qs[16] = 0x03;
  // qs[48] = 0b10'00'00'00: byte 32h + l with h = 1, l = 16; shift 6 is j = 3, so element
  // 128 + 96 + 16 = 240 in group 8 + 6 + 1 = 15 has q = 2: 0.5*15*2 - 0.25*0 = 15.0.
  qs[48] = 0x80;
  // qs[63] = 0b00'00'01'00: h = 1, l = 31, shift 2 (j = 1): element 128 + 32 + 31 = 191,
  // group 8 + 2 + 1 = 11, q = 1: 0.5*11*1 - 0.25*4 = 4.5.
  qs[63] = 0x04;
  const auto blk = q2k_block(qs);
  const auto y = dequantize(QType::Q2_K, blk.data(), 256);
  EXPECT_EQ(y[0], -3.75f);
  EXPECT_EQ(y[32], -2.25f);
  EXPECT_EQ(y[64], 1.25f);
  EXPECT_EQ(y[96], 6.75f);
  EXPECT_EQ(y[16], -2.0f);
  EXPECT_EQ(y[48], -0.25f * 12);
  EXPECT_EQ(y[240], 15.0f);
  EXPECT_EQ(y[191], 4.5f);
  EXPECT_EQ(y[1], -3.75f);        // q = 0 in group 0
  EXPECT_EQ(y[255], -0.25f * 0);  // q = 0 in group 15
  EXPECT_EQ(y[130], -0.25f * 7);  // q = 0 in group 8
}

TEST(QuantQ2_K, ElementOrderMatchesDocumentedLayout) {
  // Every byte random; expected values from ds4-model.md §3 written out independently:
  // for half h, shift index j: values [128h+32j+0..15] = (qs[32h+0..15] >> 2j) & 3, group 8h+2j;
  // values [128h+32j+16..31] = (qs[32h+16..31] >> 2j) & 3, group 8h+2j+1.
  auto blk = random_bytes(84, 5);
  put16(&blk[80], f32_to_f16(0.75f));
  put16(&blk[82], f32_to_f16(-0.125f));  // negative dmin is legal in the format
  const auto y = dequantize(QType::Q2_K, blk.data(), 256);
  const float d = 0.75f, dmin = -0.125f;
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < 4; ++j) {
      for (int half = 0; half < 2; ++half) {
        const int g = 8 * h + 2 * j + half;
        const uint8_t sc = blk[static_cast<size_t>(g)];
        for (int l = 0; l < 16; ++l) {
          const int q = (blk[static_cast<size_t>(16 + 32 * h + 16 * half + l)] >> (2 * j)) & 3;
          const float want = d * static_cast<float>(sc & 0xf) * static_cast<float>(q) -
                             dmin * static_cast<float>(sc >> 4);
          EXPECT_EQ(y[static_cast<size_t>(128 * h + 32 * j + 16 * half + l)], want);
        }
      }
    }
  }
}

TEST(QuantQ2_K, RoundTripGaussian) {
  const auto x = gaussian(256 * 256, 2);
  const auto y =
      dequantize(QType::Q2_K, quantize(QType::Q2_K, x).data(), static_cast<int64_t>(x.size()));
  const double err = relative_rmse(x, y);
  RecordProperty("q2_k_relative_rmse", std::to_string(err));
  std::printf("Q2_K round trip relative RMSE: %.4f\n", err);
  // Measured 0.2697 (seed 2, 65536 values; bound = measured + ~10%). Rounding alone with 4
  // levels over the range of 16 Gaussian values (~3.5 sigma) gives ~0.34; the least-squares
  // grid search recovers part of that, the 4-bit scales and mins lose a little.
  EXPECT_LT(err, 0.30);
}

TEST(QuantQ2_K, QuantiserEdgeBlocks) {
  // Zero block -> zero; a constant negative block is fitted with scale 0 and min = -x, exact
  // here because dmin = 1.875/15 = 0.125 is an F16 value; a constant positive block is exact up
  // to the F16 rounding of d*s (x = d*s*q with q = 3).
  std::vector<float> x(768, 0.0f);
  for (int i = 256; i < 512; ++i) x[static_cast<size_t>(i)] = -1.875f;
  for (int i = 512; i < 768; ++i) x[static_cast<size_t>(i)] = 2.0f;
  const auto y = dequantize(QType::Q2_K, quantize(QType::Q2_K, x).data(), 768);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], 0.0f);
  for (int i = 256; i < 512; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], -1.875f);
  for (int i = 512; i < 768; ++i) EXPECT_NEAR(y[static_cast<size_t>(i)], 2.0f, 2e-3f);
}

// ============================================================================================
// Q4_K
// ============================================================================================

// Scale/min pairs used below (6 bits each), sub-blocks 0..7.
constexpr int kSc[8] = {1, 2, 63, 0, 17, 42, 33, 63};
constexpr int kMn[8] = {5, 0, 7, 63, 48, 21, 3, 63};

// Packs kSc/kMn by hand in ggml's get_scale_min_k4 layout:
//   bytes 0..3: low 6 bits = sc[0..3], top 2 bits = sc[4..7] >> 4
//   bytes 4..7: low 6 bits = m[0..3],  top 2 bits = m[4..7] >> 4
//   bytes 8..11: low nibble = sc[4..7] & 15, high nibble = m[4..7] & 15
void pack_q4k_scales(uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(kSc[j] | ((kSc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>(kMn[j] | ((kMn[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((kSc[j + 4] & 15) | ((kMn[j + 4] & 15) << 4));
  }
}

TEST(QuantQ4_K, ScalePackingDecodes) {
  // With d = 1, dmin = 1: qs = 0 gives -m, qs = 0x11 (q = 1 in both nibbles) gives sc - m.
  std::vector<uint8_t> blk(2 * 144, 0);
  for (int b = 0; b < 2; ++b) {
    uint8_t* p = &blk[static_cast<size_t>(144 * b)];
    put16(p, 0x3c00);
    put16(p + 2, 0x3c00);
    pack_q4k_scales(p + 4);
    for (int i = 0; i < 128; ++i) p[16 + i] = b == 0 ? 0x00 : 0x11;
  }
  // Byte check of the packing for one sub-block with high bits: sc[5] = 42 = 0b10'1010 ->
  // s[9] low nibble 0b1010 and s[1] bits 6..7 = 0b10; m[5] = 21 = 0b01'0101 -> s[9] high nibble
  // 0b0101 and s[5] bits 6..7 = 0b01. So s[9] = 0x5a, s[1] = 2 | 0x80, s[5] = 0 | 0x40.
  EXPECT_EQ(blk[4 + 9], 0x5a);
  EXPECT_EQ(blk[4 + 1], 0x82);
  EXPECT_EQ(blk[4 + 5], 0x40);
  const auto y = dequantize(QType::Q4_K, blk.data(), 512);
  for (int s = 0; s < 8; ++s) {
    for (int i = 0; i < 32; ++i) {
      EXPECT_EQ(y[static_cast<size_t>(32 * s + i)], static_cast<float>(-kMn[s])) << s;
      EXPECT_EQ(y[static_cast<size_t>(256 + 32 * s + i)], static_cast<float>(kSc[s] - kMn[s])) << s;
    }
  }
}

TEST(QuantQ4_K, KnownBlockNibbleOrder) {
  // d = 0.5, dmin = 0.25, scales as kSc/kMn. Value = 0.5*sc*q - 0.25*m.
  uint8_t blk[144] = {};
  put16(blk, 0x3800);
  put16(blk + 2, 0x3400);
  pack_q4k_scales(blk + 4);
  uint8_t* qs = blk + 16;
  qs[0] = 0xa3;    // low nibble 3 -> element 0 (sub-block 0); high nibble 10 -> element 32 (sub 1)
  qs[31] = 0x0f;   // low 15 -> element 31 (sub 0); high 0 -> element 63 (sub 1)
  qs[32] = 0x71;   // chunk 1: low 1 -> element 64 (sub 2); high 7 -> element 96 (sub 3)
  qs[104] = 0xc5;  // chunk 3, l = 8: low 5 -> element 200 (sub 6); high 12 -> element 232 (sub 7)
  const auto y = dequantize(QType::Q4_K, blk, 256);
  EXPECT_EQ(y[0], 0.5f * 1 * 3 - 0.25f * 5);       //  0.25
  EXPECT_EQ(y[32], 0.5f * 2 * 10 - 0.25f * 0);     // 10.0
  EXPECT_EQ(y[31], 0.5f * 1 * 15 - 0.25f * 5);     //  6.25
  EXPECT_EQ(y[63], -0.0f);                         //  q = 0, m = 0
  EXPECT_EQ(y[64], 0.5f * 63 * 1 - 0.25f * 7);     // 29.75
  EXPECT_EQ(y[96], 0.5f * 0 * 7 - 0.25f * 63);     // -15.75
  EXPECT_EQ(y[200], 0.5f * 33 * 5 - 0.25f * 3);    // 81.75
  EXPECT_EQ(y[232], 0.5f * 63 * 12 - 0.25f * 63);  // 362.25
  EXPECT_EQ(y[1], -1.25f);                         // q = 0 in sub-block 0
}

TEST(QuantQ4_K, RoundTripGaussian) {
  const auto x = gaussian(256 * 256, 3);
  const auto y =
      dequantize(QType::Q4_K, quantize(QType::Q4_K, x).data(), static_cast<int64_t>(x.size()));
  const double err = relative_rmse(x, y);
  RecordProperty("q4_k_relative_rmse", std::to_string(err));
  std::printf("Q4_K round trip relative RMSE: %.4f\n", err);
  // Measured 0.0709 (seed 3, 65536 values; bound = measured + ~10%): rounding alone with 16
  // levels over the range of 32 Gaussian values (~4.2 sigma) gives ~0.08; the least-squares grid
  // search recovers part of that.
  EXPECT_LT(err, 0.078);
}

TEST(QuantQ4_K, QuantiserEdgeBlocks) {
  // Constant negative block: min = 63/64 = 63 * dmin with dmin = 1/64, exact in F16.
  std::vector<float> x(512, 0.0f);
  for (int i = 256; i < 512; ++i) x[static_cast<size_t>(i)] = -0.984375f;
  const auto y = dequantize(QType::Q4_K, quantize(QType::Q4_K, x).data(), 512);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], 0.0f);
  for (int i = 256; i < 512; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], -0.984375f);
}

// ============================================================================================
// Dots with Q8_K
// ============================================================================================

using DotFn = float (*)(const void*, const BlockQ8K*, int64_t);

void check_dot(QType wtype, DotFn dot, const std::vector<uint8_t>& w, int64_t n, uint32_t seed) {
  const auto x = gaussian(n, seed, 2.0f);
  std::vector<BlockQ8K> act(static_cast<size_t>(n / 256));
  quantize_act_q8_k(x.data(), n, act.data());
  const float got = dot(w.data(), act.data(), n);
  const DotCheck r = ref_dot_q8k(wtype, w.data(), act, n);
  EXPECT_NEAR(got, r.ref, 1e-5 * r.abs_sum) << qtype_name(wtype) << " n=" << n;
}

TEST(QuantDotQ2_K, MatchesFp64) {
  for (int64_t n : {256, 1792, 7168}) {
    // Weights from the quantiser, and raw random blocks (every scale/min/quant pattern).
    check_dot(QType::Q2_K, dot_q2_k_q8_k, quantize(QType::Q2_K, gaussian(n, 31, 0.02f)), n, 32);
    auto raw = random_bytes(qtype_row_bytes(QType::Q2_K, n), 33);
    for (int64_t b = 0; b < n / 256; ++b) {
      put16(&raw[static_cast<size_t>(84 * b + 80)], f32_to_f16(0.01f * static_cast<float>(b + 1)));
      put16(&raw[static_cast<size_t>(84 * b + 82)], f32_to_f16(0.003f * static_cast<float>(b + 2)));
    }
    check_dot(QType::Q2_K, dot_q2_k_q8_k, raw, n, 34);
  }
  std::vector<uint8_t> w(84);
  std::vector<BlockQ8K> a(1);
  EXPECT_THROW(dot_q2_k_q8_k(w.data(), a.data(), 100), Error);
}

TEST(QuantDotQ2_K, StatedBlockFormula) {
  // One block recomputed by the formula in the header comment of dot_q2_k_q8_k:
  // acc = y.d*d * isum - y.d*dmin * summs, with F32 products in that grouping.
  const int64_t n = 512;
  const auto w = quantize(QType::Q2_K, gaussian(n, 41, 0.02f));
  const auto x = gaussian(n, 42);
  std::vector<BlockQ8K> act(2);
  quantize_act_q8_k(x.data(), n, act.data());
  float acc = 0.0f;
  for (int b = 0; b < 2; ++b) {
    const uint8_t* blk = &w[static_cast<size_t>(84 * b)];
    const BlockQ8K& y = act[static_cast<size_t>(b)];
    int summs = 0;
    for (int j = 0; j < 16; ++j) summs += y.bsums[j] * (blk[j] >> 4);
    int isum = 0;
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 4; ++j) {
        for (int half = 0; half < 2; ++half) {
          int isuml = 0;
          for (int l = 0; l < 16; ++l) {
            const int e = 128 * h + 32 * j + 16 * half + l;
            isuml += y.qs[e] * ((blk[16 + 32 * h + 16 * half + l] >> (2 * j)) & 3);
          }
          isum += (blk[8 * h + 2 * j + half] & 0xf) * isuml;
        }
      }
    }
    const float dall = y.d * f16_to_f32(static_cast<uint16_t>(blk[80] | (blk[81] << 8)));
    const float dmin = y.d * f16_to_f32(static_cast<uint16_t>(blk[82] | (blk[83] << 8)));
    acc += dall * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  EXPECT_EQ(float_bits(dot_q2_k_q8_k(w.data(), act.data(), n)), float_bits(acc));
}

TEST(QuantDotQ4_K, MatchesFp64) {
  for (int64_t n : {256, 1792, 7168}) {
    check_dot(QType::Q4_K, dot_q4_k_q8_k, quantize(QType::Q4_K, gaussian(n, 51, 0.02f)), n, 52);
    auto raw = random_bytes(qtype_row_bytes(QType::Q4_K, n), 53);
    for (int64_t b = 0; b < n / 256; ++b) {
      put16(&raw[static_cast<size_t>(144 * b)], f32_to_f16(0.001f * static_cast<float>(b + 1)));
      put16(&raw[static_cast<size_t>(144 * b + 2)],
            f32_to_f16(0.0005f * static_cast<float>(b + 3)));
    }
    check_dot(QType::Q4_K, dot_q4_k_q8_k, raw, n, 54);
  }
  std::vector<uint8_t> w(144);
  std::vector<BlockQ8K> a(1);
  EXPECT_THROW(dot_q4_k_q8_k(w.data(), a.data(), 300), Error);
}

}  // namespace
}  // namespace ds4
