// Routed-MoE CUDA kernels (engine/ops/moe/moe_cuda.cu, API in engine/backend/cuda/ops_cuda.h):
// the checks that do not fit the one-case-one-tier table of cuda_ops_test.cpp (which keeps the
// MoE tier cases: decode_lut, sorted_exact and expert_tiles against the CPU, for the three expert
// types, because that table, its Case machinery and its coverage tests live in that file).
// Suites:
//   CudaMoeArgs.*    argument checks of cuda::moe (CUDA built; no device needed: they throw
//                    before any launch).
//   CudaMoeDots.*    the Q8_K warp dot of every expert type (IQ2_XXS, Q2_K, Q4_K) bit for bit
//                    against dot_<type>_q8_k (engine/quant), on random and awkward blocks (max and
//                    zero 6-bit scales, all-ones quants, subnormal and negative f16 d, zero and
//                    negative routing weights). Seen through decode_lut's down projection: with
//                    the mid tap M, y = (0 + dot(down_e0, Q8_K(M_0))) + dot(down_e1, Q8_K(M_1)),
//                    which the test recomputes with the CPU dots (issue 6: the dots' conformance).
//   CudaMoeSorted.*  moe__sorted_exact against moe__decode_lut on the same inputs: memcmp-equal
//                    y and mid at N = 1, 2, 5, 16, 128, 300, 256 experts top-6, uniform routing
//                    and a skewed one (every token on 6 of 8 hot experts: tiles of up to 300
//                    pairs per expert), for iq2_xxs/q2_k, q4_k/q4_k and iq2_xxs/q4_k; and the
//                    same call twice gives the same bits.
// GPU suites GTEST_SKIP without a usable device. Inputs are seeded from --gtest_random_seed
// (default 20240601).
//   ./build/tests/cuda_moe_test
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../support/errors.h"
#include "ds4/cuda_backend.h"
#include "ds4/error.h"
#include "ds4/quant.h"

#if DS4_HAVE_CUDA
#include "backend/cuda/device.h"
#include "backend/cuda/ops_cuda.h"
#include "quant/quant_detail.h"
#endif

namespace ds4 {
namespace {

#if DS4_HAVE_CUDA

using cuda::ExpertType;
using cuda::MoeVariant;

uint32_t base_seed() {
  const int flag = GTEST_FLAG_GET(random_seed);
  return flag != 0 ? static_cast<uint32_t>(flag) : 20240601u;
}

// splitmix64: fast enough to fill a few hundred MB of random expert bytes.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform(float a, float b) { return a + (b - a) * static_cast<float>(next() >> 40) * 0x1p-24f; }
  int integer(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }  // [0, n)
  float normal() {  // sum of 4 uniforms, scaled: enough for activations
    float v = 0.0f;
    for (int i = 0; i < 4; ++i) v += uniform(-1.0f, 1.0f);
    return v * 0.8660254f;
  }
  void bytes(uint8_t* p, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const uint64_t v = next();
      std::memcpy(p + i, &v, 8);
    }
    for (; i < n; ++i) p[i] = static_cast<uint8_t>(next());
  }
};

struct TypeInfo {
  int bytes, d_off, dmin_off;  // block bytes, f16 d and dmin offsets (-1: none)
  float gu_scale, down_scale;  // d magnitudes for dots of a few units (as cuda_ops_test)
};
TypeInfo type_info(ExpertType t) {
  switch (t) {
    case ExpertType::iq2_xxs: return {66, 0, -1, 2e-3f, 2e-3f};
    case ExpertType::q2_k: return {84, 80, 82, 2e-3f, 1e-3f};
    case ExpertType::q4_k: return {144, 0, 2, 2e-4f, 1e-4f};
  }
  fail("type_info: unknown expert type");
}
const char* type_label(ExpertType t) {
  return t == ExpertType::iq2_xxs ? "iq2" : t == ExpertType::q2_k ? "q2k" : "q4k";
}

void put_f16(uint8_t* p, uint16_t h) { std::memcpy(p, &h, 2); }

// n_blocks random blocks of type t with f16 d (and dmin) of magnitude `scale`. awkward: every
// block b with b % 8 >= 4 gets an edge case: 4 max scales, 5 zero scales and all-ones quants,
// 6 subnormal d, 7 negative d with a large dmin.
void fill_blocks(uint8_t* p, size_t n_blocks, ExpertType t, float scale, Rng& rng, bool awkward) {
  const TypeInfo ti = type_info(t);
  rng.bytes(p, n_blocks * ti.bytes);
  for (size_t b = 0; b < n_blocks; ++b) {
    uint8_t* blk = p + b * ti.bytes;
    put_f16(blk + ti.d_off, f32_to_f16(scale * rng.uniform(0.5f, 1.5f)));
    if (ti.dmin_off >= 0) put_f16(blk + ti.dmin_off, f32_to_f16(0.5f * scale * rng.uniform(0.5f, 1.5f)));
    if (!awkward) continue;
    switch (b % 8) {
      case 4:  // every scale (and min) at its maximum
        if (t == ExpertType::q4_k) std::memset(blk + 4, 0xff, 12);
        if (t == ExpertType::q2_k) std::memset(blk, 0xff, 16);
        if (t == ExpertType::iq2_xxs)
          for (int ib = 0; ib < 8; ++ib) blk[2 + 8 * ib + 7] |= 0xf0;
        break;
      case 5:  // zero scales (K-quants) and all-ones quant bytes
        if (t == ExpertType::q4_k) {
          std::memset(blk + 4, 0, 12);
          blk[4 + 2] = 63;  // one non-zero scale: sub-block 2
          std::memset(blk + 16, 0xff, 128);
        }
        if (t == ExpertType::q2_k) {
          std::memset(blk, 0, 16);
          blk[7] = 0x0f;
          std::memset(blk + 16, 0xff, 64);
        }
        if (t == ExpertType::iq2_xxs) std::memset(blk + 2, 0xff, 64);
        break;
      case 6:  // subnormal f16 d (and dmin)
        put_f16(blk + ti.d_off, static_cast<uint16_t>(1 + rng.integer(0x3ff)));
        if (ti.dmin_off >= 0) put_f16(blk + ti.dmin_off, 0x0001);
        break;
      case 7:  // negative d, dmin 8x larger (and negative half the time)
        put_f16(blk + ti.d_off, static_cast<uint16_t>(0x8000 | f32_to_f16(scale)));
        if (ti.dmin_off >= 0)
          put_f16(blk + ti.dmin_off, f32_to_f16((rng.integer(2) ? 8.0f : -8.0f) * scale));
        break;
    }
  }
}

template <class T>
cuda::DeviceBuffer to_device(const std::vector<T>& v) {
  cuda::DeviceBuffer b(v.size() * sizeof(T));
  b.upload(v.data(), v.size() * sizeof(T));
  return b;
}

template <class T>
std::vector<T> from_device(const cuda::DeviceBuffer& b, size_t n, const char* what) {
  cuda::synchronize(what);
  std::vector<T> v(n);
  b.download(v.data(), n * sizeof(T));
  return v;
}

// One MoE problem on the device: n_expert experts (all filled), up to max_tok tokens.
struct Problem {
  ExpertType gu, dn;
  int n_expert, n_used, max_tok;
  int64_t d, ff;
  std::vector<uint8_t> gate, up, down;  // host copies
  std::vector<float> x;
  cuda::DeviceBuffer dgate, dup, ddown, dx, dgrid, dy, dmid, dscratch, dexperts, dweights;

  Problem(ExpertType gu_, ExpertType dn_, int n_expert_, int n_used_, int max_tok_, int64_t d_,
          int64_t ff_, uint32_t seed, bool awkward)
      : gu(gu_), dn(dn_), n_expert(n_expert_), n_used(n_used_), max_tok(max_tok_), d(d_), ff(ff_) {
    Rng rng(seed);
    const TypeInfo g = type_info(gu), o = type_info(dn);
    const size_t gu_blocks = static_cast<size_t>(n_expert) * ff * (d / 256);
    const size_t dn_blocks = static_cast<size_t>(n_expert) * d * (ff / 256);
    gate.resize(gu_blocks * g.bytes);
    up.resize(gate.size());
    down.resize(dn_blocks * o.bytes);
    fill_blocks(gate.data(), gu_blocks, gu, g.gu_scale, rng, awkward);
    fill_blocks(up.data(), gu_blocks, gu, g.gu_scale, rng, awkward);
    fill_blocks(down.data(), dn_blocks, dn, o.down_scale, rng, awkward);
    x.resize(static_cast<size_t>(max_tok) * d);
    for (float& v : x) v = rng.normal();
    dgate = to_device(gate);
    dup = to_device(up);
    ddown = to_device(down);
    dx = to_device(x);
    dgrid = to_device(std::vector<uint64_t>(quant_detail::kIq2xxsGrid, quant_detail::kIq2xxsGrid + 256));
    dy = cuda::DeviceBuffer(static_cast<size_t>(max_tok) * d * sizeof(float));
    dmid = cuda::DeviceBuffer(static_cast<size_t>(max_tok) * n_used * ff * sizeof(float));
    size_t scratch = 0;
    for (MoeVariant v : {MoeVariant::decode_lut, MoeVariant::sorted_exact, MoeVariant::expert_tiles})
      scratch = std::max(scratch, cuda::moe_scratch_bytes(max_tok, n_used, n_expert, d, ff, v));
    dscratch = cuda::DeviceBuffer(scratch);
  }

  void set_routing(const std::vector<int32_t>& experts, const std::vector<float>& weights) {
    dexperts = to_device(experts);
    dweights = to_device(weights);
  }

  // Runs v on the first n tokens; returns {y (n, d), mid (n, n_used, ff)}.
  std::pair<std::vector<float>, std::vector<float>> run(MoeVariant v, int n) const {
    cuda::MoeArgs a;
    a.gate = dgate.get();
    a.up = dup.get();
    a.down = ddown.get();
    a.gate_up_type = gu;
    a.down_type = dn;
    a.x = dx.as<float>();
    a.experts = dexperts.as<int32_t>();
    a.weights = dweights.as<float>();
    a.iq2_grid = dgrid.as<uint64_t>();
    a.y = dy.as<float>();
    a.mid = dmid.as<float>();
    a.scratch = dscratch.get();
    a.n_tok = n;
    a.n_expert = n_expert;
    a.n_used = n_used;
    a.d = d;
    a.ff = ff;
    a.limit = 10.0f;
    cuda::moe(a, v);
    return {from_device<float>(dy, static_cast<size_t>(n) * d, cuda::variant_name(v)),
            from_device<float>(dmid, static_cast<size_t>(n) * n_used * ff, cuda::variant_name(v))};
  }
};

// Routings of n tokens x 6 slots, distinct experts per token, weights in [0.1, 0.5).
// skewed: every token picks its 6 of 8 hot experts (random slot order).
void make_routing(int n, int n_used, int n_expert, bool skewed, Rng& rng,
                  std::vector<int32_t>& experts, std::vector<float>& weights) {
  const int32_t hot[8] = {0, 5, 9, 77, 128, 200, n_expert - 2, n_expert - 1};
  experts.clear();
  weights.clear();
  for (int t = 0; t < n; ++t) {
    std::vector<int32_t> sel;
    while (static_cast<int>(sel.size()) < n_used) {
      const int32_t e = skewed ? hot[rng.integer(8)] : rng.integer(n_expert);
      if (std::find(sel.begin(), sel.end(), e) == sel.end()) sel.push_back(e);
    }
    for (int32_t e : sel) {
      experts.push_back(e);
      weights.push_back(rng.uniform(0.1f, 0.5f));
    }
  }
}

size_t first_diff(const std::vector<float>& a, const std::vector<float>& b) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return i;
  return a.size() == b.size() ? SIZE_MAX : std::min(a.size(), b.size());
}

std::string no_gpu_reason() {
  const CudaDeviceInfo info = cuda_device_info();
  return info.available ? std::string() : info.why_unavailable;
}

#define SKIP_WITHOUT_GPU()                                                   \
  do {                                                                       \
    const std::string why_ = no_gpu_reason();                                \
    if (!why_.empty()) GTEST_SKIP() << "no usable CUDA device: " << why_;    \
  } while (0)

// ---- argument checks (no launch) -------------------------------------------------------------

cuda::MoeArgs shape_only_args() {
  cuda::MoeArgs a;
  a.n_tok = 0;  // valid arguments return before any launch
  a.n_expert = 256;
  a.n_used = 6;
  a.d = 4096;
  a.ff = 2048;
  a.scratch = reinterpret_cast<void*>(uintptr_t{256});
  a.gate = a.up = a.down = reinterpret_cast<const void*>(uintptr_t{1024});
  return a;
}

TEST(CudaMoeArgs, ExpertTypes) {
  for (MoeVariant v : {MoeVariant::decode_lut, MoeVariant::sorted_exact, MoeVariant::expert_tiles}) {
    SCOPED_TRACE(cuda::variant_name(v));
    cuda::MoeArgs a = shape_only_args();
    a.gate_up_type = static_cast<ExpertType>(7);
    EXPECT_NE(testing::error_of([&] { cuda::moe(a, v); }).find("unknown expert type"), std::string::npos);
    a = shape_only_args();
    a.down_type = static_cast<ExpertType>(-1);
    EXPECT_NE(testing::error_of([&] { cuda::moe(a, v); }).find("unknown expert type"), std::string::npos);
    // iq2_grid is required only with an iq2_xxs type.
    a = shape_only_args();
    EXPECT_NE(testing::error_of([&] { cuda::moe(a, v); }).find("iq2_grid"), std::string::npos);
    a.gate_up_type = ExpertType::q4_k;
    a.down_type = ExpertType::iq2_xxs;
    EXPECT_NE(testing::error_of([&] { cuda::moe(a, v); }).find("iq2_grid"), std::string::npos);
    a.down_type = ExpertType::q4_k;
    EXPECT_EQ(testing::error_of([&] { cuda::moe(a, v); }), "");
    a.down_type = ExpertType::q2_k;
    EXPECT_EQ(testing::error_of([&] { cuda::moe(a, v); }), "");
    // K-quant tensors are read as 32-bit words.
    a.up = reinterpret_cast<const void*>(uintptr_t{1026});
    EXPECT_NE(testing::error_of([&] { cuda::moe(a, v); }).find("aligned"), std::string::npos);
    a = shape_only_args();
    a.iq2_grid = reinterpret_cast<const uint64_t*>(uintptr_t{2048});
    a.down_type = ExpertType::iq2_xxs;
    a.gate = reinterpret_cast<const void*>(uintptr_t{1026});  // 2-byte aligned: fine for iq2_xxs
    EXPECT_EQ(testing::error_of([&] { cuda::moe(a, v); }), "");
  }
  EXPECT_STREQ(cuda::variant_name(MoeVariant::sorted_exact), "moe__sorted_exact");
}

// ---- warp dots against the CPU dots ---------------------------------------------------------

class CudaMoeDots : public ::testing::TestWithParam<ExpertType> {
 protected:
  void SetUp() override { SKIP_WITHOUT_GPU(); }
};

TEST_P(CudaMoeDots, DownDotsBitEqualCpu) {
  const ExpertType t = GetParam();
  constexpr int kExperts = 4, kUsed = 2, kTok = 9;
  constexpr int64_t kD = 512, kFf = 1280;  // 5 blocks per down row: partial 2- and 4-block steps
  const uint32_t seed = base_seed() ^ (0x51u + static_cast<uint32_t>(t));
  Problem pr(t, t, kExperts, kUsed, kTok, kD, kFf, seed, /*awkward=*/true);
  Rng rng(seed + 1);
  std::vector<int32_t> experts;
  std::vector<float> weights;
  make_routing(kTok, kUsed, kExperts, false, rng, experts, weights);
  weights[2] = 0.0f;   // token 1 slot 0: mid all zero (Q8_K d = 0)
  weights[5] = -0.3f;  // token 2 slot 1: negative mid
  weights[7] = 40.0f;  // token 3 slot 1: large mid
  pr.set_routing(experts, weights);
  for (MoeVariant v : {MoeVariant::decode_lut, MoeVariant::sorted_exact}) {
    SCOPED_TRACE(cuda::variant_name(v));
    const auto [y, mid] = pr.run(v, kTok);
    const size_t row_bytes = static_cast<size_t>(kFf / 256) * type_info(t).bytes;
    int64_t diffs = 0, first = -1;
    float ref_first = 0, got_first = 0;
    std::vector<BlockQ8K> act(kFf / 256);
    std::vector<float> ref(static_cast<size_t>(kTok) * kD, 0.0f);
    for (int tok = 0; tok < kTok; ++tok) {
      for (int s = 0; s < kUsed; ++s) {
        const int p = tok * kUsed + s;
        quantize_act_q8_k(&mid[static_cast<size_t>(p) * kFf], kFf, act.data());
        for (int64_t o = 0; o < kD; ++o) {
          const uint8_t* row = pr.down.data() + (static_cast<size_t>(experts[p]) * kD + o) * row_bytes;
          const float dot = t == ExpertType::q4_k   ? dot_q4_k_q8_k(row, act.data(), kFf)
                            : t == ExpertType::q2_k ? dot_q2_k_q8_k(row, act.data(), kFf)
                                                    : dot_iq2_xxs_q8_k(row, act.data(), kFf);
          ref[tok * kD + o] = ref[tok * kD + o] + dot;
        }
      }
    }
    for (size_t i = 0; i < ref.size(); ++i) {
      if (std::memcmp(&ref[i], &y[i], sizeof(float)) != 0) {
        if (first < 0) first = static_cast<int64_t>(i), ref_first = ref[i], got_first = y[i];
        ++diffs;
      }
    }
    EXPECT_EQ(diffs, 0) << type_label(t) << ": " << diffs << " of " << ref.size()
                        << " outputs differ from the CPU dots; first at " << first << ": cpu "
                        << ref_first << " gpu " << got_first << " (seed " << base_seed() << ")";
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaMoeDots,
                         ::testing::Values(ExpertType::iq2_xxs, ExpertType::q2_k, ExpertType::q4_k),
                         [](const ::testing::TestParamInfo<ExpertType>& i) {
                           return std::string(type_label(i.param));
                         });

// ---- sorted_exact vs decode_lut -------------------------------------------------------------

struct Combo {
  ExpertType gu, dn;
};

class CudaMoeSorted : public ::testing::TestWithParam<Combo> {
 protected:
  void SetUp() override { SKIP_WITHOUT_GPU(); }
};

constexpr int kExperts = 256, kUsed = 6, kMaxTok = 300;
constexpr int64_t kD = 1280, kFf = 768;  // 5 and 3 blocks: partial dot steps in both

TEST_P(CudaMoeSorted, BitEqualToDecodeLut) {
  const Combo c = GetParam();
  const uint32_t seed = base_seed() ^ (0x5e00u + 16 * static_cast<uint32_t>(c.gu) +
                                       static_cast<uint32_t>(c.dn));
  Problem pr(c.gu, c.dn, kExperts, kUsed, kMaxTok, kD, kFf, seed, /*awkward=*/false);
  Rng rng(seed + 7);
  for (const bool skewed : {false, true}) {
    std::vector<int32_t> experts;
    std::vector<float> weights;
    make_routing(kMaxTok, kUsed, kExperts, skewed, rng, experts, weights);
    pr.set_routing(experts, weights);
    for (const int n : {1, 2, 5, 16, 128, 300}) {
      SCOPED_TRACE(std::string(skewed ? "skewed" : "uniform") + " N=" + std::to_string(n));
      const auto [y_ref, mid_ref] = pr.run(MoeVariant::decode_lut, n);
      const auto [y, mid] = pr.run(MoeVariant::sorted_exact, n);
      ASSERT_EQ(y.size(), y_ref.size());
      ASSERT_EQ(mid.size(), mid_ref.size());
      const size_t dy = first_diff(y_ref, y), dm = first_diff(mid_ref, mid);
      EXPECT_EQ(dm, SIZE_MAX) << "mid differs first at " << dm << " (pair " << dm / kFf << "): "
                              << mid_ref[dm] << " vs " << mid[dm];
      EXPECT_EQ(dy, SIZE_MAX) << "y differs first at " << dy << " (token " << dy / kD << "): "
                              << y_ref[dy] << " vs " << y[dy];
      bool finite = true;
      for (float v : y) finite = finite && std::isfinite(v);
      EXPECT_TRUE(finite) << "non-finite output";
    }
  }
}

TEST_P(CudaMoeSorted, RepeatSameBits) {
  const Combo c = GetParam();
  const uint32_t seed = base_seed() ^ 0x7e9u;
  Problem pr(c.gu, c.dn, kExperts, kUsed, kMaxTok, kD, kFf, seed, /*awkward=*/false);
  Rng rng(seed + 3);
  std::vector<int32_t> experts;
  std::vector<float> weights;
  make_routing(kMaxTok, kUsed, kExperts, true, rng, experts, weights);
  pr.set_routing(experts, weights);
  const auto first = pr.run(MoeVariant::sorted_exact, kMaxTok);
  const auto second = pr.run(MoeVariant::sorted_exact, kMaxTok);
  EXPECT_EQ(first_diff(first.first, second.first), SIZE_MAX) << "y differs between two runs";
  EXPECT_EQ(first_diff(first.second, second.second), SIZE_MAX) << "mid differs between two runs";
}

INSTANTIATE_TEST_SUITE_P(Combos, CudaMoeSorted,
                         ::testing::Values(Combo{ExpertType::iq2_xxs, ExpertType::q2_k},
                                           Combo{ExpertType::q4_k, ExpertType::q4_k},
                                           Combo{ExpertType::iq2_xxs, ExpertType::q4_k}),
                         [](const ::testing::TestParamInfo<Combo>& i) {
                           return std::string(type_label(i.param.gu)) + "_" + type_label(i.param.dn);
                         });

#else  // !DS4_HAVE_CUDA

TEST(CudaMoeSkip, NotBuilt) { GTEST_SKIP() << "CUDA backend not built (-DDS4_CUDA=OFF)"; }

#endif  // DS4_HAVE_CUDA

}  // namespace
}  // namespace ds4
