// Tests for the HF -> GGUF converter (ds4/convert.h): the HF oracle fixture
// (tests/fixtures/hf-tiny) converted to F32 and checked bit for bit against its safetensors, a
// quantised conversion, the FP8 / FP4 checkpoint storage decoded from hand-made safetensors files,
// tokenizer.json, and the error cases (missing, misshapen and unknown tensors, bad config).
#include "ds4/convert.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "ds4/error.h"
#include "ds4/gguf.h"
#include "ds4/json.h"
#include "ds4/quant.h"
#include "ds4/safetensors.h"
#include "../support/scratch.h"
#include "../support/errors.h"

namespace {

using ds4::testing::error_of;
using ds4::testing::read_text;

namespace fs = std::filesystem;
using ds4::ConvertOptions;

const fs::path kFixture = fs::path(DS4_SOURCE_DIR) / "tests/fixtures/hf-tiny";

fs::path temp_dir() { return ds4::testing::program_scratch_dir("convert"); }

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

// ---- a minimal safetensors writer for hand-made checkpoints ----

struct Blob {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
using Blobs = std::map<std::string, Blob>;

Blobs read_fixture() {
  Blobs out;
  auto st = ds4::SafetensorsFile::open((kFixture / "model.safetensors").string());
  for (const auto& t : st->tensors())
    out[t.name] = {t.dtype, t.shape, std::string(reinterpret_cast<const char*>(t.data), t.nbytes)};
  return out;
}

void write_safetensors(const fs::path& p, const Blobs& blobs) {
  std::string header = "{", data;
  for (const auto& [name, b] : blobs) {
    std::string shape = "[";
    for (size_t i = 0; i < b.shape.size(); ++i)
      shape += (i ? "," : "") + std::to_string(b.shape[i]);
    shape += "]";
    header += (header.size() > 1 ? "," : "") + std::string("\"") + name + "\":{\"dtype\":\"" +
              b.dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
              std::to_string(data.size()) + "," + std::to_string(data.size() + b.bytes.size()) +
              "]}";
    data += b.bytes;
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  const uint64_t n = header.size();
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

// A checkpoint directory with config.json from the fixture (optionally edited) and `blobs`.
fs::path make_checkpoint(const std::string& name, const Blobs& blobs,
                         const std::function<void(std::string&)>& edit_config = nullptr) {
  const fs::path dir = temp_dir() / name;
  fs::create_directories(dir);
  std::string cfg = read_text(kFixture / "config.json");
  if (edit_config) edit_config(cfg);
  write_text(dir / "config.json", cfg);
  write_safetensors(dir / "model.safetensors", blobs);
  return dir;
}

ds4::ConvertResult convert(const fs::path& input, const std::string& mix, const fs::path& out) {
  ConvertOptions o;
  o.input = input.string();
  o.quant_mix = mix;
  o.output = out.string();
  return ds4::convert_hf_to_gguf(o);
}

std::string convert_error(const fs::path& dir) {
  return error_of([&] { convert(dir, "f32", dir / "out.gguf"); });
}

void replace(std::string& s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  s.replace(at, from.size(), to);
}

bool same_bytes(const ds4::GgufTensor& t, const void* data, size_t n) {
  return t.nbytes == n && std::memcmp(t.data, data, n) == 0;
}

// ---- the fixture, F32 ----

class ConvertFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    out_ = temp_dir() / "hf-tiny-f32.gguf";
    ConvertOptions o;
    o.input = (kFixture / "model.safetensors").string();
    o.output = out_.string();  // quant mix defaults to f32
    result_ = new ds4::ConvertResult(ds4::convert_hf_to_gguf(o));
    gguf_ = ds4::GgufFile::open(out_.string());
    st_ = ds4::SafetensorsFile::open(o.input);
  }
  static void TearDownTestSuite() {
    delete result_;
    gguf_.reset();
    st_.reset();
  }
  static void expect_copy(const std::string& gguf_name, const std::string& hf_name,
                          std::vector<int64_t> ne) {
    const ds4::GgufTensor& t = gguf_->tensor(gguf_name);
    const ds4::SafeTensor& s = st_->get(hf_name);
    EXPECT_EQ(t.type, ds4::QType::F32) << gguf_name;
    EXPECT_EQ(t.ne, ne) << gguf_name;
    EXPECT_TRUE(same_bytes(t, s.data, s.nbytes)) << gguf_name << " vs " << hf_name;
  }
  static inline fs::path out_;
  static inline ds4::ConvertResult* result_ = nullptr;
  static inline std::shared_ptr<ds4::GgufFile> gguf_;
  static inline std::shared_ptr<ds4::SafetensorsFile> st_;
};

TEST_F(ConvertFixture, HParams) {
  const ds4::HParams hp = ds4::HParams::from_gguf(*gguf_);
  EXPECT_EQ(hp.n_layer, 4u);
  EXPECT_EQ(hp.n_vocab, 512u);
  EXPECT_EQ(hp.n_embd, 256u);
  EXPECT_EQ(hp.n_head, 8u);
  EXPECT_EQ(hp.head_dim, 128u);
  EXPECT_EQ(hp.n_rot, 64u);
  EXPECT_EQ(hp.q_lora, 128u);
  EXPECT_EQ(hp.o_lora, 64u);
  EXPECT_EQ(hp.o_groups, 4u);
  EXPECT_EQ(hp.window, 128u);
  EXPECT_EQ(hp.ratios, (std::vector<uint32_t>{0, 0, 4, 128}));
  EXPECT_EQ(hp.n_idx_head, 4u);
  EXPECT_EQ(hp.idx_head_dim, 128u);
  EXPECT_EQ(hp.idx_top_k, 16u);
  EXPECT_EQ(hp.n_expert, 8u);
  EXPECT_EQ(hp.n_expert_used, 2u);
  EXPECT_EQ(hp.n_expert_shared, 1u);
  EXPECT_EQ(hp.n_ff_exp, 64u);
  EXPECT_EQ(hp.n_hash_layer, 3u);
  EXPECT_EQ(hp.expert_scale, 1.5f);
  EXPECT_TRUE(hp.expert_norm);
  EXPECT_EQ(hp.clamp_exp, std::vector<float>(4, 10.f));
  EXPECT_EQ(hp.n_hc, 4u);
  EXPECT_EQ(hp.sinkhorn_iters, 20u);
  EXPECT_FLOAT_EQ(hp.hc_eps, 1e-6f);
  EXPECT_FLOAT_EQ(hp.eps, 1e-6f);
  EXPECT_EQ(hp.rope_base, 10000.f);
  EXPECT_EQ(hp.compress_rope_base, 160000.f);
  EXPECT_EQ(hp.yarn_factor, 16.f);
  EXPECT_EQ(hp.yarn_orig_ctx, 65536u);
  EXPECT_EQ(hp.yarn_beta_fast, 32.f);
  EXPECT_EQ(hp.yarn_beta_slow, 1.f);
  EXPECT_EQ(hp.n_ctx_train, 1048576u);
  EXPECT_EQ(hp.n_mtp, 0u);
  EXPECT_EQ(result_->n_tensors, ds4::expected_tensors(hp).size());
  EXPECT_EQ(result_->n_source_tensors, st_->tensors().size());  // every source used
  EXPECT_EQ(gguf_->tensors().size(), result_->n_tensors);
  ASSERT_EQ(result_->notes.size(), 1u);
  EXPECT_NE(result_->notes[0].find("synthetic 512-token vocabulary"), std::string::npos);
  EXPECT_EQ(gguf_->get_str_array("tokenizer.ggml.tokens").size(), 512u);
  EXPECT_EQ(gguf_->get_str("general.name"), "hf-tiny-f32");
}

TEST_F(ConvertFixture, EveryExpectedTensor) {
  const ds4::HParams hp = ds4::HParams::from_gguf(*gguf_);
  for (const auto& spec : ds4::expected_tensors(hp)) {
    const ds4::GgufTensor* t = gguf_->find_tensor(spec.name);
    ASSERT_NE(t, nullptr) << spec.name;
    EXPECT_EQ(t->ne, spec.alt_ne.empty() ? spec.ne : spec.alt_ne) << spec.name;
    EXPECT_EQ(t->type, spec.role == ds4::TensorRole::HashTable ? ds4::QType::I32 : ds4::QType::F32);
  }
}

TEST_F(ConvertFixture, TensorsBitExact) {
  expect_copy("token_embd.weight", "embed.weight", {256, 512});
  expect_copy("output.weight", "head.weight", {256, 512});
  expect_copy("output_norm.weight", "norm.weight", {256});
  expect_copy("output_hc_fn.weight", "hc_head_fn", {1024, 4});
  expect_copy("output_hc_scale.weight", "hc_head_scale", {1});
  expect_copy("blk.0.hc_attn_fn.weight", "layers.0.hc_attn_fn", {1024, 24});
  expect_copy("blk.1.hc_ffn_base.weight", "layers.1.hc_ffn_base", {24});
  expect_copy("blk.0.attn_sinks.weight", "layers.0.attn.attn_sink", {8});
  expect_copy("blk.1.attn_q_b.weight", "layers.1.attn.wq_b.weight", {128, 1024});
  expect_copy("blk.1.attn_kv_a_norm.weight", "layers.1.attn.kv_norm.weight", {128});
  // Grouped output LoRA: 3-D [heads_per_group·head_dim, o_lora, groups], llama.cpp's layout.
  expect_copy("blk.2.attn_output_a.weight", "layers.2.attn.wo_a.weight", {256, 64, 4});
  expect_copy("blk.2.attn_output_b.weight", "layers.2.attn.wo_b.weight", {256, 256});
  // Compressors, APE ([ratio, W] in HF -> [W, ratio]) and the indexer.
  expect_copy("blk.2.attn_compressor_ape.weight", "layers.2.attn.compressor.ape", {256, 4});
  expect_copy("blk.3.attn_compressor_ape.weight", "layers.3.attn.compressor.ape", {128, 128});
  expect_copy("blk.3.attn_compressor_kv.weight", "layers.3.attn.compressor.wkv.weight", {256, 128});
  expect_copy("blk.2.indexer_compressor_ape.weight", "layers.2.attn.indexer.compressor.ape",
              {256, 4});
  expect_copy("blk.2.indexer.attn_q_b.weight", "layers.2.attn.indexer.wq_b.weight", {128, 512});
  expect_copy("blk.2.indexer.proj.weight", "layers.2.attn.indexer.weights_proj.weight", {256, 4});
  expect_copy("blk.2.indexer_compressor_norm.weight",
              "layers.2.attn.indexer.compressor.norm.weight", {128});
  // Router, bias (learned layer only), shared expert.
  expect_copy("blk.3.ffn_gate_inp.weight", "layers.3.ffn.gate.weight", {256, 8});
  expect_copy("blk.3.exp_probs_b.bias", "layers.3.ffn.gate.bias", {8});
  EXPECT_EQ(gguf_->find_tensor("blk.2.exp_probs_b.bias"), nullptr);
  expect_copy("blk.0.ffn_down_shexp.weight", "layers.0.ffn.shared_experts.w2.weight", {64, 256});
}

TEST_F(ConvertFixture, StackedExperts) {
  struct Part {
    const char* gguf;
    const char* w;
    std::vector<int64_t> ne;
  };
  for (const Part& p : {Part{"blk.0.ffn_gate_exps.weight", "w1", {256, 64, 8}},
                        Part{"blk.2.ffn_up_exps.weight", "w3", {256, 64, 8}},
                        Part{"blk.3.ffn_down_exps.weight", "w2", {64, 256, 8}}}) {
    const ds4::GgufTensor& t = gguf_->tensor(p.gguf);
    ASSERT_EQ(t.ne, p.ne) << p.gguf;
    const int layer = p.gguf[4] - '0';
    const size_t per_expert = t.nbytes / 8;
    for (int e = 0; e < 8; ++e) {
      const ds4::SafeTensor& s = st_->get("layers." + std::to_string(layer) + ".ffn.experts." +
                                          std::to_string(e) + "." + p.w + ".weight");
      ASSERT_EQ(s.nbytes, per_expert);
      EXPECT_EQ(std::memcmp(t.data + e * per_expert, s.data, per_expert), 0)
          << p.gguf << " expert " << e;
    }
  }
}

TEST_F(ConvertFixture, HashTable) {
  for (int layer = 0; layer < 3; ++layer) {
    const ds4::GgufTensor& t =
        gguf_->tensor("blk." + std::to_string(layer) + ".ffn_gate_tid2eid.weight");
    EXPECT_EQ(t.type, ds4::QType::I32);
    EXPECT_EQ(t.ne, (std::vector<int64_t>{2, 512}));
    const std::vector<int64_t> ids =
        st_->get("layers." + std::to_string(layer) + ".ffn.gate.tid2eid").to_i64();
    ASSERT_EQ(ids.size(), 1024u);
    const int32_t* got = reinterpret_cast<const int32_t*>(t.data);
    for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(got[i], ids[i]) << "entry " << i;
  }
  EXPECT_EQ(gguf_->find_tensor("blk.3.ffn_gate_tid2eid.weight"), nullptr);
}

// ---- quantised output ----

TEST(Convert, QuantMixes) {
  const fs::path in = kFixture / "model.safetensors";
  // The fixture's expert width (64) cannot hold 256-element blocks.
  const std::string msg = error_of([&] { convert(in, "ds4", temp_dir() / "ds4.gguf"); });
  EXPECT_NE(msg.find("tensor 'blk.0.ffn_down_exps.weight' has ne0 = 64"), std::string::npos) << msg;
  EXPECT_NE(msg.find("q2_K"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(temp_dir() / "ds4.gguf"));

  const fs::path out = temp_dir() / "q8.gguf";
  convert(in, "q8_0", out);
  auto g = ds4::GgufFile::open(out.string());
  EXPECT_EQ(g->tensor("blk.0.attn_q_a.weight").type, ds4::QType::Q8_0);
  EXPECT_EQ(g->tensor("blk.0.ffn_down_exps.weight").type, ds4::QType::Q8_0);
  EXPECT_EQ(g->tensor("blk.0.attn_norm.weight").type, ds4::QType::F32);
  EXPECT_EQ(g->tensor("blk.0.ffn_gate_tid2eid.weight").type, ds4::QType::I32);
  // Q8_0 of the source, row by row: dequantised values within half a step of the original.
  auto st = ds4::SafetensorsFile::open(in.string());
  const std::vector<float> src = st->get("layers.1.attn.wq_a.weight").to_f32();
  const ds4::GgufTensor& t = g->tensor("blk.1.attn_q_a.weight");
  std::vector<float> deq(src.size());
  ds4::dequantize_row(t.type, t.data, deq.data(), static_cast<int64_t>(deq.size()));
  float amax = 0;
  for (float v : src) amax = std::max(amax, std::fabs(v));
  for (size_t i = 0; i < src.size(); ++i) ASSERT_NEAR(deq[i], src[i], amax / 127) << i;
}

// ---- FP8 / FP4 checkpoint storage ----

TEST(Convert, ElementDecoders) {
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x40), 2.0f);
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x3c), 1.5f);
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0xb8), -1.0f);
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(ds4::fp8_e4m3_to_f32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(ds4::fp8_e4m3_to_f32(0x80)));
  EXPECT_TRUE(std::isnan(ds4::fp8_e4m3_to_f32(0x7f)));
  EXPECT_TRUE(std::isnan(ds4::fp8_e4m3_to_f32(0xff)));
  // Every finite code round-trips through round_e4m3 (the engine's own E4M3 rounding).
  for (int b = 0; b < 256; ++b) {
    const float v = ds4::fp8_e4m3_to_f32(static_cast<uint8_t>(b));
    if (!std::isnan(v)) EXPECT_EQ(ds4::round_e4m3(v), v) << b;
  }
  EXPECT_EQ(ds4::e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(ds4::e8m0_to_f32(130), 8.0f);
  EXPECT_EQ(ds4::e8m0_to_f32(120), 1.0f / 128);
  EXPECT_EQ(ds4::e8m0_to_f32(0), std::ldexp(1.0f, -127));
  EXPECT_TRUE(std::isnan(ds4::e8m0_to_f32(255)));
  const float fp4[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
  for (int n = 0; n < 16; ++n)
    EXPECT_EQ(ds4::fp4_e2m1_to_f32(static_cast<uint8_t>(n)), fp4[n]) << n;
}

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

const float* f32_data(const ds4::GgufTensor& t) { return reinterpret_cast<const float*>(t.data); }

TEST(Convert, Fp8AndFp4Storage) {
  Blobs blobs = read_fixture();
  // FP8 wq_b [1024, 128] with E8M0 block scales [8, 1].
  {
    Blob w{"F8_E4M3", {1024, 128}, std::string(1024 * 128, '\0')};
    for (int i = 0; i < 1024 * 128; ++i) {
      uint8_t b = static_cast<uint8_t>((i * 37 + i / 128) & 0xff);
      if ((b & 0x7f) == 0x7f) b = 0x3f;  // no NaN codes
      w.bytes[i] = static_cast<char>(b);
    }
    Blob s{"F8_E8M0", {8, 1}, std::string(8, '\0')};
    for (int ob = 0; ob < 8; ++ob) s.bytes[ob] = static_cast<char>(120 + ob);
    blobs["layers.0.attn.wq_b.weight"] = w;
    blobs["layers.0.attn.wq_b.scale"] = s;
  }
  // FP8 router [8, 256] with F32 scales [1, 2]: a partial 128-row block.
  blobs["layers.1.ffn.gate.weight"] = {"F8_E4M3", {8, 256}, std::string(8 * 256, '\x40')};  // 2.0
  blobs["layers.1.ffn.gate.scale"] = {"F32", {1, 2}, f32_bytes({0.25f, 3.0f})};
  // FP4 experts of layer 3, w2 [256, 64] -> I8 [256, 32] with E8M0 scales [256, 2].
  for (int e = 0; e < 8; ++e) {
    Blob w{"I8", {256, 32}, std::string(256 * 32, '\0')};
    for (int i = 0; i < 256 * 32; ++i) w.bytes[i] = static_cast<char>((i * 7 + e * 13) & 0xff);
    Blob s{"F8_E8M0", {256, 2}, std::string(512, '\0')};
    for (int i = 0; i < 512; ++i) s.bytes[i] = static_cast<char>(124 + (i + e) % 6);
    const std::string p = "layers.3.ffn.experts." + std::to_string(e) + ".w2";
    blobs[p + ".weight"] = w;
    blobs[p + ".scale"] = s;
  }
  const fs::path dir = make_checkpoint("fp8fp4", blobs);
  const fs::path out = dir / "out.gguf";
  convert(dir, "f32", out);
  auto g = ds4::GgufFile::open(out.string());

  const ds4::GgufTensor& qb = g->tensor("blk.0.attn_q_b.weight");
  ASSERT_EQ(qb.ne, (std::vector<int64_t>{128, 1024}));
  const std::string& wb = blobs["layers.0.attn.wq_b.weight"].bytes;
  for (int r = 0; r < 1024; ++r) {
    for (int c = 0; c < 128; ++c) {
      const float want = ds4::fp8_e4m3_to_f32(static_cast<uint8_t>(wb[r * 128 + c])) *
                         std::ldexp(1.0f, 120 + r / 128 - 127);
      ASSERT_EQ(f32_data(qb)[r * 128 + c], want) << r << "," << c;
    }
  }
  const ds4::GgufTensor& gate = g->tensor("blk.1.ffn_gate_inp.weight");
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 256; ++c) ASSERT_EQ(f32_data(gate)[r * 256 + c], c < 128 ? 0.5f : 6.0f);

  const ds4::GgufTensor& down = g->tensor("blk.3.ffn_down_exps.weight");
  ASSERT_EQ(down.ne, (std::vector<int64_t>{64, 256, 8}));
  for (int e = 0; e < 8; ++e) {
    const std::string p = "layers.3.ffn.experts." + std::to_string(e) + ".w2";
    const std::string& w = blobs[p + ".weight"].bytes;
    const std::string& s = blobs[p + ".scale"].bytes;
    for (int r = 0; r < 256; ++r) {
      for (int c = 0; c < 64; ++c) {
        const uint8_t byte = static_cast<uint8_t>(w[r * 32 + c / 2]);
        const uint8_t nib = c % 2 ? byte >> 4 : byte & 0x0f;  // low nibble = even element
        const float want = ds4::fp4_e2m1_to_f32(nib) *
                           std::ldexp(1.0f, static_cast<uint8_t>(s[r * 2 + c / 32]) - 127);
        ASSERT_EQ(f32_data(down)[(e * 256 + r) * 64 + c], want) << e << "," << r << "," << c;
      }
    }
  }

  // A missing scale sibling, and a scale of the wrong shape.
  Blobs no_scale = blobs;
  no_scale.erase("layers.0.attn.wq_b.scale");
  std::string msg = convert_error(make_checkpoint("fp8-noscale", no_scale));
  EXPECT_NE(msg.find("'layers.0.attn.wq_b.weight' is FP8 but has no '.scale' sibling"),
            std::string::npos)
      << msg;
  Blobs bad_scale = blobs;
  bad_scale["layers.0.attn.wq_b.scale"].shape = {1, 8};
  msg = convert_error(make_checkpoint("fp8-badscale", bad_scale));
  EXPECT_NE(msg.find("scale 'layers.0.attn.wq_b.scale' has shape [1, 8], expected [8, 1]"),
            std::string::npos)
      << msg;
  Blobs nan = blobs;
  nan["layers.1.ffn.gate.weight"].bytes[5] = '\x7f';
  msg = convert_error(make_checkpoint("fp8-nan", nan));
  EXPECT_NE(msg.find("'layers.1.ffn.gate.weight' decodes to NaN"), std::string::npos) << msg;
}

// ---- tokenizer.json ----

TEST(Convert, TokenizerJson) {
  // Bytes-level tokens, one merge, two specials; ids past the vocabulary get placeholders.
  const std::string tok = R"({"model":{"type":"BPE","vocab":{"a":2,"b":3,"ab":4},"merges":["a b"]},
    "added_tokens":[{"id":0,"content":"<bos>","special":true},
                    {"id":1,"content":"<eos>","special":true},
                    {"id":5,"content":"<tool>","special":false}]})";
  const fs::path dir = make_checkpoint("tok", read_fixture());
  write_text(dir / "tokenizer.json", tok);
  const ds4::SyntheticVocab v =
      ds4::vocab_from_hf_tokenizer((dir / "tokenizer.json").string(), 512);
  ASSERT_EQ(v.tokens.size(), 512u);
  EXPECT_EQ(v.tokens[0], "<bos>");
  EXPECT_EQ(v.tokens[4], "ab");
  EXPECT_EQ(v.tokens[6], "[PAD6]");
  EXPECT_EQ(v.token_types[0], 3);
  EXPECT_EQ(v.token_types[2], 1);
  EXPECT_EQ(v.token_types[5], 4);
  EXPECT_EQ(v.token_types[6], 5);
  EXPECT_EQ(v.merges, std::vector<std::string>{"a b"});

  const auto res = convert(dir, "f32", dir / "out.gguf");
  ASSERT_FALSE(res.notes.empty());
  EXPECT_NE(res.notes[0].find("tokenizer.json"), std::string::npos);
  auto g = ds4::GgufFile::open((dir / "out.gguf").string());
  EXPECT_EQ(g->get_str_array("tokenizer.ggml.tokens")[4], "ab");
  EXPECT_EQ(g->get_str_array("tokenizer.ggml.merges"), std::vector<std::string>{"a b"});
  EXPECT_EQ(g->get_u32("tokenizer.ggml.bos_token_id"), 0u);
  EXPECT_EQ(g->get_u32("tokenizer.ggml.eos_token_id"), 1u);

  write_text(dir / "tokenizer.json", R"({"model":{"type":"BPE","vocab":{"a":600},"merges":[]}})");
  const std::string msg = convert_error(dir);
  EXPECT_NE(msg.find("token 'a' has id 600, outside vocab_size 512"), std::string::npos) << msg;
}

// ---- errors ----

TEST(Convert, MissingTensor) {
  Blobs b = read_fixture();
  b.erase("layers.1.attn.wkv.weight");
  const std::string msg = convert_error(make_checkpoint("missing", b));
  EXPECT_NE(msg.find("blk.1.attn_kv.weight: source tensor 'layers.1.attn.wkv.weight' not found"),
            std::string::npos)
      << msg;
  Blobs e = read_fixture();
  e.erase("layers.2.ffn.experts.5.w3.weight");
  EXPECT_NE(convert_error(make_checkpoint("missing-expert", e))
                .find("'layers.2.ffn.experts.5.w3.weight' not found"),
            std::string::npos);
}

TEST(Convert, WrongShape) {
  Blobs b = read_fixture();
  b["layers.2.attn.compressor.ape"].shape = {8, 128};  // same bytes, wrong shape
  const std::string msg = convert_error(make_checkpoint("shape", b));
  EXPECT_NE(
      msg.find("tensor 'layers.2.attn.compressor.ape' has shape [8, 128], but "
               "'blk.2.attn_compressor_ape.weight' (GGUF ne [256, 4]) needs HF shape [4, 256]"),
      std::string::npos)
      << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  Blobs x = read_fixture();
  x["layers.0.ffn.experts.3.w2.weight"].shape = {64, 256};
  EXPECT_NE(convert_error(make_checkpoint("shape-expert", x))
                .find("'layers.0.ffn.experts.3.w2.weight' has shape [64, 256]"),
            std::string::npos);
}

TEST(Convert, UnknownAndIgnoredTensors) {
  Blobs b = read_fixture();
  b["layers.0.attn.bogus.weight"] = {"F32", {2}, f32_bytes({1, 2})};
  const std::string msg = convert_error(make_checkpoint("unknown", b));
  EXPECT_NE(msg.find("unknown tensor 'layers.0.attn.bogus.weight'"), std::string::npos) << msg;

  // mtp.* and the router bias of a hash layer are dropped with one note each.
  Blobs m = read_fixture();
  m["mtp.0.enorm.weight"] = {"F32", {256}, f32_bytes(std::vector<float>(256, 1))};
  m["mtp.0.attn.wkv.weight"] = {"F32", {2}, f32_bytes({1, 2})};
  m["layers.1.ffn.gate.bias"] = {"F32", {8}, f32_bytes(std::vector<float>(8, 0))};
  const fs::path dir = make_checkpoint("mtp", m);
  const auto res = convert(dir, "f32", dir / "out.gguf");
  ASSERT_EQ(res.notes.size(), 3u);
  EXPECT_NE(res.notes[0].find("dropped 2 mtp.* tensors"), std::string::npos) << res.notes[0];
  EXPECT_NE(res.notes[1].find("router bias"), std::string::npos) << res.notes[1];
  EXPECT_EQ(ds4::GgufFile::open((dir / "out.gguf").string())->find_tensor("blk.1.exp_probs_b.bias"),
            nullptr);

  Blobs t = read_fixture();
  std::string& ids = t["layers.1.ffn.gate.tid2eid"].bytes;
  const int64_t bad = 8;
  std::memcpy(ids.data() + 8 * 7, &bad, 8);  // token 3, slot 1
  EXPECT_NE(
      convert_error(make_checkpoint("tid", t)).find("has expert id 8 at token 3, outside [0, 8)"),
      std::string::npos);
}

TEST(Convert, BadConfig) {
  const Blobs b = read_fixture();
  std::string msg = convert_error(make_checkpoint("cfg-missing", b, [](std::string& c) {
    replace(c, "\"hidden_size\"", "\"hidden_size_x\"");
  }));
  EXPECT_NE(msg.find("config.json: key 'hidden_size' missing"), std::string::npos) << msg;
  msg = convert_error(make_checkpoint("cfg-ratio", b, [](std::string& c) {
    replace(c, "\"compress_ratios\": [\n  0,\n  0,\n  4,",
            "\"compress_ratios\": [\n  0,\n  0,\n  5,");
  }));
  EXPECT_NE(msg.find("compress_ratios entry 2 is 5, expected 0, 4 or 128"), std::string::npos)
      << msg;
  msg = convert_error(make_checkpoint("cfg-type", b, [](std::string& c) {
    replace(c, "\"num_attention_heads\": 8", "\"num_attention_heads\": \"8\"");
  }));
  EXPECT_NE(msg.find("key 'num_attention_heads' is \"8\", expected a non-negative integer"),
            std::string::npos)
      << msg;
  msg = convert_error(make_checkpoint(
      "cfg-groups", b, [](std::string& c) { replace(c, "\"o_groups\": 4", "\"o_groups\": 3"); }));
  EXPECT_NE(msg.find("output_group_count"), std::string::npos) << msg;
  msg = convert_error(make_checkpoint("cfg-json", b, [](std::string& c) { c += "}"; }));
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
  msg = convert_error(make_checkpoint(
      "cfg-score", b, [](std::string& c) { replace(c, "\"sqrtsoftplus\"", "\"sigmoid\""); }));
  EXPECT_NE(msg.find("scoring_func"), std::string::npos) << msg;
  // A config that does not match the weights fails on the first tensor.
  msg = convert_error(make_checkpoint("cfg-vocab", b, [](std::string& c) {
    replace(c, "\"vocab_size\": 512", "\"vocab_size\": 640");
  }));
  EXPECT_NE(msg.find("'embed.weight' has shape [512, 256]"), std::string::npos) << msg;
  // Nothing to convert.
  EXPECT_NE(convert_error(temp_dir() / "nope").find("no such file or directory"),
            std::string::npos);
}

TEST(Convert, ConfigFallbacks) {
  // transformers-style keys only: layer_types, mlp_layer_types, partial_rotary_factor,
  // rope_parameters.
  ds4::Json cfg = ds4::Json::parse(read_text(kFixture / "config.json"), "config.json");
  auto drop = [&](const std::string& key) {
    auto& m = cfg.members;
    m.erase(std::remove_if(m.begin(), m.end(), [&](const auto& kv) { return kv.first == key; }),
            m.end());
  };
  for (const char* k : {"compress_ratios", "num_hash_layers", "qk_rope_head_dim", "rope_scaling"})
    drop(k);
  const ds4::HParams hp = ds4::hparams_from_hf_config(cfg, "config.json");
  EXPECT_EQ(hp.ratios, (std::vector<uint32_t>{0, 0, 4, 128}));
  EXPECT_EQ(hp.n_hash_layer, 3u);
  EXPECT_EQ(hp.n_rot, 64u);
  EXPECT_EQ(hp.yarn_factor, 16.f);
  EXPECT_EQ(hp.yarn_orig_ctx, 65536u);
  drop("layer_types");
  EXPECT_NE(error_of([&] {
              ds4::hparams_from_hf_config(cfg, "c.json");
            }).find("c.json: key 'compress_ratios' missing"),
            std::string::npos);
}

}  // namespace
