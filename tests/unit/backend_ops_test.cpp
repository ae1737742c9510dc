// BackendOps (engine/forward/backend_ops.h), the op interface the one forward graph runs on every
// backend: a new op's default (on_host) runs its reference on host-memory and device-memory
// backends alike, and the CPU backend's variant tables know every CPU variant the gates name.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "backend/cpu/cpu_ops.h"
#include "ds4/error.h"
#include "ds4/gates.h"
#include "forward/backend_ops.h"
#include "ops/attention/attention.h"
#include "ops/indexer/indexer.h"
#include "ops/moe/moe.h"
#include "../support/tiny_models.h"

namespace {

// A backend whose "device" memory is a separate host arena reached only through upload /
// download / copy (as CUDA's is); every other op is absent.
class FakeDeviceOps final : public ds4::BackendOps {
 public:
  int downloads = 0, uploads = 0;
  const char* name() const override { return "fake"; }
  bool host_memory() const override { return false; }
  void* scratch(const char* name, size_t bytes) override {
    std::vector<float>& b = arena_[name];
    if (b.size() * sizeof(float) < bytes) b.resize((bytes + 3) / 4);
    return b.data();
  }
  void upload(void* dst, const void* host, size_t bytes) override {
    ++uploads;
    std::memcpy(dst, host, bytes);
  }
  void download(void* host, const void* src, size_t bytes) override {
    ++downloads;
    std::memcpy(host, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void finish(const char*) override {}
  int64_t chunk_rows() const override { return 1; }
  void reset_state() override {}
  void save_state(int64_t, ds4::SessionState*) override {}
  void load_state(const ds4::SessionState&) override {}
  float* last_hc() override { return nullptr; }
  int64_t ring_rows(int) const override { return 0; }
  int64_t compressed_rows(int, bool) const override { return 0; }
  const char* matmul(const ds4::WeightRef&, const float*, int64_t, float*, ds4::MatmulKind) override { return nullptr; }
  const char* matmul_grouped(const ds4::WeightRef&, int, const float*, int64_t, float*, ds4::MatmulKind) override {
    return nullptr;
  }
  const char* rmsnorm(const float*, const ds4::Vec*, float*, int64_t, int64_t) override { return nullptr; }
  const char* hc_split(const float*, const ds4::Vec&, const ds4::Vec&, float*, float*, float*, int64_t) override {
    return nullptr;
  }
  const char* hc_collapse_norm(const float*, const float*, const ds4::Vec&, float*, float*, int64_t) override {
    return nullptr;
  }
  const char* hc_post(const float*, const float*, const float*, const float*, float*, int64_t) override {
    return nullptr;
  }
  void hc_head(const float*, const float*, float, const ds4::Vec&, float*, int64_t) override {}
  void rope(float*, int64_t, int, int, const int64_t*, ds4::RopeKind, bool) override {}
  void kv_fp8_f16(float*, int64_t, int) override {}
  void indexer_qat(float*, int64_t, int, bool) override {}
  void ape_add(float*, const ds4::Vec&, int64_t, int, int, int64_t) override {}
  void swiglu(const float*, const float*, float*, int64_t, float) override {}
  const char* add(float*, const float*, int64_t) override { return nullptr; }
  const char* add_variant() const override { return nullptr; }
  void store_raw(int, const float*, int64_t, int64_t) override {}
  float* compress(int, bool, const float*, const float*, int64_t, int64_t, int64_t, std::vector<int64_t>*) override {
    return nullptr;
  }
  const char* compress_variant() const override { return nullptr; }
  const char* indexer_scores(int, const float*, const float*, const int32_t*, int64_t, float*, int64_t,
                             const char*) override {
    return nullptr;
  }
  const char* topk(const float*, const int32_t*, int64_t, int64_t, int, int32_t*, int32_t*, const char*) override {
    return nullptr;
  }
  void cand_indexed(int32_t*, int, const int32_t*, const int32_t*, int, const int32_t*, int64_t, int32_t) override {}
  void attention(int, const float*, const int32_t*, const int32_t*, int, const ds4::Vec&, float*, int64_t,
                 const char*) override {}
  const char* routed_experts(const ds4::LayerWeights&, const float*, int64_t, const std::vector<int32_t>&,
                             const std::vector<float>&, float, const char*, float*) override {
    return nullptr;
  }

 private:
  std::map<std::string, std::vector<float>> arena_;
};

// What a new op's default body looks like: y = 2 x + b through its "reference".
void twice_plus(ds4::BackendOps& ops, const float* x, float b, float* y, size_t n) {
  ops.on_host({{x, n}}, {{y, n}}, [&](float* const* h) {
    for (size_t i = 0; i < n; ++i) h[1][i] = 2.0f * h[0][i] + b;
  });
}

TEST(BackendOps, OnHostRunsAReferenceOnDeviceMemory) {
  FakeDeviceOps ops;
  float* x = ops.fbuf("x", 5);
  float* y = ops.fbuf("y", 5);
  const float host[5] = {1, 2, 3, 4, 5};
  ops.upload(x, host, sizeof host);
  twice_plus(ops, x, 0.5f, y, 5);
  float back[5];
  ops.download(back, y, sizeof back);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(back[i], 2.0f * host[i] + 0.5f);
  EXPECT_EQ(ops.downloads, 2);  // x for the reference, y for the check
  EXPECT_EQ(ops.uploads, 2);    // x, and y written back
}

TEST(BackendOps, OnHostUsesHostBuffersInPlaceOnTheCpu) {
  auto model = ds4::Model::load(ds4::testing::tiny_model_path("ds4"));
  ds4::SessionOptions so;
  so.n_threads = 1;
  const std::unique_ptr<ds4::BackendOps> ops = ds4::make_cpu_ops(*model, so);
  ASSERT_TRUE(ops->host_memory());
  EXPECT_STREQ(ops->name(), "cpu");
  std::vector<float> x = {1, -2, 3}, y(3);
  twice_plus(*ops, x.data(), 1.0f, y.data(), 3);
  EXPECT_EQ(y, (std::vector<float>{3, -3, 7}));
}

// Every variant gates.def names for the CPU on an op the graph picks by name has a CPU kernel.
TEST(BackendOps, CpuVariantTablesCoverTheGates) {
  for (const ds4::GateInfo& g : ds4::all_gates()) {
    if (!g.on_backend("cpu")) continue;
    for (const char* v : {g.exact_variant, g.fast_variant}) {
      const std::string n = v;
      if (n.rfind("attn_dense__", 0) == 0 || n.rfind("attn_indexed__", 0) == 0)
        EXPECT_NE(ds4::attention_head_variant(v), nullptr) << g.id << ": " << n;
      if (n.rfind("indexer_scores__", 0) == 0) EXPECT_NE(ds4::indexer_scores_variant(v), nullptr) << g.id << ": " << n;
      if (n.rfind("topk__", 0) == 0) EXPECT_NE(ds4::topk_variant(v), nullptr) << g.id << ": " << n;
      if (n.rfind("moe__", 0) == 0) EXPECT_NE(ds4::moe_variant(v), nullptr) << g.id << ": " << n;
    }
  }
  EXPECT_EQ(ds4::attention_head_variant("attn_dense__no_such"), nullptr);
}

}  // namespace
