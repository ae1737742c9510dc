// ds4/quant.h, part 3: IQ2_XXS. The grid and sign tables are read back through dequantize_row
// and checked against ggml's (entries and a checksum), then a hand-built block, the reference
// quantiser and the dot with Q8_K.
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

void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>((v >> (8 * i)) & 0xff);
}

// Sets sub-block ib of the block at blk: grid indices g[0..3], sign indices sg[0..3], scale s.
void set_sub(uint8_t* blk, int ib, const int g[4], const uint32_t sg[4], uint32_t s) {
  uint8_t* p = blk + 2 + 8 * ib;
  for (int l = 0; l < 4; ++l) p[l] = static_cast<uint8_t>(g[l]);
  put32(p + 4, sg[0] | (sg[1] << 7) | (sg[2] << 14) | (sg[3] << 21) | (s << 28));
}

// Reads the whole grid back: 8 blocks with d = 1 (f16 0x3c00) and every sub-block at s = 1,
// so db = 1 * (0.5 + 1) * 0.25 = 0.375 and each value is 0.375 * grid byte (exact in F32).
std::vector<uint64_t> grid_from_dequant() {
  std::vector<uint8_t> blk(8 * 66, 0);
  for (int b = 0; b < 8; ++b) {
    put16(&blk[static_cast<size_t>(66 * b)], 0x3c00);
    for (int ib = 0; ib < 8; ++ib) {
      const int base = 32 * b + 4 * ib;
      const int g[4] = {base, base + 1, base + 2, base + 3};
      const uint32_t sg[4] = {0, 0, 0, 0};
      set_sub(&blk[static_cast<size_t>(66 * b)], ib, g, sg, 1);
    }
  }
  const auto y = dequantize(QType::IQ2_XXS, blk.data(), 8 * 256);
  std::vector<uint64_t> grid(256, 0);
  for (int g = 0; g < 256; ++g) {
    for (int j = 0; j < 8; ++j) {
      const float v = y[static_cast<size_t>(8 * g + j)] / 0.375f;
      grid[static_cast<size_t>(g)] |= static_cast<uint64_t>(static_cast<int>(v)) << (8 * j);
    }
  }
  return grid;
}

TEST(QuantIQ2_XXS, GridMatchesGgml) {
  const auto grid = grid_from_dequant();
  // Entries as printed in ggml's iq2xxs_grid (src/ggml-common.h).
  EXPECT_EQ(grid[0], 0x0808080808080808ull);
  EXPECT_EQ(grid[1], 0x080808080808082bull);
  EXPECT_EQ(grid[17], 0x080808082b080808ull);
  EXPECT_EQ(grid[100], 0x08192b0808081908ull);
  EXPECT_EQ(grid[254], 0x2b2b2b0819190808ull);
  EXPECT_EQ(grid[255], 0x2b2b2b1908081908ull);
  // 64-bit FNV-1a over the 2048 little-endian bytes of ggml's table: 0xbb4ee025b5ac6e8e
  // (computed from ggml-org/ggml src/ggml-common.h; antirez/ds4's ds4.c copy gives the same).
  uint64_t h = 0xcbf29ce484222325ull;
  uint64_t sum = 0;
  for (uint64_t e : grid) {
    sum += e;
    for (int j = 0; j < 8; ++j) {
      h ^= (e >> (8 * j)) & 0xff;
      h *= 0x100000001b3ull;
    }
  }
  EXPECT_EQ(h, 0xbb4ee025b5ac6e8eull);
  EXPECT_EQ(sum, 0x8b267e217ce24363ull);  // plain sum mod 2^64, same source
  // Structure: bytes are 8, 25 or 43 and the entries are strictly ascending.
  for (int g = 0; g < 256; ++g) {
    for (int j = 0; j < 8; ++j) {
      const uint64_t v = (grid[static_cast<size_t>(g)] >> (8 * j)) & 0xff;
      EXPECT_TRUE(v == 0x08 || v == 0x19 || v == 0x2b) << g;
    }
    if (g > 0) {
      EXPECT_LT(grid[static_cast<size_t>(g - 1)], grid[static_cast<size_t>(g)]);
    }
  }
}

TEST(QuantIQ2_XXS, SignMasksMatchKsigns) {
  // Grid entry 0 (all 8) with d = 1, s = 0: db = 0.125, so each value is ±1 and its sign is bit j
  // of the 8-bit mask ksigns_iq2xs[i]. ggml's table is i | parity(i) << 7; a few of its entries:
  // [1] = 129, [2] = 130, [3] = 3, [7] = 135, [64] = 192, [124] = 252, [126] = 126, [127] = 255.
  std::vector<uint8_t> blk(4 * 66, 0);
  for (int b = 0; b < 4; ++b) {
    put16(&blk[static_cast<size_t>(66 * b)], 0x3c00);
    for (int ib = 0; ib < 8; ++ib) {
      const int g[4] = {0, 0, 0, 0};
      const uint32_t base = static_cast<uint32_t>(32 * b + 4 * ib);
      const uint32_t sg[4] = {base, base + 1, base + 2, base + 3};
      set_sub(&blk[static_cast<size_t>(66 * b)], ib, g, sg, 0);
    }
  }
  const auto y = dequantize(QType::IQ2_XXS, blk.data(), 4 * 256);
  std::vector<int> mask(128, 0);
  for (int i = 0; i < 128; ++i) {
    for (int j = 0; j < 8; ++j) {
      const float v = y[static_cast<size_t>(8 * i + j)];
      ASSERT_EQ(std::fabs(v), 1.0f);
      if (v < 0) mask[static_cast<size_t>(i)] |= 1 << j;
    }
    int parity = 0;
    for (int b = 0; b < 7; ++b) parity ^= (i >> b) & 1;
    EXPECT_EQ(mask[static_cast<size_t>(i)], i | (parity << 7)) << i;
  }
  EXPECT_EQ(mask[1], 129);
  EXPECT_EQ(mask[2], 130);
  EXPECT_EQ(mask[3], 3);
  EXPECT_EQ(mask[7], 135);
  EXPECT_EQ(mask[64], 192);
  EXPECT_EQ(mask[124], 252);
  EXPECT_EQ(mask[126], 126);
  EXPECT_EQ(mask[127], 255);
}

TEST(QuantIQ2_XXS, KnownBlock) {
  // d = 0.5 (f16 0x3800). Sub-block 0: s = 3 -> db = 0.5 * 3.5 * 0.25 = 0.4375, so grid values
  // 8 / 25 / 43 become 3.5 / 10.9375 / 18.8125.
  //   group 0: grid[0]   = 0x0808080808080808, sign index 1   (mask 129: elements 0 and 7)
  //   group 1: grid[1]   = 0x080808080808082b, sign index 0   (byte 0 = 43)
  //   group 2: grid[255] = 0x2b2b2b1908081908, sign index 3   (mask 3: elements 0 and 1);
  //            bytes from the low end: 08 19 08 08 19 2b 2b 2b
  //   group 3: grid[17]  = 0x080808082b080808, sign index 127 (mask 255: all negative)
  // Sub-block 7: s = 15 -> db = 0.5 * 15.5 * 0.25 = 1.9375; group 0 grid[0], sign index 0:
  //   8 * 1.9375 = 15.5. Other sub-blocks are all-zero bytes: grid[0], no signs, s = 0:
  //   db = 0.0625, value 0.5.
  uint8_t blk[66] = {};
  put16(blk, 0x3800);
  const int g0[4] = {0, 1, 255, 17};
  const uint32_t s0[4] = {1, 0, 3, 127};
  set_sub(blk, 0, g0, s0, 3);
  const int g7[4] = {0, 0, 0, 0};
  const uint32_t s7[4] = {0, 0, 0, 0};
  set_sub(blk, 7, g7, s7, 15);
  const auto y = dequantize(QType::IQ2_XXS, blk, 256);
  const float a = 3.5f, b = 10.9375f, c = 18.8125f;
  const float want[32] = {-a, a,  a,  a,  a,  a,  a,  -a,   // group 0
                          c,  a,  a,  a,  a,  a,  a,  a,    // group 1
                          -a, -b, a,  a,  b,  c,  c,  c,    // group 2
                          -a, -a, -a, -c, -a, -a, -a, -a};  // group 3
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], want[i]) << i;
  for (int i = 32; i < 224; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], 0.5f) << i;
  for (int i = 224; i < 232; ++i) EXPECT_EQ(y[static_cast<size_t>(i)], 15.5f) << i;
}

TEST(QuantIQ2_XXS, RoundTripGaussian) {
  const auto x = gaussian(256 * 64, 4);
  const auto q = quantize(QType::IQ2_XXS, x);
  const auto y = dequantize(QType::IQ2_XXS, q.data(), static_cast<int64_t>(x.size()));
  const double err = relative_rmse(x, y);
  RecordProperty("iq2_xxs_relative_rmse", std::to_string(err));
  std::printf("IQ2_XXS round trip relative RMSE: %.4f\n", err);
  // Measured 0.3275 (seed 4, 16384 values; bound = measured + ~10%). The quantiser has no
  // importance weights and no neighbour search: brute force over the 256 grid entries x 16
  // sub-block scales, with the data signs.
  EXPECT_LT(err, 0.36);
}

TEST(QuantIQ2_XXS, QuantiserKeepsDataSignsButOne) {
  // Each 8-group keeps the data signs, except that an odd number of negatives is fixed by
  // flipping the element of smallest magnitude.
  const auto x = gaussian(256 * 8, 5);
  const auto y = dequantize(QType::IQ2_XXS, quantize(QType::IQ2_XXS, x).data(), 256 * 8);
  for (int grp = 0; grp < 256; ++grp) {
    int neg = 0, smallest = 0;
    for (int j = 0; j < 8; ++j) {
      const float v = x[static_cast<size_t>(8 * grp + j)];
      neg += v < 0.0f;
      if (std::fabs(v) < std::fabs(x[static_cast<size_t>(8 * grp + smallest)])) smallest = j;
    }
    for (int j = 0; j < 8; ++j) {
      const bool xneg = x[static_cast<size_t>(8 * grp + j)] < 0.0f;
      const bool yneg = y[static_cast<size_t>(8 * grp + j)] < 0.0f;
      const bool flipped = (neg % 2 == 1) && j == smallest;
      EXPECT_EQ(yneg, flipped ? !xneg : xneg) << grp << " " << j;
    }
  }
  // All-zero input: d = 0 and every value 0.
  const auto z = dequantize(QType::IQ2_XXS,
                            quantize(QType::IQ2_XXS, std::vector<float>(256, 0.0f)).data(), 256);
  for (float v : z) EXPECT_EQ(v, 0.0f);
}

TEST(QuantDotIQ2_XXS, MatchesFp64) {
  for (int64_t n : {256, 1792, 4096}) {
    const auto x = gaussian(n, 62, 2.0f);
    std::vector<BlockQ8K> act(static_cast<size_t>(n / 256));
    quantize_act_q8_k(x.data(), n, act.data());
    // Weights from the quantiser, and raw random blocks (every index/sign/scale pattern).
    auto raw = random_bytes(qtype_row_bytes(QType::IQ2_XXS, n), 63);
    for (int64_t b = 0; b < n / 256; ++b) {
      put16(&raw[static_cast<size_t>(66 * b)], f32_to_f16(0.002f * static_cast<float>(b + 1)));
    }
    for (const auto& w : {quantize(QType::IQ2_XXS, gaussian(n, 61, 0.02f)), raw}) {
      const float got = dot_iq2_xxs_q8_k(w.data(), act.data(), n);
      const DotCheck r = ref_dot_q8k(QType::IQ2_XXS, w.data(), act, n);
      EXPECT_NEAR(got, r.ref, 1e-5 * r.abs_sum) << n;
    }
  }
  std::vector<uint8_t> w(66);
  std::vector<BlockQ8K> a(1);
  EXPECT_THROW(dot_iq2_xxs_q8_k(w.data(), a.data(), 128), Error);
}

TEST(QuantDotIQ2_XXS, StatedBlockFormula) {
  // Recomputed from the header comment: per block d = f16(x.d) * y.d, bsum = Σ_ib (2s+1) *
  // Σ grid*sign*q8 (int32), acc += d * bsum (F32); result 0.125f * acc. The grid bytes come from
  // grid_from_dequant (ggml's table, checked above), the signs from i | parity(i) << 7.
  const auto grid = grid_from_dequant();
  const int64_t n = 768;
  const auto w = quantize(QType::IQ2_XXS, gaussian(n, 71, 0.02f));
  const auto x = gaussian(n, 72);
  std::vector<BlockQ8K> act(3);
  quantize_act_q8_k(x.data(), n, act.data());
  float acc = 0.0f;
  for (int b = 0; b < 3; ++b) {
    const uint8_t* blk = &w[static_cast<size_t>(66 * b)];
    const BlockQ8K& y = act[static_cast<size_t>(b)];
    const float d = f16_to_f32(static_cast<uint16_t>(blk[0] | (blk[1] << 8))) * y.d;
    int32_t bsum = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* p = blk + 2 + 8 * ib;
      const uint32_t a1 = static_cast<uint32_t>(p[4]) | (static_cast<uint32_t>(p[5]) << 8) |
                          (static_cast<uint32_t>(p[6]) << 16) | (static_cast<uint32_t>(p[7]) << 24);
      int32_t sumi = 0;
      for (int l = 0; l < 4; ++l) {
        const uint32_t si = (a1 >> (7 * l)) & 127;
        uint32_t parity = 0;
        for (int k = 0; k < 7; ++k) parity ^= (si >> k) & 1;
        const uint32_t mask = si | (parity << 7);
        for (int j = 0; j < 8; ++j) {
          const int gv = static_cast<int>((grid[p[l]] >> (8 * j)) & 0xff);
          const int v = gv * y.qs[32 * ib + 8 * l + j];
          sumi += (mask >> j) & 1 ? -v : v;
        }
      }
      bsum += sumi * static_cast<int32_t>(2 * (a1 >> 28) + 1);
    }
    acc += d * static_cast<float>(bsum);
  }
  EXPECT_EQ(float_bits(dot_iq2_xxs_q8_k(w.data(), act.data(), n)), float_bits(0.125f * acc));
}

}  // namespace
}  // namespace ds4
