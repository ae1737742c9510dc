// Q8_0 and Q8_K blocks, the ds4 activation quantisers, and the Q8_0 / F16 / F32 dot products.
//
//   Q8_0  (ggml id 8):  32 elements, 34 bytes: f16 d; int8 q[32].          x = d * q
//   Q8_K  (ggml id 15): 256 elements, 292 bytes: float d; int8 qs[256]; int16 bsums[16].
//                       Activation-only format (ggml block_q8_K); x = d * q.
//
// Numerics (ds4-model.md §3 and §13.1): the Q8_0 activation keeps d in F32 and rounds with
// lrintf (ties to even); the Q8_0 *weight* quantiser here follows ggml's quantize_row_q8_0_ref
// (d = amax/127 stored as F16, q = roundf(x * (1/d)) with d the F32 value before rounding), so
// its bytes equal ggml's for the same input. All dots accumulate in F32 in the order stated.
//
// Rounding: lrintf / nearbyint use the current rounding mode, which the engine never changes
// from round-to-nearest-even. ggml's nearest_int (the 1.5*2^23 trick) is the same function there.
#include <cmath>
#include <cstring>
#include <string>

#include "ds4/error.h"
#include "ds4/quant.h"
#include "quant/quant_detail.h"

namespace ds4 {

using namespace quant_detail;

namespace {

void check_multiple(int64_t n, int block, const char* what) {
  if (n < 0 || n % block != 0) {
    fail(std::string(what) + ": n = " + std::to_string(n) + " is not a multiple of " +
         std::to_string(block));
  }
}

}  // namespace

// ============================================================================================
// Q8_0 weight blocks
// ============================================================================================

namespace quant_detail {

void dequantize_q8_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = src + b * kQ8_0Bytes;
    const float d = f16_to_f32(load_u16(blk));
    const auto* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int i = 0; i < kQ8_0Elems; ++i) dst[b * kQ8_0Elems + i] = d * static_cast<float>(q[i]);
  }
}

void quantize_q8_0(const float* src, uint8_t* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* x = src + b * kQ8_0Elems;
    uint8_t* blk = dst + b * kQ8_0Bytes;
    float amax = 0.0f;
    for (int i = 0; i < kQ8_0Elems; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_u16(blk, f32_to_f16(d));
    auto* q = reinterpret_cast<int8_t*>(blk + 2);
    for (int i = 0; i < kQ8_0Elems; ++i) {
      // |x * id| <= 127 up to one rounding, so roundf stays in int8 range.
      q[i] = static_cast<int8_t>(std::roundf(x[i] * id));
    }
  }
}

// ============================================================================================
// Q8_K blocks (dequantisation; quantisation is quantize_act_q8_k)
// ============================================================================================

void dequantize_q8_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = src + b * kQ8_KBytes;
    const uint32_t dbits = load_u32(blk);
    float d;
    std::memcpy(&d, &dbits, sizeof(d));
    const auto* q = reinterpret_cast<const int8_t*>(blk + 4);
    for (int i = 0; i < kQKElems; ++i) dst[b * kQKElems + i] = d * static_cast<float>(q[i]);
  }
}

}  // namespace quant_detail

// ============================================================================================
// Activation quantisers
// ============================================================================================

void quantize_act_q8_0(const float* x, int64_t n, float* d, int8_t* q) {
  check_multiple(n, kQ8_0Elems, "quantize_act_q8_0");
  for (int64_t b = 0; b < n / kQ8_0Elems; ++b) {
    const float* xb = x + b * kQ8_0Elems;
    int8_t* qb = q + b * kQ8_0Elems;
    float amax = 0.0f;
    for (int i = 0; i < kQ8_0Elems; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
    const float db = amax / 127.0f;
    d[b] = db;
    if (db == 0.0f) {
      for (int i = 0; i < kQ8_0Elems; ++i) qb[i] = 0;
      continue;
    }
    const float id = 1.0f / db;
    for (int i = 0; i < kQ8_0Elems; ++i) {
      long v = std::lrintf(xb[i] * id);  // ties to even
      if (v > 127) v = 127;
      if (v < -128) v = -128;
      qb[i] = static_cast<int8_t>(v);
    }
  }
}

void quantize_act_q8_k(const float* x, int64_t n, BlockQ8K* y) {
  check_multiple(n, kQKElems, "quantize_act_q8_k");
  for (int64_t b = 0; b < n / kQKElems; ++b) {
    const float* xb = x + b * kQKElems;
    BlockQ8K& out = y[b];
    // The value of largest magnitude, first one on ties (strict >), keeping its sign.
    float max = 0.0f;
    float amax = 0.0f;
    for (int i = 0; i < kQKElems; ++i) {
      const float ax = std::fabs(xb[i]);
      if (ax > amax) {
        amax = ax;
        max = xb[i];
      }
    }
    if (amax == 0.0f) {
      out.d = 0.0f;
      std::memset(out.qs, 0, sizeof(out.qs));
      std::memset(out.bsums, 0, sizeof(out.bsums));
      continue;
    }
    // iscale = -127/max: the largest element maps to -127 (ggml's sign convention, kept so that
    // the IQ2 kernels' value range is symmetric); d = 1/iscale is negative when max > 0.
    const float iscale = -127.0f / max;
    for (int i = 0; i < kQKElems; ++i) {
      long v = std::lrintf(iscale * xb[i]);  // ggml nearest_int: ties to even
      if (v > 127) v = 127;
      if (v < -128) v = -128;  // unreachable (|iscale*x| <= 127 + rounding); as in ds4
      out.qs[i] = static_cast<int8_t>(v);
    }
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += out.qs[16 * g + i];
      out.bsums[g] = static_cast<int16_t>(sum);
    }
    out.d = 1.0f / iscale;
  }
}

// ============================================================================================
// Dots
// ============================================================================================

float dot_q8_0_q8_0act(const void* w_row, const float* act_d, const int8_t* act_q, int64_t n) {
  check_multiple(n, kQ8_0Elems, "dot_q8_0_q8_0act");
  const auto* w = static_cast<const uint8_t*>(w_row);
  float acc = 0.0f;
  // Block b in order 0..nb-1: isum = Σ_{i<32} qw*qx in int32 (exact), then
  // acc += (dw * dx) * isum with the product dw*dx rounded to F32 first.
  for (int64_t b = 0; b < n / kQ8_0Elems; ++b) {
    const uint8_t* blk = w + b * kQ8_0Bytes;
    const float dw = f16_to_f32(load_u16(blk));
    const auto* qw = reinterpret_cast<const int8_t*>(blk + 2);
    const int8_t* qx = act_q + b * kQ8_0Elems;
    int32_t isum = 0;
    for (int i = 0; i < kQ8_0Elems; ++i) isum += static_cast<int32_t>(qw[i]) * qx[i];
    const float dd = dw * act_d[b];
    acc += dd * static_cast<float>(isum);
  }
  return acc;
}

float dot_f16_f32(const uint16_t* w_row, const float* x, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += f16_to_f32(w_row[i]) * x[i];  // index order, F32
  return acc;
}

float dot_f32_f32(const float* w_row, const float* x, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += w_row[i] * x[i];  // index order, F32
  return acc;
}

}  // namespace ds4
