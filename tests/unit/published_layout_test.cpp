// The published files users run, and their MTP sidecar, without downloading them:
//   * `ds4-synth --preset published|published-mtp` write the tensor directory and metadata of
//     DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf and of
//     DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf with all-zero weights left as sparse holes; the
//     directory is checked here against antirez/ds4's ds4.c checks (weights_validate_layout,
//     mtp_weights_validate_layout, config_validate_model), restated from its constants, not taken
//     from our own expected_tensors(); scripts/ds4-loader-check runs ds4's own loader on the same
//     two files (reports/cpu/ds4_loader_check.md);
//   * the two load, pair, and run a short prompt with the default (fast) gates in a child process
//     whose address space is capped at the two mappings plus a fixed headroom, so a cache that
//     grows with the model fails the test instead of waiting for the OOM killer;
//   * a sidecar carries the same MTP block as our single-file layout (tiny model), and a sidecar
//     that does not fit its trunk is a one-line error naming what differs;
//   * the dequantised-weight cache's byte budget changes no result, and a copy larger than the
//     budget is an error naming DS4_CPU_DEQUANT_CACHE_MB.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "ds4/engine.h"
#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/synth.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;

namespace {

using ds4::QType;

// AddressSanitizer reserves terabytes of shadow address space at start-up, so a child whose
// address space is capped (RLIMIT_AS) cannot map the model under it; and the 43-layer forward
// takes 5.5 minutes there (instrumented dequantisation of every layer's weights).
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

// A scratch folder on the build disk (a sparse 80 GiB file must not land on a tmpfs), removed at
// the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = std::string(DS4_BINARY_DIR) + "/test-models/published-XXXXXX";
    fs::create_directories(std::string(DS4_BINARY_DIR) + "/test-models");
    path_ = ::mkdtemp(tmpl.data());
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void synth(const std::string& path, const std::string& preset, bool sidecar = false, uint32_t vocab = 0,
           bool mtp = false, uint32_t layers = 0) {
  ds4::SynthOptions o;
  o.preset = preset;
  o.mtp_sidecar = sidecar;
  o.mtp = mtp;
  o.n_vocab = vocab;
  o.n_layer = layers;
  ds4::write_synth_model(o, path);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ds4::Error& e) {
    return e.what();
  }
  return "";
}

// ---- ds4.c's fixed shape (its enum of DS4_N_* constants) -------------------------------------

constexpr int64_t kLayers = 43, kEmbd = 4096, kVocab = 129280, kHead = 64, kHeadDim = 512, kLoraQ = 1024,
                  kLoraO = 1024, kOutGroup = 8, kExpert = 256, kExpertUsed = 6, kFfExp = 2048, kHashLayers = 3,
                  kIdxHead = 64, kIdxHeadDim = 128, kHc = 4;
constexpr int64_t kHcDim = kEmbd * kHc, kHcMix = 2 * kHc + kHc * kHc;

// ds4_layer_compress_ratio: dense layers 0 and 1, then 4 on even and 128 on odd layers.
int64_t ratio_of(int64_t il) { return il < 2 ? 0 : (il % 2 == 0 ? 4 : 128); }

struct Want {
  std::vector<QType> types;  // accepted types (ds4.c's "plain" tensors take F16 or F32)
  std::vector<int64_t> ne;
};

// The trunk as weights_validate_layout checks it, with the types of the published mix
// (IQ2_XXS gate/up, Q2_K down: ds4.c accepts any routed-expert quant; the file name fixes these).
std::map<std::string, Want> published_trunk() {
  std::map<std::string, Want> w;
  const auto F16 = QType::F16, F32 = QType::F32, Q8 = QType::Q8_0;
  w["token_embd.weight"] = {{F16}, {kEmbd, kVocab}};
  w["output_hc_base.weight"] = {{F32}, {kHc}};
  w["output_hc_fn.weight"] = {{F16}, {kHcDim, kHc}};
  w["output_hc_scale.weight"] = {{F32}, {1}};
  w["output_norm.weight"] = {{F32}, {kEmbd}};
  w["output.weight"] = {{Q8}, {kEmbd, kVocab}};
  for (int64_t il = 0; il < kLayers; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    w[p + "hc_attn_fn.weight"] = {{F16}, {kHcDim, kHcMix}};
    w[p + "hc_attn_scale.weight"] = {{F32}, {3}};
    w[p + "hc_attn_base.weight"] = {{F32}, {kHcMix}};
    w[p + "attn_norm.weight"] = {{F32}, {kEmbd}};
    w[p + "attn_q_a.weight"] = {{Q8}, {kEmbd, kLoraQ}};
    w[p + "attn_q_a_norm.weight"] = {{F32}, {kLoraQ}};
    w[p + "attn_q_b.weight"] = {{Q8}, {kLoraQ, kHead * kHeadDim}};
    w[p + "attn_kv.weight"] = {{Q8}, {kEmbd, kHeadDim}};
    w[p + "attn_kv_a_norm.weight"] = {{F32}, {kHeadDim}};
    w[p + "attn_sinks.weight"] = {{F32}, {kHead}};
    w[p + "attn_output_a.weight"] = {{Q8}, {kHeadDim * (kHead / kOutGroup), kOutGroup * kLoraO}};
    w[p + "attn_output_b.weight"] = {{Q8}, {kOutGroup * kLoraO, kEmbd}};
    const int64_t ratio = ratio_of(il);
    if (ratio != 0) {
      const int64_t width = (ratio == 4 ? 2 : 1) * kHeadDim;
      w[p + "attn_compressor_ape.weight"] = {{F16}, {width, ratio}};
      w[p + "attn_compressor_kv.weight"] = {{F16}, {kEmbd, width}};
      w[p + "attn_compressor_gate.weight"] = {{F16}, {kEmbd, width}};
      w[p + "attn_compressor_norm.weight"] = {{F32}, {kHeadDim}};
    }
    if (ratio == 4) {
      w[p + "indexer.attn_q_b.weight"] = {{F16}, {kLoraQ, kIdxHead * kIdxHeadDim}};
      w[p + "indexer.proj.weight"] = {{F16}, {kEmbd, kIdxHead}};
      w[p + "indexer_compressor_ape.weight"] = {{F16}, {2 * kIdxHeadDim, ratio}};
      w[p + "indexer_compressor_kv.weight"] = {{F16}, {kEmbd, 2 * kIdxHeadDim}};
      w[p + "indexer_compressor_gate.weight"] = {{F16}, {kEmbd, 2 * kIdxHeadDim}};
      w[p + "indexer_compressor_norm.weight"] = {{F32}, {kIdxHeadDim}};
    }
    w[p + "hc_ffn_fn.weight"] = {{F16}, {kHcDim, kHcMix}};
    w[p + "hc_ffn_scale.weight"] = {{F32}, {3}};
    w[p + "hc_ffn_base.weight"] = {{F32}, {kHcMix}};
    w[p + "ffn_norm.weight"] = {{F32}, {kEmbd}};
    w[p + "ffn_gate_inp.weight"] = {{F16}, {kEmbd, kExpert}};
    // Optional in ds4.c; the learned-routing layers have it (the hash layers route by table).
    if (il >= kHashLayers) w[p + "exp_probs_b.bias"] = {{F32}, {kExpert}};
    w[p + "ffn_gate_exps.weight"] = {{QType::IQ2_XXS}, {kEmbd, kFfExp, kExpert}};
    w[p + "ffn_up_exps.weight"] = {{QType::IQ2_XXS}, {kEmbd, kFfExp, kExpert}};
    w[p + "ffn_down_exps.weight"] = {{QType::Q2_K}, {kFfExp, kEmbd, kExpert}};
    w[p + "ffn_gate_shexp.weight"] = {{Q8}, {kEmbd, kFfExp}};
    w[p + "ffn_up_shexp.weight"] = {{Q8}, {kEmbd, kFfExp}};
    w[p + "ffn_down_shexp.weight"] = {{Q8}, {kFfExp, kEmbd}};
    if (il < kHashLayers) w[p + "ffn_gate_tid2eid.weight"] = {{QType::I32}, {kExpertUsed, kVocab}};
  }
  return w;
}

// The sidecar in mtp_weights_bind's order, as mtp_weights_validate_layout checks it, with the
// published recipe's types (MTP-Q4K-Q8_0-F32: Q4_K experts; F32 where ds4.c takes F16 or F32).
std::vector<std::pair<std::string, Want>> published_sidecar() {
  const auto F32 = QType::F32, Q8 = QType::Q8_0, Q4K = QType::Q4_K;
  return {
      {"mtp.0.hc_head_base.weight", {{F32}, {kHc}}},
      {"mtp.0.hc_head_fn.weight", {{F32}, {kHcDim, kHc}}},
      {"mtp.0.hc_head_scale.weight", {{F32}, {1}}},
      {"mtp.0.e_proj.weight", {{Q8}, {kEmbd, kEmbd}}},
      {"mtp.0.h_proj.weight", {{Q8}, {kEmbd, kEmbd}}},
      {"mtp.0.enorm.weight", {{F32}, {kEmbd}}},
      {"mtp.0.hnorm.weight", {{F32}, {kEmbd}}},
      {"mtp.0.norm.weight", {{F32}, {kEmbd}}},
      {"mtp.0.hc_attn_fn.weight", {{F32}, {kHcDim, kHcMix}}},
      {"mtp.0.hc_attn_scale.weight", {{F32}, {3}}},
      {"mtp.0.hc_attn_base.weight", {{F32}, {kHcMix}}},
      {"mtp.0.attn_norm.weight", {{F32}, {kEmbd}}},
      {"mtp.0.attn_q_a.weight", {{Q8}, {kEmbd, kLoraQ}}},
      {"mtp.0.attn_q_a_norm.weight", {{F32}, {kLoraQ}}},
      {"mtp.0.attn_q_b.weight", {{Q8}, {kLoraQ, kHead * kHeadDim}}},
      {"mtp.0.attn_kv.weight", {{Q8}, {kEmbd, kHeadDim}}},
      {"mtp.0.attn_kv_a_norm.weight", {{F32}, {kHeadDim}}},
      {"mtp.0.attn_sinks.weight", {{F32}, {kHead}}},
      {"mtp.0.attn_output_a.weight", {{Q8}, {kHeadDim * (kHead / kOutGroup), kOutGroup * kLoraO}}},
      {"mtp.0.attn_output_b.weight", {{Q8}, {kOutGroup * kLoraO, kEmbd}}},
      {"mtp.0.hc_ffn_fn.weight", {{F32}, {kHcDim, kHcMix}}},
      {"mtp.0.hc_ffn_scale.weight", {{F32}, {3}}},
      {"mtp.0.hc_ffn_base.weight", {{F32}, {kHcMix}}},
      {"mtp.0.ffn_norm.weight", {{F32}, {kEmbd}}},
      {"mtp.0.ffn_gate_inp.weight", {{F32}, {kEmbd, kExpert}}},
      {"mtp.0.exp_probs_b.bias", {{F32}, {kExpert}}},
      {"mtp.0.ffn_gate_exps.weight", {{Q4K}, {kEmbd, kFfExp, kExpert}}},
      {"mtp.0.ffn_up_exps.weight", {{Q4K}, {kEmbd, kFfExp, kExpert}}},
      {"mtp.0.ffn_down_exps.weight", {{Q4K}, {kFfExp, kEmbd, kExpert}}},
      {"mtp.0.ffn_gate_shexp.weight", {{Q8}, {kEmbd, kFfExp}}},
      {"mtp.0.ffn_up_shexp.weight", {{Q8}, {kEmbd, kFfExp}}},
      {"mtp.0.ffn_down_shexp.weight", {{Q8}, {kFfExp, kEmbd}}},
  };
}

void expect_tensor(const ds4::GgufTensor& t, const Want& want) {
  SCOPED_TRACE(t.name);
  EXPECT_NE(std::find(want.types.begin(), want.types.end(), t.type), want.types.end())
      << "type " << ds4::qtype_name(t.type);
  EXPECT_EQ(t.ne, want.ne);
}

uint64_t disk_bytes(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// ---- the published layout --------------------------------------------------------------------

TEST(PublishedLayout, TrunkDirectoryAndMetadataAreWhatDs4cChecks) {
  ScratchDir dir;
  const std::string trunk = dir.file("trunk.gguf");
  synth(trunk, "published");
  const auto f = ds4::GgufFile::open(trunk);
  // Size of the published file (80.8 GiB) but almost no disk: every tensor is a hole.
  EXPECT_EQ(f->file_size(), 86718244672u);
  EXPECT_LT(disk_bytes(trunk), uint64_t{64} << 20);

  const std::map<std::string, Want> want = published_trunk();
  EXPECT_EQ(f->tensors().size(), want.size()) << "no tensor beyond ds4.c's list (no MTP block)";
  for (const auto& [name, w] : want) {
    const ds4::GgufTensor* t = f->find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    expect_tensor(*t, w);
  }
  // config_validate_model: every deepseek4.* key it requires, with Flash's value.
  const std::map<std::string, uint64_t> u32 = {
      {"block_count", 43}, {"embedding_length", 4096}, {"vocab_size", 129280}, {"attention.head_count", 64},
      {"attention.head_count_kv", 1}, {"attention.key_length", 512}, {"attention.value_length", 512},
      {"rope.dimension_count", 64}, {"attention.q_lora_rank", 1024}, {"attention.output_lora_rank", 1024},
      {"attention.output_group_count", 8}, {"expert_count", 256}, {"expert_used_count", 6},
      {"expert_feed_forward_length", 2048}, {"expert_shared_count", 1}, {"hash_layer_count", 3},
      {"attention.sliding_window", 128}, {"attention.indexer.head_count", 64},
      {"attention.indexer.key_length", 128}, {"attention.indexer.top_k", 512}, {"hyper_connection.count", 4},
      {"hyper_connection.sinkhorn_iterations", 20}, {"rope.scaling.original_context_length", 65536},
      {"nextn_predict_layers", 1}};
  for (const auto& [k, v] : u32) EXPECT_EQ(f->get_u64("deepseek4." + k), v) << k;
  const std::map<std::string, float> f32 = {
      {"rope.freq_base", 10000.f}, {"rope.scaling.factor", 16.f}, {"rope.scaling.yarn_beta_fast", 32.f},
      {"rope.scaling.yarn_beta_slow", 1.f}, {"attention.compress_rope_freq_base", 160000.f},
      {"expert_weights_scale", 1.5f}, {"attention.layer_norm_rms_epsilon", 1e-6f},
      {"hyper_connection.epsilon", 1e-6f}};
  for (const auto& [k, v] : f32) EXPECT_FLOAT_EQ(f->get_f32("deepseek4." + k), v) << k;
  EXPECT_TRUE(f->get_bool("deepseek4.expert_weights_norm"));
  const std::vector<int64_t> ratios = f->get_int_array("deepseek4.attention.compress_ratios");
  ASSERT_GE(ratios.size(), 43u);
  for (int64_t il = 0; il < kLayers; ++il) EXPECT_EQ(ratios[il], ratio_of(il)) << il;
  for (double c : f->get_float_array("deepseek4.swiglu_clamp_exp")) EXPECT_EQ(c, 10.0);
  EXPECT_EQ(f->get_u32_or("deepseek4.expert_group_count", 0), 0u);
  EXPECT_FALSE(f->get_str_array("tokenizer.ggml.tokens").empty());
  EXPECT_TRUE(f->has("tokenizer.ggml.merges"));
}

TEST(PublishedLayout, SidecarDirectoryIsWhatDs4cBinds) {
  ScratchDir dir;
  const std::string side = dir.file("mtp.gguf");
  synth(side, "published-mtp");
  const auto f = ds4::GgufFile::open(side);
  // 3,807,602,400 bytes: the size of the published DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf.
  EXPECT_EQ(f->file_size(), 3807602400u);
  EXPECT_LT(disk_bytes(side), uint64_t{1} << 20);
  EXPECT_EQ(f->get_str("general.architecture"), "deepseek4_mtp_support");
  EXPECT_EQ(f->get_u32("deepseek4.expert_count"), 256u);
  EXPECT_EQ(f->get_u32("deepseek4.nextn_predict_layers"), 1u);
  const auto want = published_sidecar();
  ASSERT_EQ(f->tensors().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(f->tensors()[i].name, want[i].first) << "position " << i;
    expect_tensor(f->tensors()[i], want[i].second);
  }
}

struct ChildReport {
  bool ok = false;
  std::string error;
  double load_s = 0, forward_s = 0, mtp_s = 0;
  int64_t rss_anon_kb = 0, rss_file_kb = 0, hwm_kb = 0, cache_held = 0;
};

int64_t status_kb(const std::string& field) {
  std::ifstream s("/proc/self/status");
  for (std::string line; std::getline(s, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  return -1;
}

// The published trunk and sidecar load, pair, and run two tokens batched (the default gates: every
// fast variant, the dequantising GEMMs included) and one MTP draft, in a child whose address space
// is the two mappings plus kHeadroom. The weights are zero, so every logit must be exactly 0: a
// NaN or Inf would show an op that divides by a zero scale or norm.
// Under AddressSanitizer (scripts/test-asan) the address-space cap cannot apply (see kAsan), so
// the bound is left to the normal build, and the trunk is cut to its first 4 layers (every kind:
// dense, ratio 4 with the indexer, ratio 128, hash-routed and learned-routed, 256 experts, every
// Flash dimension): the same code under the sanitizers in 35 s instead of 5.5 minutes.
TEST(PublishedLayout, LoadsPairsAndRunsWithDefaultGatesInBoundedMemory) {
  ScratchDir dir;
  const std::string trunk = dir.file("trunk.gguf"), side = dir.file("mtp.gguf");
  const uint32_t layers = kAsan ? 4 : 0;  // 0: the preset's 43
  synth(trunk, "published", false, 0, false, layers);
  synth(side, "published-mtp", false, 0, false, layers);
  const uint64_t mapped = fs::file_size(trunk) + fs::file_size(side);
  // The cache budget (512 MiB by default) plus activations, states, vectors, thread stacks and
  // malloc arenas; a cache that grew with the model (1 TB) or any copy per weight would not fit.
  constexpr uint64_t kHeadroom = uint64_t{2} << 30;

  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    int code = 0;
    try {
      const rlimit lim{mapped + kHeadroom, mapped + kHeadroom};
      if (!kAsan && ::setrlimit(RLIMIT_AS, &lim) != 0) ds4::fail("setrlimit failed");
      auto c0 = std::chrono::steady_clock::now();
      const auto model = ds4::Model::load(trunk, side);
      auto c1 = std::chrono::steady_clock::now();
      if (!model->has_mtp()) ds4::fail("the sidecar did not pair");
      ds4::SessionOptions so;  // default gates: all fast
      so.n_threads = 2;
      so.max_ctx = 64;
      ds4::Session s(model, so);
      const int32_t toks[2] = {0, 1};
      const std::vector<float> logits = s.forward(toks);
      auto c2 = std::chrono::steady_clock::now();
      const std::vector<float> draft = s.mtp_draft(2);
      auto c3 = std::chrono::steady_clock::now();
      const size_t V = model->hparams().n_vocab;
      if (logits.size() != 2 * V || draft.size() != V) ds4::fail("wrong logits shape");
      for (float v : logits)
        if (v != 0.0f) ds4::fail("trunk logit " + std::to_string(v) + " from zero weights");
      for (float v : draft)
        if (v != 0.0f) ds4::fail("MTP logit " + std::to_string(v) + " from zero weights");
      auto sec = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
      out = "ok " + std::to_string(sec(c0, c1)) + " " + std::to_string(sec(c1, c2)) + " " +
            std::to_string(sec(c2, c3)) + " " + std::to_string(status_kb("RssAnon")) + " " +
            std::to_string(status_kb("RssFile")) + " " + std::to_string(status_kb("VmHWM"));
    } catch (const std::exception& e) {
      out = std::string("error ") + e.what();
      code = 1;
    }
    (void)!::write(fds[1], out.data(), out.size());
    ::close(fds[1]);
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  rusage ru{};
  ASSERT_EQ(::wait4(pid, &status, 0, &ru), pid);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  ASSERT_EQ(WEXITSTATUS(status), 0) << msg;
  ASSERT_EQ(msg.rfind("ok ", 0), 0u) << msg;
  double load_s = 0, fwd_s = 0, mtp_s = 0;
  long long anon = 0, file = 0, hwm = 0;
  ASSERT_EQ(std::sscanf(msg.c_str(), "ok %lf %lf %lf %lld %lld %lld", &load_s, &fwd_s, &mtp_s, &anon, &file, &hwm), 6);
  // RssAnon is what the engine allocated; RssFile is zero pages of the mapped holes it read
  // (page cache, reclaimable). The hard bound is the address-space limit above (not under ASan).
  EXPECT_LT(anon, 1536 * 1024) << "anonymous RSS after the run, KiB";
  std::printf("published layout (%s): load %.2f s, 2-token forward (default gates) %.2f s, MTP draft %.2f s, "
              "child wall %.1f s; RssAnon %lld MiB, RssFile %lld MiB, peak RSS (VmHWM) %lld MiB, "
              "ru_maxrss %ld MiB; address space %s mappings + %llu MiB\n",
              kAsan ? "4 layers, ASan" : "43 layers", load_s, fwd_s, mtp_s, wall, anon / 1024, file / 1024,
              hwm / 1024, ru.ru_maxrss / 1024, kAsan ? "not capped (ASan) at" : "capped at",
              static_cast<unsigned long long>(kHeadroom >> 20));
  ::testing::Test::RecordProperty("rss_anon_mib", static_cast<int>(anon / 1024));
  ::testing::Test::RecordProperty("peak_rss_mib", static_cast<int>(hwm / 1024));
}

// ---- the sidecar on the tiny model --------------------------------------------------------------

std::vector<int32_t> tokens(int n, uint32_t vocab) { return ds4::testing::pseudo_tokens(n, static_cast<int>(vocab)); }

// Trunk + sidecar is the single-file model: same trunk logits (bit for bit: same tensors), and an
// MTP draft equal up to the summation order of e_proj e + h_proj h against eh_proj [e; h]. The
// plain profile keeps that a rounding-level difference; under the ds4 profile the int8 activation
// quantisation turns a one-ulp input change into a whole quantisation step (about 1% of the draft
// logits here), so it is compared in the plain profile.
TEST(MtpSidecar, PairsToTheSingleFileModel) {
  ScratchDir dir;
  // The trunk is the shared tiny model (the bytes synth(..., "tiny") would write again).
  const std::string trunk = ds4::testing::tiny_model_path("ds4"), side = dir.file("mtp.gguf");
  synth(side, "tiny", /*sidecar=*/true);
  const auto single = ds4::Model::load(ds4::testing::tiny_model_path("ds4", true));
  const auto paired = ds4::Model::load(trunk, side);
  ASSERT_TRUE(paired->has_mtp());
  EXPECT_EQ(paired->mtp_path(), side);
  ds4::SessionOptions so;
  so.profile = ds4::Profile::Plain;
  so.gates = ds4::GateSet::all_exact();
  so.n_threads = 2;
  ds4::Session a(single, so), b(paired, so);
  const auto toks = tokens(12, single->hparams().n_vocab);
  const auto la = a.forward(toks), lb = b.forward(toks);
  ASSERT_EQ(la.size(), lb.size());
  EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)), 0);
  for (int32_t next : {3, 77, 500}) {
    const auto da = a.mtp_draft(next), db = b.mtp_draft(next);
    ASSERT_EQ(da.size(), db.size());
    float scale = 0, diff = 0;
    for (size_t i = 0; i < da.size(); ++i) {
      ASSERT_TRUE(std::isfinite(db[i]));
      scale = std::max(scale, std::fabs(da[i]));
      diff = std::max(diff, std::fabs(da[i] - db[i]));
    }
    EXPECT_LE(diff, 1e-4f * scale) << "next token " << next;
    EXPECT_EQ(ds4::argmax(da), ds4::argmax(db));
  }
}

// Copies a GGUF with one key dropped and one tensor dropped or replaced by zeros of another shape.
void rewrite(const std::string& src, const std::string& dst, const std::string& drop_key,
             const std::string& tensor, const std::vector<int64_t>& new_ne = {}) {
  const auto f = ds4::GgufFile::open(src);
  ds4::GgufWriter w;
  for (const auto& [k, v] : f->metadata())
    if (k != drop_key) w.set_value(k, v);
  for (const ds4::GgufTensor& t : f->tensors()) {
    if (t.name != tensor) w.add_tensor(t.name, t.ne, t.type, t.data, t.nbytes);
    else if (!new_ne.empty()) w.add_zero_tensor(t.name, new_ne, t.type);
  }
  w.write(dst);
}

TEST(MtpSidecar, MismatchesAreOneLineErrors) {
  ScratchDir dir;
  const std::string trunk = ds4::testing::tiny_model_path("ds4"), side = dir.file("mtp.gguf");
  synth(side, "tiny", true);
  auto load_err = [&](const std::string& mtp) { return error_of([&] { ds4::Model::load(trunk, mtp); }); };
  auto expect_names = [](const std::string& err, std::vector<std::string> parts) {
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;
    for (const auto& p : parts) EXPECT_NE(err.find(p), std::string::npos) << "'" << p << "' in: " << err;
  };
  // A trunk given as the sidecar.
  expect_names(load_err(trunk), {trunk, "general.architecture", "'deepseek4'", "deepseek4_mtp_support"});
  // The sidecar of a model with another vocabulary.
  synth(dir.file("v600.gguf"), "tiny", true, 600);
  expect_names(load_err(dir.file("v600.gguf")), {"v600.gguf", "deepseek4.vocab_size", "600", "512"});
  // n_embd from the head's shape when the sidecar has no embedding_length key (the published one).
  rewrite(side, dir.file("embd.gguf"), "deepseek4.embedding_length", "mtp.0.e_proj.weight", {128, 256});
  expect_names(load_err(dir.file("embd.gguf")), {"embd.gguf", "mtp.0.e_proj.weight", "n_embd 128", "256"});
  // A missing tensor, and a tensor of the wrong shape.
  rewrite(side, dir.file("no-h.gguf"), "", "mtp.0.h_proj.weight");
  expect_names(load_err(dir.file("no-h.gguf")), {"no-h.gguf", "tensor 'mtp.0.h_proj.weight' missing"});
  rewrite(side, dir.file("sinks.gguf"), "", "mtp.0.attn_sinks.weight", {4});
  expect_names(load_err(dir.file("sinks.gguf")), {"sinks.gguf", "mtp.0.attn_sinks.weight", "[4]", "[8]"});
  // A trunk that holds its own MTP block takes no sidecar.
  expect_names(error_of([&] { ds4::Model::load(ds4::testing::tiny_model_path("ds4", true), side); }),
               {"already holds its MTP block"});
  // Missing file.
  expect_names(load_err(dir.file("nope.gguf")), {"nope.gguf", "cannot open"});
}

// A trunk that declares nextn_predict_layers = 1 but ships no MTP tensors loads without MTP; the
// draft names what is missing.
TEST(MtpSidecar, TrunkWithoutItsDeclaredBlockRunsWithoutMtp) {
  ScratchDir dir;
  const std::string src = ds4::testing::tiny_model_path("ds4", true), dst = dir.file("no-block.gguf");
  const auto f = ds4::GgufFile::open(src);
  ds4::GgufWriter w;
  for (const auto& [k, v] : f->metadata()) w.set_value(k, v);
  for (const ds4::GgufTensor& t : f->tensors())
    if (t.name.rfind("blk.4.", 0) != 0) w.add_tensor(t.name, t.ne, t.type, t.data, t.nbytes);
  w.write(dst);
  const auto m = ds4::Model::load(dst);
  EXPECT_FALSE(m->has_mtp());
  ds4::Session s(m, {});
  s.decode(1);
  EXPECT_NE(error_of([&] { s.mtp_draft(2); }).find("no MTP block"), std::string::npos);
}

// ---- the dequantised-weight cache ----------------------------------------------------------------

// The budget only decides what is kept: a forward that evicts and rebuilds copies all the time
// gives the bits of one that keeps every copy.
TEST(DequantCache, BudgetDoesNotChangeResults) {
  const auto model = ds4::Model::load(ds4::testing::tiny_model_path("ds4"));
  const auto toks = tokens(40, model->hparams().n_vocab);
  ds4::SessionOptions so;  // default gates: the GEMM variants read the cache
  so.n_threads = 2;
  so.dequant_cache_bytes = int64_t{1} << 30;
  ds4::Session roomy(model, so);
  so.dequant_cache_bytes = int64_t{1} << 20;  // above the largest tiny copy (512 KiB), below their sum
  ds4::Session tight(model, so);
  std::vector<float> a, b;
  for (int chunk = 0; chunk < 4; ++chunk) {
    std::span<const int32_t> part(toks.data() + chunk * 10, 10);
    const auto la = roomy.forward(part), lb = tight.forward(part);
    a.insert(a.end(), la.begin(), la.end());
    b.insert(b.end(), lb.begin(), lb.end());
  }
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(DequantCache, CopyAboveTheBudgetIsAnErrorNamingTheVariable) {
  const auto model = ds4::Model::load(ds4::testing::tiny_model_path("ds4"));
  ds4::SessionOptions so;
  so.dequant_cache_bytes = 64 << 10;
  ds4::Session s(model, so);
  const auto toks = tokens(4, model->hparams().n_vocab);
  const std::string err = error_of([&] { s.forward(toks); });
  EXPECT_NE(err.find("DS4_CPU_DEQUANT_CACHE_MB"), std::string::npos) << err;
  EXPECT_NE(err.find("budget of 64 KiB"), std::string::npos) << err;
  EXPECT_EQ(err.find('\n'), std::string::npos);
}

}  // namespace
