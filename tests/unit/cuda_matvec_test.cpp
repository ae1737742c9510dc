// Q8_0 matrix-vector product, the ds4 decode numerics (ds4-dispatch.md §1.2 row Q1).
//
// CPU part (always runs): q8_0_dot_warp_order_ref, the CPU statement of the CUDA warp kernels'
// reduction order, against the sequential reference dot and against hand-computed cases that
// pin its order (lanes, shuffle tree, no fused multiply-add).
// GPU part (GTEST_SKIP without a usable device): the activation quantiser and
// matvec_q8_0__decode_warp8 against the CPU bit for bit; matvec_q8_0__batch_warp8 against
// decode_warp8 bit for bit for every row; repeated runs identical.
//   ./cuda_matvec_test --gtest_filter='CudaMatvecShapes*'   (the GPU shape sweep)
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ds4/cuda_backend.h"
#include "ds4/error.h"
#include "ds4/quant.h"
// Engine-internal headers (tests get only engine/include on their include path).
#include "../../engine/backend/cuda/device.h"
#include "../../engine/backend/cuda/matvec_q8_0.h"
#include "../../engine/ops/matmul/matvec_warp_order.h"

namespace ds4 {
namespace {

constexpr int kBlockBytes = 34;

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }

// Distance in units in the last place between two finite floats (0 for +0 vs -0).
int64_t ulp_distance(float a, float b) {
  auto ordered = [](float f) {
    const int32_t i = std::bit_cast<int32_t>(f);
    return i < 0 ? static_cast<int64_t>(INT32_MIN) - i : static_cast<int64_t>(i);
  };
  const int64_t d = ordered(a) - ordered(b);
  return d < 0 ? -d : d;
}

std::string hex(uint32_t u) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", u);
  return buf;
}

// Random (out, in) Q8_0 weights: uniform F32 in [-s, s] with s = 2^k per row (k in [-6, 2]) so
// that scales cover several binades, quantised with ds4::quantize_row.
std::vector<uint8_t> random_q8_0_matrix(int64_t in, int64_t out, std::mt19937& rng) {
  const size_t row_bytes = static_cast<size_t>(in / 32) * kBlockBytes;
  std::vector<uint8_t> w(row_bytes * static_cast<size_t>(out));
  std::vector<float> row(static_cast<size_t>(in));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-6, 2);
  for (int64_t o = 0; o < out; ++o) {
    const float s = std::ldexp(1.0f, expo(rng));
    for (auto& v : row) v = s * u(rng);
    quantize_row(QType::Q8_0, row.data(), w.data() + static_cast<size_t>(o) * row_bytes, in);
  }
  return w;
}

// Random (n_rows, in) activations, normal with a few outliers (as residual-stream rows have).
// Row 0 also carries the quantiser's edge cases: block 0 all zeros (d = 0 -> q = 0) and, when
// in >= 64, block 1 with amax 127 (d = 1 exactly) and halves, so x/d lands on exact ties
// (2.5 -> 2, -2.5 -> -2, 3.5 -> 4: round half to even).
std::vector<float> random_activations(int64_t in, int64_t n_rows, std::mt19937& rng) {
  std::vector<float> x(static_cast<size_t>(in * n_rows));
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  for (auto& v : x) v = u01(rng) < 0.002f ? 40.0f * n(rng) : n(rng);
  for (int i = 0; i < 32; ++i) x[i] = 0.0f;
  if (in >= 64) {
    for (int i = 0; i < 32; ++i) x[32 + i] = static_cast<float>(i % 16) + 0.5f - 8.0f;
    x[32] = 127.0f;
    x[33] = -126.5f;
  }
  return x;
}

// Empty if got == want bit for bit; else a report of how many differ and the first few.
std::string compare_bits(const std::vector<float>& got, const std::vector<float>& want, int64_t out,
                         const char* got_name, const char* want_name) {
  int64_t n_diff = 0, max_ulp = 0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i) {
    if (bits_of(got[i]) == bits_of(want[i])) continue;
    const int64_t ulp = ulp_distance(got[i], want[i]);
    if (ulp > max_ulp) max_ulp = ulp;
    if (n_diff++ < 5) {
      first << "\n    row " << static_cast<int64_t>(i) / out << ", out "
            << static_cast<int64_t>(i) % out << ": " << got_name << " = " << got[i] << " ("
            << hex(bits_of(got[i])) << "), " << want_name << " = " << want[i] << " ("
            << hex(bits_of(want[i])) << "), " << ulp << " ulp";
    }
  }
  if (n_diff == 0) return "";
  std::ostringstream os;
  os << got_name << " != " << want_name << " in " << n_diff << " of " << got.size()
     << " elements (max " << max_ulp << " ulp); first:" << first.str();
  return os.str();
}

// ============================================================================================
// CPU: the warp-order reference
// ============================================================================================

// A weight row whose blocks have scale 1.0 and quant 1 at element 0 (0 elsewhere), and an
// activation with q = value at element 0 of each block, so block b contributes exactly
// act_d[b] * act_q[b*32] and the cases below control every F32 operation.
struct Crafted {
  std::vector<uint8_t> w;
  std::vector<float> d;
  std::vector<int8_t> q;
  explicit Crafted(int nb)
      : w(static_cast<size_t>(nb) * kBlockBytes, 0), d(nb, 0.0f), q(nb * 32, 0) {
    for (int b = 0; b < nb; ++b) {
      w[b * kBlockBytes + 0] = 0x00;  // f16 1.0 = 0x3c00, little endian
      w[b * kBlockBytes + 1] = 0x3c;
      w[b * kBlockBytes + 2] = 1;
    }
  }
  void set(int b, float scale, int8_t quant) {
    d[b] = scale;
    q[b * 32] = quant;
  }
  float warp() const { return q8_0_dot_warp_order_ref(w.data(), d.data(), q.data(), n()); }
  float seq() const { return dot_q8_0_q8_0act(w.data(), d.data(), q.data(), n()); }
  int64_t n() const { return static_cast<int64_t>(d.size()) * 32; }
};

TEST(WarpOrderRef, ShuffleTreeOrder) {
  // p = [2^24, 1, 0, 1]: tree step offset 2 makes lane 1 = 1 + 1 = 2, offset 1 gives
  // 2^24 + 2 (exact). The sequential order loses each +1 (2^24 + 1 rounds to 2^24).
  Crafted c(4);
  c.set(0, 16777216.0f, 1);
  c.set(1, 1.0f, 1);
  c.set(3, 1.0f, 1);
  EXPECT_EQ(c.warp(), 16777218.0f) << "shuffle-down tree order (offsets 16,8,4,2,1) not followed";
  EXPECT_EQ(c.seq(), 16777216.0f);
}

TEST(WarpOrderRef, LaneAccumulatesBlocksLanePlus32) {
  // nb = 34: lane 0 owns blocks 0 and 32 (1 + 1 = 2), lane 1 owns blocks 1 and 33 (2^24 + 0);
  // the tree then adds 2 + 2^24 exactly. Summing blocks 0..31 first would lose both ones.
  Crafted c(34);
  c.set(0, 1.0f, 1);
  c.set(32, 1.0f, 1);
  c.set(1, 16777216.0f, 1);
  EXPECT_EQ(c.warp(), 16777218.0f) << "lane l must accumulate blocks l, l+32, ... before the tree";
  EXPECT_EQ(c.seq(), 16777216.0f);
}

TEST(WarpOrderRef, ProductsAreRoundedBeforeTheAdd) {
  // Lane 0: block 0 gives -3; block 32 gives (1 + 2^-23) * 3 = 3 + 1.5 ulp exactly, which
  // rounds to 3 + 2^-21 (ties to even). Unfused: -3 + (3 + 2^-21) = 2^-21. A contracted
  // fma(1 + 2^-23, 3, -3) would give 3 * 2^-23 instead. The GPU kernels use __fmul_rn /
  // __fadd_rn, so a compiler that contracts this file breaks bit-equality with them.
  Crafted c(33);
  c.set(0, 1.0f, -3);
  c.set(32, 1.0f + std::ldexp(1.0f, -23), 3);
  EXPECT_EQ(c.warp(), std::ldexp(1.0f, -21))
      << "q8_0_dot_warp_order_ref was compiled with fused multiply-add contraction";
}

TEST(WarpOrderRef, MatchesSequentialDotWithinRoundingBound) {
  // Both dots add the same F32 products p_b = round(round(wd*xd) * isum), in different orders.
  // Each sum of nb terms is within (nb-1) * u * Σ|p_b| of the exact sum (u = 2^-24), so they
  // are within 2 * nb * u * Σ|p_b| of each other.
  std::mt19937 rng(20240611);
  for (int64_t n : {32, 64, 1024, 1056, 4096, 8192, 32768}) {
    const int64_t nb = n / 32;
    for (int trial = 0; trial < 20; ++trial) {
      const std::vector<uint8_t> w = random_q8_0_matrix(n, 1, rng);
      const std::vector<float> x = random_activations(n, 1, rng);
      std::vector<float> d(nb);
      std::vector<int8_t> q(n);
      quantize_act_q8_0(x.data(), n, d.data(), q.data());
      double exact = 0.0, abs_sum = 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = w.data() + b * kBlockBytes;
        const float wd = f16_to_f32(static_cast<uint16_t>(blk[0] | (blk[1] << 8)));
        int32_t isum = 0;
        for (int i = 0; i < 32; ++i) isum += static_cast<int8_t>(blk[2 + i]) * q[b * 32 + i];
        const float dd = wd * d[b];
        const float p = dd * static_cast<float>(isum);
        exact += p;
        abs_sum += std::fabs(p);
      }
      const float warp = q8_0_dot_warp_order_ref(w.data(), d.data(), q.data(), n);
      const float seq = dot_q8_0_q8_0act(w.data(), d.data(), q.data(), n);
      const double bound = std::ldexp(abs_sum * static_cast<double>(nb), -24);
      EXPECT_LE(std::fabs(static_cast<double>(warp) - seq), 2.0 * bound)
          << "n = " << n << ", trial " << trial << ": warp " << warp << " seq " << seq;
      EXPECT_LE(std::fabs(static_cast<double>(warp) - exact), bound)
          << "n = " << n << ", trial " << trial << ": warp " << warp << " exact " << exact;
      if (nb <= 1) {
        EXPECT_EQ(bits_of(warp), bits_of(seq)) << "one block: both orders are the same sum";
      }
    }
  }
}

TEST(WarpOrderRef, Deterministic) {
  std::mt19937 rng(7);
  const int64_t in = 4096, out = 64, rows = 3;
  const std::vector<uint8_t> w = random_q8_0_matrix(in, out, rng);
  const std::vector<float> x = random_activations(in, rows, rng);
  std::vector<float> y1(rows * out), y2(rows * out);
  matvec_q8_0_warp_order_ref(w.data(), in, out, x.data(), rows, y1.data());
  matvec_q8_0_warp_order_ref(w.data(), in, out, x.data(), rows, y2.data());
  EXPECT_EQ(compare_bits(y2, y1, out, "second run", "first run"), "");
  // The matrix form is the dot applied to quantize_act_q8_0 of each row.
  std::vector<float> d(in / 32);
  std::vector<int8_t> q(in);
  quantize_act_q8_0(x.data() + 2 * in, in, d.data(), q.data());
  const float y =
      q8_0_dot_warp_order_ref(w.data() + 5 * (in / 32) * kBlockBytes, d.data(), q.data(), in);
  EXPECT_EQ(bits_of(y1[2 * out + 5]), bits_of(y));
}

TEST(WarpOrderRef, RejectsLengthNotMultipleOf32) {
  std::vector<uint8_t> w(2 * kBlockBytes, 0);
  std::vector<float> d(2, 0.0f);
  std::vector<int8_t> q(64, 0);
  EXPECT_THROW(q8_0_dot_warp_order_ref(w.data(), d.data(), q.data(), 33), Error);
  float x[33] = {}, y[1];
  EXPECT_THROW(matvec_q8_0_warp_order_ref(w.data(), 33, 1, x, 1, y), Error);
}

// ============================================================================================
// CUDA: device info, argument errors
// ============================================================================================

TEST(CudaDeviceInfo, NeverThrows) {
  CudaDeviceInfo info;
  EXPECT_NO_THROW(info = cuda_device_info());
  std::printf(
      "cuda_device_info: available=%d name='%s' sm_count=%d cc=%d.%d total_mem=%zu "
      "runtime=%d cublas=%d why='%s'\n",
      info.available, info.name.c_str(), info.sm_count, info.cc_major, info.cc_minor,
      info.total_mem, info.cuda_runtime_version, info.cublas_version, info.why_unavailable.c_str());
  if (info.available) {
    EXPECT_FALSE(info.name.empty());
    EXPECT_GT(info.sm_count, 0);
    EXPECT_GT(info.cc_major, 0);
    EXPECT_GT(info.total_mem, 0u);
    EXPECT_GT(info.cuda_runtime_version, 0);
  } else {
    EXPECT_FALSE(info.why_unavailable.empty()) << "unavailable needs a reason";
  }
}

TEST(CudaMatvec, BadArgumentsOrNoDeviceThrowError) {
  std::vector<uint8_t> w(2 * kBlockBytes, 0);
  std::vector<float> x(64, 1.0f), y(2, 0.0f);
  EXPECT_THROW(
      cuda_matvec_q8_0(w.data(), 33, 1, x.data(), 1, y.data(), CudaMatvecVariant::decode_warp8),
      Error);
  EXPECT_THROW(
      cuda_matvec_q8_0(w.data(), 32, 0, x.data(), 1, y.data(), CudaMatvecVariant::batch_warp8),
      Error);
  const CudaDeviceInfo info = cuda_device_info();
  if (info.available) return;
  try {
    cuda_matvec_q8_0(w.data(), 32, 1, x.data(), 1, y.data(), CudaMatvecVariant::decode_warp8);
    ADD_FAILURE() << "cuda_matvec_q8_0 without a usable device must throw ds4::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda_matvec_q8_0"), std::string::npos) << e.what();
  }
}

// ============================================================================================
// CUDA: kernels against the CPU, bit for bit
// ============================================================================================

struct Shape {
  int64_t in, out, n_rows;
};

std::string shape_name(const ::testing::TestParamInfo<Shape>& p) {
  return "in" + std::to_string(p.param.in) + "_out" + std::to_string(p.param.out) + "_rows" +
         std::to_string(p.param.n_rows);
}

class CudaMatvecShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(CudaMatvecShapes, QuantizerMatchesCpu) {
  const CudaDeviceInfo info = cuda_device_info();
  if (!info.available) GTEST_SKIP() << "no usable CUDA device: " << info.why_unavailable;
  const Shape s = GetParam();
  const uint32_t seed = static_cast<uint32_t>(1000003 * s.in + 7919 * s.out + s.n_rows);
  SCOPED_TRACE("activation seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const std::vector<float> x = random_activations(s.in, s.n_rows, rng);
  const int64_t nb = s.in / 32;
  std::vector<float> d_ref(s.n_rows * nb);
  std::vector<int8_t> q_ref(s.n_rows * s.in);
  for (int64_t r = 0; r < s.n_rows; ++r) {
    quantize_act_q8_0(x.data() + r * s.in, s.in, d_ref.data() + r * nb, q_ref.data() + r * s.in);
  }
  cuda::DeviceBuffer dx(x.size() * sizeof(float)), dq(q_ref.size()), dd(d_ref.size() * 4);
  dx.upload(x.data(), dx.size());
  cuda::quantize_act_q8_0_device(dx.as<float>(), s.n_rows, s.in, dq.as<int8_t>(), dd.as<float>());
  cuda::synchronize("quantize_act_q8_0_device");
  std::vector<float> d_gpu(d_ref.size());
  std::vector<int8_t> q_gpu(q_ref.size());
  dd.download(d_gpu.data(), dd.size());
  dq.download(q_gpu.data(), dq.size());
  EXPECT_EQ(compare_bits(d_gpu, d_ref, nb, "gpu scale", "cpu scale"), "")
      << "activation scales d = amax/127 differ from ds4::quantize_act_q8_0";
  int64_t n_diff = 0;
  std::ostringstream first;
  for (size_t i = 0; i < q_ref.size(); ++i) {
    if (q_gpu[i] == q_ref[i]) continue;
    if (n_diff++ < 5) {
      first << "\n    element " << i << " (x = " << x[i] << "): gpu " << int{q_gpu[i]} << ", cpu "
            << int{q_ref[i]};
    }
  }
  EXPECT_EQ(n_diff, 0) << "activation quants differ from ds4::quantize_act_q8_0 (x * (1/d), "
                          "round half to even, clamp):"
                       << first.str();
}

TEST_P(CudaMatvecShapes, DecodeEqualsWarpOrderRefAndBatchEqualsDecode) {
  const CudaDeviceInfo info = cuda_device_info();
  if (!info.available) GTEST_SKIP() << "no usable CUDA device: " << info.why_unavailable;
  const Shape s = GetParam();
  const uint32_t seed = static_cast<uint32_t>(1000003 * s.in + 7919 * s.out + s.n_rows);
  SCOPED_TRACE("in=" + std::to_string(s.in) + " out=" + std::to_string(s.out) +
               " n_rows=" + std::to_string(s.n_rows) + " seed=" + std::to_string(seed));
  std::mt19937 rng(seed);
  const std::vector<uint8_t> w = random_q8_0_matrix(s.in, s.out, rng);
  const std::vector<float> x = random_activations(s.in, s.n_rows, rng);
  const size_t ny = static_cast<size_t>(s.n_rows * s.out);

  std::vector<float> ref(ny), dec(ny), bat(ny), dec2(ny), bat2(ny);
  matvec_q8_0_warp_order_ref(w.data(), s.in, s.out, x.data(), s.n_rows, ref.data());
  cuda_matvec_q8_0(w.data(), s.in, s.out, x.data(), s.n_rows, dec.data(),
                   CudaMatvecVariant::decode_warp8);
  cuda_matvec_q8_0(w.data(), s.in, s.out, x.data(), s.n_rows, bat.data(),
                   CudaMatvecVariant::batch_warp8);
  cuda_matvec_q8_0(w.data(), s.in, s.out, x.data(), s.n_rows, dec2.data(),
                   CudaMatvecVariant::decode_warp8);
  cuda_matvec_q8_0(w.data(), s.in, s.out, x.data(), s.n_rows, bat2.data(),
                   CudaMatvecVariant::batch_warp8);

  EXPECT_EQ(compare_bits(dec, ref, s.out, "decode_warp8", "cpu warp-order ref"), "")
      << "matvec_q8_0__decode_warp8 must equal q8_0_dot_warp_order_ref bit for bit. If "
         "QuantizerMatchesCpu passes for this shape, the difference is in the dot: per-lane "
         "block order, the shuffle tree, fma contraction, or the weight block loads.";
  EXPECT_EQ(compare_bits(bat, dec, s.out, "batch_warp8", "decode_warp8"), "")
      << "matvec_q8_0__batch_warp8 must equal decode_warp8 row by row, bit for bit";
  EXPECT_EQ(compare_bits(dec2, dec, s.out, "decode_warp8 run 2", "run 1"), "")
      << "decode_warp8 is not deterministic";
  EXPECT_EQ(compare_bits(bat2, bat, s.out, "batch_warp8 run 2", "run 1"), "")
      << "batch_warp8 is not deterministic";
}

// Shapes: the tiny case; DS4 attn q_a (4096 -> 1024) at N = 1, 2; q_b (1024 -> 32768) at 4;
// an odd output count (257, not a multiple of 8 warps) with 16 rows (two batch groups);
// out_b (8192 -> 4096) at 3 (a partial batch group); 33 blocks (lane 0 owns two) with 17
// outputs and 9 rows.
INSTANTIATE_TEST_SUITE_P(Ds4Shapes, CudaMatvecShapes,
                         ::testing::Values(Shape{32, 1, 1}, Shape{4096, 1024, 1},
                                           Shape{4096, 1024, 2}, Shape{1024, 32768, 4},
                                           Shape{4096, 257, 16}, Shape{8192, 4096, 3},
                                           Shape{1056, 17, 9}),
                         shape_name);

}  // namespace
}  // namespace ds4
