// IQ2_XXS (ggml id 16): dequantisation, a brute-force reference quantiser, and the dot with Q8_K.
//
// Block: 256 elements, 66 bytes: f16 d @0; uint16 qs[32] @2. Sub-block ib (0..7) covers elements
// 32ib..32ib+31 and uses the 8 bytes at 2 + 8ib, read as two little-endian uint32 a0, a1:
//   byte l of a0 (l = 0..3)  = index g_l into kIq2xxsGrid for elements 32ib + 8l .. +7
//   bits [7l, 7l+7) of a1    = 7-bit sign index; the 8-bit mask is iq2_sign_mask(index)
//                              (bit 7 = parity of the other 7, so the mask has even weight)
//   a1 >> 28                 = 4-bit sub-block scale s
// Value of element j of group l: d * (0.5 + s) * 0.25 * grid[g_l][j] * (bit j of mask ? -1 : 1),
// evaluated as ggml's dequantize_row_iq2_xxs does: db = (d * (0.5f + s)) * 0.25f, then
// (db * grid) * sign in F32.
//
// Reference quantiser (ours; ggml's needs an importance matrix and a neighbour search):
//   * d = amax / (43 * 15.5 * 0.25) rounded to F16, so the largest element is reachable with the
//     largest grid value (43) at the largest sub-block scale (s = 15).
//   * Signs of each 8-element group are the data signs; if the number of negative elements is
//     odd, the sign of the element of smallest magnitude (the first such) is flipped so that the
//     mask has even weight, as the format requires.
//   * With the signs fixed, each group is matched against t_j = sign_j * x_j (so t_j = |x_j|
//     except the flipped element). For every s in 0..15 and every group, the grid entry g
//     minimising Σ_j (t_j - db*grid[g][j])^2 is found by brute force over the 256 entries; the
//     s with the smallest total squared error of the sub-block wins (ties: the smaller s, then
//     the smaller g).
#include <cmath>
#include <cstring>
#include <string>

#include "ds4/error.h"
#include "ds4/quant.h"
#include "quant/quant_detail.h"

namespace ds4 {

using namespace quant_detail;

namespace quant_detail {

void dequantize_iq2_xxs(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = src + b * kIQ2_XXSBytes;
    const float d = f16_to_f32(load_u16(blk));
    float* y = dst + b * kQKElems;
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* sub = blk + 2 + 8 * ib;
      const uint32_t a1 = load_u32(sub + 4);
      const float db = d * (0.5f + static_cast<float>(a1 >> 28)) * 0.25f;
      for (int l = 0; l < 4; ++l) {
        const int g = sub[l];  // byte l of a0
        const uint8_t signs = iq2_sign_mask((a1 >> (7 * l)) & 127u);
        for (int j = 0; j < 8; ++j) {
          const float sign = (signs >> j) & 1u ? -1.0f : 1.0f;
          y[32 * ib + 8 * l + j] = db * static_cast<float>(iq2_grid_value(g, j)) * sign;
        }
      }
    }
  }
}

namespace {

// Squared norm of each grid entry, Σ_j grid[g][j]^2.
struct GridNorms {
  double g2[256];
  GridNorms() {
    for (int g = 0; g < 256; ++g) {
      g2[g] = 0.0;
      for (int j = 0; j < 8; ++j) g2[g] += iq2_grid_value(g, j) * iq2_grid_value(g, j);
    }
  }
};

struct GroupSigns {
  uint32_t index7;  // 7-bit sign index stored in a1
  double t[8];      // sign_j * x_j: the magnitudes the grid entry must match
};

GroupSigns group_signs(const float* x) {
  uint32_t mask = 0;
  int flip = 0;
  for (int j = 0; j < 8; ++j) {
    if (x[j] < 0.0f) mask |= 1u << j;
    if (std::fabs(x[j]) < std::fabs(x[flip])) flip = j;
  }
  int count = 0;
  for (int j = 0; j < 8; ++j) count += (mask >> j) & 1u;
  if (count % 2 != 0) mask ^= 1u << flip;
  GroupSigns gs;
  gs.index7 = mask & 127u;  // bit 7 is the parity of bits 0..6 because the weight is even
  for (int j = 0; j < 8; ++j) gs.t[j] = ((mask >> j) & 1u) ? -static_cast<double>(x[j]) : x[j];
  return gs;
}

}  // namespace

void quantize_iq2_xxs(const float* src, uint8_t* dst, int64_t nb) {
  static const GridNorms norms;
  for (int64_t b = 0; b < nb; ++b) {
    const float* x = src + b * kQKElems;
    uint8_t* blk = dst + b * kIQ2_XXSBytes;
    std::memset(blk, 0, kIQ2_XXSBytes);

    float amax = 0.0f;
    for (int i = 0; i < kQKElems; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    const uint16_t dbits = f32_to_f16(amax / (43.0f * 15.5f * 0.25f));
    store_u16(blk, dbits);
    const float d = f16_to_f32(dbits);
    if (d == 0.0f) continue;  // all-zero bytes beyond d: every value is 0

    for (int ib = 0; ib < 8; ++ib) {
      GroupSigns gs[4];
      double tg[4][256];  // Σ_j t_j * grid[g][j]
      for (int l = 0; l < 4; ++l) {
        gs[l] = group_signs(x + 32 * ib + 8 * l);
        for (int g = 0; g < 256; ++g) {
          double acc = 0.0;
          for (int j = 0; j < 8; ++j) acc += gs[l].t[j] * iq2_grid_value(g, j);
          tg[l][g] = acc;
        }
      }
      // Error of group l with entry g at scale db, less the constant Σ t^2:
      //   db^2 * |grid_g|^2 - 2 * db * <t, grid_g>.
      int best_s = 0;
      int best_g[4] = {0, 0, 0, 0};
      double best_err = 0.0;
      for (int s = 0; s < 16; ++s) {
        const double db = static_cast<double>(d * (0.5f + static_cast<float>(s)) * 0.25f);
        double err = 0.0;
        int gsel[4];
        for (int l = 0; l < 4; ++l) {
          double e_best = 0.0;
          gsel[l] = 0;
          for (int g = 0; g < 256; ++g) {
            const double e = db * db * norms.g2[g] - 2.0 * db * tg[l][g];
            if (g == 0 || e < e_best) {
              e_best = e;
              gsel[l] = g;
            }
          }
          err += e_best;
        }
        if (s == 0 || err < best_err) {
          best_err = err;
          best_s = s;
          for (int l = 0; l < 4; ++l) best_g[l] = gsel[l];
        }
      }
      uint8_t* sub = blk + 2 + 8 * ib;
      uint32_t a1 = static_cast<uint32_t>(best_s) << 28;
      for (int l = 0; l < 4; ++l) {
        sub[l] = static_cast<uint8_t>(best_g[l]);
        a1 |= gs[l].index7 << (7 * l);
      }
      store_u32(sub + 4, a1);
    }
  }
}

}  // namespace quant_detail

// Per block i, exactly ggml_vec_dot_iq2_xxs_q8_K_generic (= ds4's scalar branch, §13.2):
//   d    = f16(x.d) * y.d                                                      (F32)
//   bsum = Σ_{ib<8} (2*s_ib + 1) * Σ_{32 el.} grid * sign * q8, in element order (int32)
//   acc += d * (float)bsum                                                     (F32)
// with blocks in order 0..n/256-1, acc starting at 0; the result is 0.125f * acc.
// ((2s+1)/8 = (0.5+s)/4, the dequantisation factor.)
float dot_iq2_xxs_q8_k(const void* w_row, const BlockQ8K* act, int64_t n) {
  if (n < 0 || n % kQKElems != 0) {
    fail("dot_iq2_xxs_q8_k: n = " + std::to_string(n) + " is not a multiple of 256");
  }
  const auto* w = static_cast<const uint8_t*>(w_row);
  float acc = 0.0f;
  for (int64_t b = 0; b < n / kQKElems; ++b) {
    const uint8_t* blk = w + b * kIQ2_XXSBytes;
    const BlockQ8K& y = act[b];
    const float d = f16_to_f32(load_u16(blk)) * y.d;
    int32_t bsum = 0;
    for (int ib = 0; ib < 8; ++ib) {
      const uint8_t* sub = blk + 2 + 8 * ib;
      const uint32_t a1 = load_u32(sub + 4);
      const int32_t ls = 2 * static_cast<int32_t>(a1 >> 28) + 1;
      int32_t sumi = 0;
      for (int l = 0; l < 4; ++l) {
        const int g = sub[l];
        const uint8_t signs = iq2_sign_mask((a1 >> (7 * l)) & 127u);
        for (int j = 0; j < 8; ++j) {
          const int32_t v = iq2_grid_value(g, j) * y.qs[32 * ib + 8 * l + j];
          sumi += (signs >> j) & 1u ? -v : v;
        }
      }
      bsum += sumi * ls;
    }
    acc += d * static_cast<float>(bsum);
  }
  return 0.125f * acc;
}

}  // namespace ds4
