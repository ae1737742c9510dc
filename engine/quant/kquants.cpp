// K-quants Q2_K and Q4_K: dequantisation, reference quantisers, and dots with a Q8_K activation.
//
// Q2_K (ggml id 10), 256 elements, 84 bytes:
//   uint8 scales[16] @0   low nibble = scale s_g, high nibble = min m_g of 16-element group g
//   uint8 qs[64]     @16  2-bit quants
//   f16   d          @80  super-block scale of the s_g
//   f16   dmin       @82  super-block scale of the m_g
//   Element order (ds4-model.md §3): for half h in {0,1}, shift index j in {0..3}, l in 0..31:
//   element 128h + 32j + l = (qs[32h + l] >> 2j) & 3, in group 8h + 2j + (l >= 16).
//   Value = d*s_g*q - dmin*m_g, evaluated as (d*s_g)*q - (dmin*m_g) in F32 like ggml.
//
// Q4_K (ggml id 12), 256 elements, 144 bytes:
//   f16   d          @0   super-block scale of the 6-bit sub-block scales
//   f16   dmin       @2   super-block scale of the 6-bit sub-block mins
//   uint8 scales[12] @4   8 (scale, min) pairs of 6 bits, packed as ggml's get_scale_min_k4:
//                         j < 4: sc = b[j] & 63,                  m = b[j+4] & 63
//                         j >= 4: sc = (b[j+4] & 15) | (b[j-4] >> 6) << 4,
//                                 m  = (b[j+4] >> 4) | (b[j] >> 6) << 4
//   uint8 qs[128]    @16  4-bit quants: for 64-element chunk c, the low nibbles of qs[32c..32c+31]
//                         are elements 64c..64c+31 (sub-block 2c) and the high nibbles are
//                         elements 64c+32..64c+63 (sub-block 2c+1).
//   Value = d*sc_s*q - dmin*m_s for the 32-element sub-block s = element / 32.
//
// Reference quantiser (ours; deterministic, not ggml's and not bit-equal to it):
//   1. Each group (16 elements for Q2_K, 32 for Q4_K) is fitted as x ≈ a*q - b with a, b >= 0 and
//      q in 0..nmax (3 or 15). We try nstep+1 grids: lo = min(0, min x), hi = max x,
//      iscale = (nmax + rmin + rdelta*k) / (hi - lo), q = clamp(round(iscale*(x - lo))); for each
//      assignment, (a, -b) is the least-squares line through (q, x) (b clamped at 0, then a
//      refitted); the grid with the smallest squared error wins (ties: the first).
//   2. The super-block scale is d = max_g a_g / smax and dmin = max_g b_g / smax (smax = 15 for
//      the 4-bit Q2_K scales, 63 for the 6-bit Q4_K ones), both rounded to F16; each group's a_g
//      and b_g become round(a_g / d) and round(b_g / dmin), clamped to 0..smax.
//   3. The quants are reassigned with the quantised group scale and min:
//      q = clamp(round((x + dmin*m_g) / (d*s_g)), 0, nmax), q = 0 where d*s_g = 0.
#include <cmath>
#include <cstring>
#include <string>

#include "ds4/error.h"
#include "ds4/quant.h"
#include "quant/quant_detail.h"

namespace ds4 {

using namespace quant_detail;

namespace {

// Round to nearest, ties to even (the engine never leaves the default rounding mode).
int round_int(float v) { return static_cast<int>(std::nearbyintf(v)); }

int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---- group fit (step 1 above) ----

struct GroupFit {
  float scale;  // a >= 0
  float min;    // b >= 0; x ≈ scale*q - min
};

struct FitParams {
  int nmax;      // largest quant (3 or 15)
  float rmin;    // first grid: iscale = (nmax + rmin) / (hi - lo)
  float rdelta;  // grid k adds rdelta*k to the numerator
  int nstep;     // grids k = 0..nstep
};

GroupFit fit_group(const float* x, int n, const FitParams& p) {
  float lo = 0.0f;
  float hi = x[0];
  for (int i = 0; i < n; ++i) {
    lo = std::fmin(lo, x[i]);
    hi = std::fmax(hi, x[i]);
  }
  if (!(hi > lo)) return {0.0f, -lo};  // constant group (x = lo <= 0, or all zero)

  GroupFit best{(hi - lo) / static_cast<float>(p.nmax), -lo};
  double best_err = -1.0;
  int q[32];
  for (int k = 0; k <= p.nstep; ++k) {
    const float iscale =
        (static_cast<float>(p.nmax) + p.rmin + p.rdelta * static_cast<float>(k)) / (hi - lo);
    // Least squares of x = a*q + c over the assignment (all sums in double, index order).
    double sq = 0, sqq = 0, sx = 0, sxq = 0;
    for (int i = 0; i < n; ++i) {
      q[i] = clamp_int(round_int(iscale * (x[i] - lo)), 0, p.nmax);
      sq += q[i];
      sqq += static_cast<double>(q[i]) * q[i];
      sx += x[i];
      sxq += static_cast<double>(x[i]) * q[i];
    }
    const double det = n * sqq - sq * sq;
    double a = 0.0;
    double c = 0.0;
    if (det > 0.0) {
      a = (n * sxq - sq * sx) / det;
      c = (sqq * sx - sq * sxq) / det;
    }
    if (c > 0.0 || det <= 0.0) {  // the offset must be <= 0: fit a through the origin
      c = 0.0;
      a = sqq > 0.0 ? sxq / sqq : 0.0;
    }
    if (a < 0.0) continue;
    double err = 0.0;
    for (int i = 0; i < n; ++i) {
      const double e = a * q[i] + c - x[i];
      err += e * e;
    }
    if (best_err < 0.0 || err < best_err) {
      best_err = err;
      best = {static_cast<float>(a), static_cast<float>(-c)};
    }
  }
  return best;
}

// ---- super-block scales (step 2 above) ----

// Quantises the group values v[0..n) (>= 0) to 0..smax against a shared F16 super scale, which
// is returned as its F16 bits; the quantised values go to out.
uint16_t quantize_super(const float* v, int n, int smax, uint8_t* out) {
  float vmax = 0.0f;
  for (int i = 0; i < n; ++i) vmax = std::fmax(vmax, v[i]);
  const uint16_t dbits = f32_to_f16(vmax / static_cast<float>(smax));
  const float d = f16_to_f32(dbits);
  for (int i = 0; i < n; ++i) {
    out[i] = d > 0.0f ? static_cast<uint8_t>(clamp_int(round_int(v[i] / d), 0, smax)) : 0;
  }
  return dbits;
}

// ---- Q4_K 6-bit scale packing ----

void get_scale_min_k4(int j, const uint8_t* b, int* sc, int* m) {
  if (j < 4) {
    *sc = b[j] & 63;
    *m = b[j + 4] & 63;
  } else {
    *sc = (b[j + 4] & 0xf) | ((b[j - 4] >> 6) << 4);
    *m = (b[j + 4] >> 4) | ((b[j] >> 6) << 4);
  }
}

void put_scale_min_k4(int j, int sc, int m, uint8_t* b) {
  if (j < 4) {
    b[j] = static_cast<uint8_t>((b[j] & 0xc0) | sc);
    b[j + 4] = static_cast<uint8_t>((b[j + 4] & 0xc0) | m);
  } else {
    b[j + 4] = static_cast<uint8_t>((sc & 0xf) | ((m & 0xf) << 4));
    b[j - 4] = static_cast<uint8_t>((b[j - 4] & 0x3f) | ((sc >> 4) << 6));
    b[j] = static_cast<uint8_t>((b[j] & 0x3f) | ((m >> 4) << 6));
  }
}

// Q2_K element e of a block: byte index and shift of its 2 bits, and its group.
int q2k_byte(int e) { return 32 * (e / 128) + (e % 32); }
int q2k_shift(int e) { return 2 * ((e % 128) / 32); }
int q2k_group(int e) { return e / 16; }  // = 8h + 2j + (l >= 16)

// Q4_K element e: byte index, nibble (0 low, 1 high) and sub-block.
int q4k_byte(int e) { return 32 * (e / 64) + (e % 32); }
int q4k_high(int e) { return (e % 64) >= 32 ? 1 : 0; }

constexpr FitParams kQ2Fit{3, -0.5f, 0.1f, 15};
constexpr FitParams kQ4Fit{15, -1.0f, 0.1f, 20};

}  // namespace

// ============================================================================================
// Q2_K
// ============================================================================================

namespace quant_detail {

void dequantize_q2_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = src + b * kQ2_KBytes;
    const uint8_t* scales = blk;
    const uint8_t* qs = blk + 16;
    const float d = f16_to_f32(load_u16(blk + 80));
    const float dmin = f16_to_f32(load_u16(blk + 82));
    float* y = dst + b * kQKElems;
    for (int e = 0; e < kQKElems; ++e) {
      const uint8_t sc = scales[q2k_group(e)];
      const float dl = d * static_cast<float>(sc & 0xf);
      const float ml = dmin * static_cast<float>(sc >> 4);
      const int q = (qs[q2k_byte(e)] >> q2k_shift(e)) & 3;
      y[e] = dl * static_cast<float>(q) - ml;
    }
  }
}

void quantize_q2_k(const float* src, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* x = src + b * kQKElems;
    uint8_t* blk = dst + b * kQ2_KBytes;
    std::memset(blk, 0, kQ2_KBytes);

    float scale[16], min[16];
    for (int g = 0; g < 16; ++g) {
      const GroupFit f = fit_group(x + 16 * g, 16, kQ2Fit);
      scale[g] = f.scale;
      min[g] = f.min;
    }
    uint8_t ls[16], lm[16];
    const uint16_t dbits = quantize_super(scale, 16, 15, ls);
    const uint16_t mbits = quantize_super(min, 16, 15, lm);
    store_u16(blk + 80, dbits);
    store_u16(blk + 82, mbits);
    for (int g = 0; g < 16; ++g) blk[g] = static_cast<uint8_t>(ls[g] | (lm[g] << 4));

    const float d = f16_to_f32(dbits);
    const float dmin = f16_to_f32(mbits);
    uint8_t* qs = blk + 16;
    for (int e = 0; e < kQKElems; ++e) {
      const int g = q2k_group(e);
      const float dl = d * static_cast<float>(ls[g]);
      const float ml = dmin * static_cast<float>(lm[g]);
      const int q = dl != 0.0f ? clamp_int(round_int((x[e] + ml) / dl), 0, 3) : 0;
      qs[q2k_byte(e)] = static_cast<uint8_t>(qs[q2k_byte(e)] | (q << q2k_shift(e)));
    }
  }
}

}  // namespace quant_detail

// Per block i, exactly ggml_vec_dot_q2_K_q8_K_generic (= ds4's scalar branch, §13.2):
//   summs = Σ_{j<16} bsums[j] * (scales[j] >> 4)                               (int32)
//   isum  = Σ over groups g in element order of (scales[g] & 0xF) * Σ_{16 el.} q2 * q8  (int32)
//   dall = y.d * d, dmin' = y.d * dmin                                         (F32)
//   acc  += dall * (float)isum - dmin' * (float)summs                          (F32)
// with blocks in order 0..n/256-1 and acc starting at 0.
float dot_q2_k_q8_k(const void* w_row, const BlockQ8K* act, int64_t n) {
  if (n < 0 || n % kQKElems != 0)
    fail("dot_q2_k_q8_k: n = " + std::to_string(n) + " is not a multiple of 256");
  const auto* w = static_cast<const uint8_t*>(w_row);
  float acc = 0.0f;
  for (int64_t b = 0; b < n / kQKElems; ++b) {
    const uint8_t* blk = w + b * kQ2_KBytes;
    const uint8_t* scales = blk;
    const uint8_t* qs = blk + 16;
    const BlockQ8K& y = act[b];

    int32_t summs = 0;
    for (int j = 0; j < 16; ++j) summs += static_cast<int32_t>(y.bsums[j]) * (scales[j] >> 4);

    int32_t isum = 0;
    for (int g = 0; g < 16; ++g) {
      int32_t isuml = 0;
      for (int i = 0; i < 16; ++i) {
        const int e = 16 * g + i;
        isuml += y.qs[e] * ((qs[q2k_byte(e)] >> q2k_shift(e)) & 3);
      }
      isum += (scales[g] & 0xf) * isuml;
    }
    const float dall = y.d * f16_to_f32(load_u16(blk + 80));
    const float dmin = y.d * f16_to_f32(load_u16(blk + 82));
    acc += dall * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return acc;
}

// ============================================================================================
// Q4_K
// ============================================================================================

namespace quant_detail {

void dequantize_q4_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = src + b * kQ4_KBytes;
    const float d = f16_to_f32(load_u16(blk));
    const float dmin = f16_to_f32(load_u16(blk + 2));
    const uint8_t* scales = blk + 4;
    const uint8_t* qs = blk + 16;
    float* y = dst + b * kQKElems;
    for (int s = 0; s < 8; ++s) {
      int sc, m;
      get_scale_min_k4(s, scales, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      for (int i = 0; i < 32; ++i) {
        const int e = 32 * s + i;
        const int q = q4k_high(e) ? (qs[q4k_byte(e)] >> 4) : (qs[q4k_byte(e)] & 0xf);
        y[e] = dl * static_cast<float>(q) - ml;
      }
    }
  }
}

void quantize_q4_k(const float* src, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* x = src + b * kQKElems;
    uint8_t* blk = dst + b * kQ4_KBytes;
    std::memset(blk, 0, kQ4_KBytes);

    float scale[8], min[8];
    for (int s = 0; s < 8; ++s) {
      const GroupFit f = fit_group(x + 32 * s, 32, kQ4Fit);
      scale[s] = f.scale;
      min[s] = f.min;
    }
    uint8_t ls[8], lm[8];
    const uint16_t dbits = quantize_super(scale, 8, 63, ls);
    const uint16_t mbits = quantize_super(min, 8, 63, lm);
    store_u16(blk, dbits);
    store_u16(blk + 2, mbits);
    for (int s = 0; s < 8; ++s) put_scale_min_k4(s, ls[s], lm[s], blk + 4);

    const float d = f16_to_f32(dbits);
    const float dmin = f16_to_f32(mbits);
    uint8_t* qs = blk + 16;
    for (int e = 0; e < kQKElems; ++e) {
      const int s = e / 32;
      const float dl = d * static_cast<float>(ls[s]);
      const float ml = dmin * static_cast<float>(lm[s]);
      const int q = dl != 0.0f ? clamp_int(round_int((x[e] + ml) / dl), 0, 15) : 0;
      qs[q4k_byte(e)] = static_cast<uint8_t>(qs[q4k_byte(e)] | (q << (4 * q4k_high(e))));
    }
  }
}

}  // namespace quant_detail

// Per block i (the integer parts are ggml_vec_dot_q4_K_q8_K_generic's):
//   summs = Σ_{j<16} bsums[j] * m_{j/2}                                   (int32)
//   isum  = Σ_{s<8} sc_s * Σ_{e in sub-block s} q4 * q8                   (int32)
//   acc  += (d * y.d) * (float)isum - (dmin * y.d) * (float)summs          (F32)
// with blocks in order 0..n/256-1 and acc starting at 0. ggml's generic code has the same integer
// sums but a different F32 grouping (8 lane partial sums carried across blocks, the min term
// subtracted per block), so it can differ from this in the last bits.
float dot_q4_k_q8_k(const void* w_row, const BlockQ8K* act, int64_t n) {
  if (n < 0 || n % kQKElems != 0)
    fail("dot_q4_k_q8_k: n = " + std::to_string(n) + " is not a multiple of 256");
  const auto* w = static_cast<const uint8_t*>(w_row);
  float acc = 0.0f;
  for (int64_t b = 0; b < n / kQKElems; ++b) {
    const uint8_t* blk = w + b * kQ4_KBytes;
    const uint8_t* scales = blk + 4;
    const uint8_t* qs = blk + 16;
    const BlockQ8K& y = act[b];

    int sc[8], m[8];
    for (int s = 0; s < 8; ++s) get_scale_min_k4(s, scales, &sc[s], &m[s]);

    int32_t summs = 0;
    for (int j = 0; j < 16; ++j) summs += static_cast<int32_t>(y.bsums[j]) * m[j / 2];

    int32_t isum = 0;
    for (int s = 0; s < 8; ++s) {
      int32_t isuml = 0;
      for (int i = 0; i < 32; ++i) {
        const int e = 32 * s + i;
        const int q = q4k_high(e) ? (qs[q4k_byte(e)] >> 4) : (qs[q4k_byte(e)] & 0xf);
        isuml += y.qs[e] * q;
      }
      isum += sc[s] * isuml;
    }
    const float d = f16_to_f32(load_u16(blk)) * y.d;
    const float dmin = f16_to_f32(load_u16(blk + 2)) * y.d;
    acc += d * static_cast<float>(isum) - dmin * static_cast<float>(summs);
  }
  return acc;
}

}  // namespace ds4
