// Writes the seed corpus of the fuzz targets: small valid files made with our own writers plus
// hand-made edge cases. The committed tests/fuzz/corpus/<target>/ files came from
//   build-fuzz/tests/fuzz/make_fuzz_corpus tests/fuzz/corpus
// (scripts/fuzz --regen-corpus); rerun it when a writer's format changes. scripts/fuzz also runs
//   make_fuzz_corpus build-fuzz/seeds-scratch build-fuzz/seeds
// before fuzzing, for the seeds too large to commit (a whole tiny model).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ds4/dump.h"
#include "ds4/error.h"
#include "ds4/gates.h"
#include "ds4/gguf.h"
#include "ds4/synth.h"

namespace fs = std::filesystem;

namespace {

std::string g_root;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = fs::path(g_root) / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

// ---- GGUF ----

void gguf_seeds(const std::string& tmp) {
  {
    ds4::GgufWriter w;
    w.set_str("general.architecture", "fuzz");
    w.set_u32("general.alignment", 32);
    w.set_i32("i32", -7);
    w.set_u64("u64", ~uint64_t(0));
    w.set_f32("f32", 1.5f);
    w.set_bool("bool", true);
    w.set_arr_str("strs", {"a", "", "byte\x01"});
    w.set_arr_i32("i32s", {-1, 0, 1});
    w.set_arr_u32("u32s", {1, 2});
    w.set_arr_f32("f32s", {0.5f, -2.0f});
    for (auto [type, name] : {std::pair{ds4::GgufType::UINT8, "u8"}, {ds4::GgufType::INT8, "i8"},
                              {ds4::GgufType::UINT16, "u16"}, {ds4::GgufType::INT16, "i16"},
                              {ds4::GgufType::INT64, "i64"}, {ds4::GgufType::FLOAT64, "f64"}}) {
      ds4::GgufValue v;
      v.type = type;
      v.u = 3;
      v.i = -3;
      v.f = 0.25;
      w.set_value(name, v);
    }
    std::vector<float> f32(2 * 32, 1.0f);
    w.add_tensor("t.f32", {32, 2}, ds4::QType::F32, f32.data(), f32.size() * 4);
    std::vector<uint16_t> f16(32, 0x3c00);
    w.add_tensor("t.f16", {32}, ds4::QType::F16, f16.data(), f16.size() * 2);
    std::vector<uint8_t> q8(34, 1);  // one Q8_0 block: f16 scale + 32 int8
    w.add_tensor("t.q8_0", {32}, ds4::QType::Q8_0, q8.data(), q8.size());
    w.add_tensor("t.empty", {0}, ds4::QType::F32, nullptr, 0);
    w.write(tmp);
    const std::string bytes = slurp(tmp);
    put("gguf", "valid_types", bytes);
    put("gguf", "truncated_half", bytes.substr(0, bytes.size() / 2));
    put("gguf", "truncated_data", bytes.substr(0, bytes.size() - 1));
  }
  {
    ds4::GgufWriter w;  // no metadata, no tensors
    w.write(tmp);
    put("gguf", "empty", slurp(tmp));
  }
  {
    ds4::GgufWriter w;
    w.set_u32("general.alignment", 64);
    std::vector<float> v(4, 2.0f);
    w.add_tensor("a", {4}, ds4::QType::F32, v.data(), 16);
    w.add_tensor("b", {2, 2}, ds4::QType::F32, v.data(), 16);
    w.write(tmp);
    put("gguf", "align64", slurp(tmp));
  }
  put("gguf", "bad_magic", "GGUX" + std::string("\x03\0\0\0", 4) + le64(0) + le64(0));
  put("gguf", "version2", "GGUF" + std::string("\x02\0\0\0", 4) + le64(0) + le64(0));
  put("gguf", "huge_counts", "GGUF" + std::string("\x03\0\0\0", 4) + le64(~0ull) + le64(~0ull));
}

// ---- model (tiny synthetic deepseek4 GGUF, smallest shape the synthesizer makes) ----
// The whole model (~0.6 MB) is not committed: it goes to `generated` (scripts/fuzz passes
// build-fuzz/seeds/model as a second corpus). The committed seed is its metadata alone (every
// deepseek4 key and the tokenizer), which loads up to the weight binding.

void model_seeds(const std::string& tmp, const std::string& generated) {
  ds4::SynthOptions o;
  o.n_layer = 1;
  o.n_expert = 1;
  o.n_ff_exp = 32;
  o.n_vocab = 264;  // the synthetic vocabulary's minimum
  o.quant_mix = "q8_0";
  o.n_threads = 1;
  ds4::write_synth_model(o, tmp);
  if (!generated.empty()) {
    const std::string saved = g_root;
    g_root = generated;
    put("model", "tiny_l1_e1_q8", slurp(tmp));
    g_root = saved;
  }
  const auto f = ds4::GgufFile::open(tmp);
  ds4::GgufWriter w;
  for (const auto& [k, v] : f->metadata()) w.set_value(k, v);
  w.write(tmp);
  put("model", "metadata_only", slurp(tmp));
}

// ---- safetensors ----

std::string safetensors(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

void safetensors_seeds() {
  std::string data;
  for (int i = 0; i < 4; ++i) data += std::string("\0\0\x80\x3f", 4);  // 4 x F32 1.0
  data += std::string("\x00\x3c\x00\xc0", 4);                           // 2 x F16 1, -2
  data += std::string("\x80\x3f\x00\x40", 4);                           // 2 x BF16 1, 2
  data += le64(5) + le64(uint64_t(-6));                                 // 2 x I64
  data += std::string("\x07\0\0\0", 4);                                 // 1 x I32
  data += std::string("\x01\xff", 2);                                   // 2 x U8
  const std::string h =
      R"({"__metadata__":{"format":"pt"},)"
      R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
      R"("h":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},)"
      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[20,24]},)"
      R"("i":{"dtype":"I64","shape":[2],"data_offsets":[24,40]},)"
      R"("j":{"dtype":"I32","shape":[],"data_offsets":[40,44]},)"
      R"("u":{"dtype":"U8","shape":[2],"data_offsets":[44,46]},)"
      R"("z":{"dtype":"F64","shape":[0,3],"data_offsets":[46,46]}})";
  put("safetensors", "valid_dtypes", safetensors(h, data));
  put("safetensors", "empty_object", safetensors("{}", ""));
  put("safetensors", "padded_header", safetensors(R"({"x":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[0,3]}}   )", "abc"));
  put("safetensors", "fp4", safetensors(R"({"q":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", "\x12\x34"));
  put("safetensors", "overlap", safetensors(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", "xyz"));
  put("safetensors", "header_past_eof", le64(1000) + "{}");
  put("safetensors", "short", std::string("\x02\0\0", 3));
}

// ---- JSON ----

void json_seeds() {
  put("json", "hf_config", slurp(std::string(DS4_SOURCE_DIR) + "/tests/fixtures/hf-tiny/config.json"));
  put("json", "scalars", R"([null,true,false,0,-0,1.5e-3,-12E+2,9223372036854775807,-9223372036854775808,18446744073709551616,"s"])");
  put("json", "strings", R"({"esc":"\"\\\/\b\f\n\r\t","u":"\u00e9\u4e2d\ud83d\ude00","raw":"wörld ✓"})");
  put("json", "nested", R"({"a":[[[[{"b":[{}]}]]]],"c":{"d":{"e":[]}}})");
  put("json", "tokenizer_like", R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]},"added_tokens":[{"id":3,"content":"<|x|>","special":true}]})");
  put("json", "ws", " \t\r\n{ \"k\" : [ 1 , 2 ] } \n");
  put("json", "bad_trailing_comma", R"({"a":1,})");
  put("json", "bad_lone_surrogate", R"("\ud800")");
}

// ---- dumps ----

ds4::RunManifest manifest() {
  ds4::RunManifest m;
  m.engine_version = "fuzz";
  m.engine_git_sha = "0000";
  m.model_path = "m.gguf";
  m.model_sha256 = std::string(64, 'a');
  m.backend = "cpu";
  m.profile = "ds4";
  m.gate_set = "all=fast";
  m.run_mode = "batched";
  m.width = 2;
  m.tokens = {1, 2, 3};
  m.seed = 7;
  m.command_line = "ds4-parity run -o x.h5";
  m.extra["k"] = "v";
  return m;
}

void dump_seeds(const std::string& dir) {
  const std::vector<float> v = {1.0f, -2.0f, 0.5f, 3.0f};
  auto capture = [&](ds4::DumpWriter& w) {
    w.begin_forward(0, 2);
    for (int64_t p = 0; p < 2; ++p) {
      w.tap(0, "q", p, v.data(), v.size(), "matvec__ref");
      w.tap(0, "kv", p, v.data(), 2 + p, "matvec__ref");  // rows of different lengths
      w.tap(-1, "result_output", p, v.data(), v.size(), "matvec__gemm_f16");
    }
  };
  struct Case {
    const char* name;
    ds4::TapLevel level;
    bool taps;
  } cases[] = {{"full", ds4::TapLevel::Full, true},
               {"stats", ds4::TapLevel::Stats, true},
               {"no_taps", ds4::TapLevel::Full, false}};
  for (const Case& c : cases) {
    const std::string path = dir + "/" + c.name + ".h5";
    {
      ds4::DumpWriter w(path, manifest(), c.level);
      if (c.taps) capture(w);
      w.finish();
    }
    for (const char* target : {"dump", "dump_body"}) {
      put(target, c.name, slurp(path));
      if (std::string(c.name) == "full") {
        const std::string bytes = slurp(path);
        put(target, "full_truncated", bytes.substr(0, bytes.size() * 3 / 4));
      }
    }
    fs::remove(path);
  }
  put("dump", "not_hdf5", "\x89HDF\r\n\x1a\n garbage");
  put("dump_body", "not_hdf5", "\x89HDF\r\n\x1a\n garbage");
}

// ---- string parsers ----

void string_seeds() {
  const std::vector<std::string> gates = {"all=fast", "all=exact", "all=exact,q8_gemm=fast", "", ",,",
                                          "q8_gemm", "q8_gemm=", "=fast", "all=slow", "nope=fast"};
  for (size_t i = 0; i < gates.size(); ++i) put("gates", "g" + std::to_string(i), gates[i]);
  std::string every;
  for (const ds4::GateInfo& g : ds4::all_gates()) every += std::string(g.id) + "=exact,";
  put("gates", "every_gate", every);

  const std::vector<std::string> faults = {"2:attn_out:17:5", "0:q:0", "-1:result_output:3", "0:q",
                                           "a:q:0", "0::0", "0:q:-1", "0:q:1:2:3", "1:q:99999999999999999999"};
  for (size_t i = 0; i < faults.size(); ++i) put("fault", "f" + std::to_string(i), faults[i]);

  const std::vector<std::string> filters = {"0,2-3\nq,kv\n10-20", "-1\nresult_output\n5", "\n\n100-",
                                            "full\n\n", " 1 , 2 \n a b \n 0-0", "5-2\n\n", "\nq/x\n",
                                            "0-100000\n\n", "\n\n3-1", "\n\n1,2"};
  for (size_t i = 0; i < filters.size(); ++i) put("tap_filter", "t" + std::to_string(i), filters[i]);

  const std::vector<std::string> configs = {
      "DS4_THREADS=2\nDS4_GATES=all=exact\n\n-n\n4\n--temp\n0.7\n--gates\nq8_gemm=fast",
      "DS4_STRICT_BATCHED=1\nDS4_PROFILE=plain\n\n--strict\n--profile\nds4\n--ctx\n128",
      "DS4_TYPO=1\n\n",
      "HOME=/root\n\n-m\nmodel.gguf\n-p\nhi\n--raw\n--nothink\n--seed\n5\n--backend\ncuda\n--threads\n0",
      "\n--mode\nbatched\n--width\n8\n--tol\n1e-3\na.h5\nb.h5",
      "DS4_CUDA_STRICT_BATCHED=2\n\n-n",
      "\n--bogus\n-n\nx"};
  for (size_t i = 0; i < configs.size(); ++i) put("config", "c" + std::to_string(i), configs[i]);

  const std::vector<std::string> tomls = {
      "# parity gates\n[config.strict]\ndescription = \"strict batched == plain\"\nbitwise = true\n\n"
      "[config.fast]\nargmax_agreement_min = 0.999\nlogits_max_abs_max = 1e-2\nkld_mean_max = \"3x noise_floor\"\n"
      "structural_flips_max = 0\nrouting_flips_max = 2 # inline comment\n",
      "[config.noise_floor]\nkld_mean_max = 1.5e-6\n",
      "[config.a-b_1]\nbitwise = false\n",
      "key = 1\n",
      "[other]\nx = 1\n",
      "[config.x]\nkld_mean_max = \"3x\"\n",
      "[config.x]\nunknown_key = 1\n",
      "[config.x]\nkld_mean_max = 1\nkld_mean_max = 2\n",
      "[config.x]\ndescription = \"unterminated\n"};
  for (size_t i = 0; i < tomls.size(); ++i) put("parity_toml", "p" + std::to_string(i), tomls[i]);

  put("tokens", "text", std::string("\x00", 1) + "1 2 3\n4,5\r\n999");
  put("tokens", "text_bad", std::string("\x00", 1) + "1 two 3");
  std::string bin = "\x01";
  for (int32_t t : {0, 1, 999, 42}) bin.append(reinterpret_cast<const char*>(&t), 4);
  put("tokens", "binary", bin);
  put("tokens", "binary_odd", "\x01\x01\x02\x03");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: make_fuzz_corpus OUT_DIR [GENERATED_DIR]\n"
                         "  OUT_DIR: the committed seeds (tests/fuzz/corpus)\n"
                         "  GENERATED_DIR: seeds too large to commit (build-fuzz/seeds)\n");
    return 2;
  }
  const std::string generated = argc == 3 ? argv[2] : "";
  g_root = argv[1];
  try {
    const fs::path tmpdir = fs::temp_directory_path() / ("ds4-corpus-" + std::to_string(::getpid()));
    fs::create_directories(tmpdir);
    gguf_seeds((tmpdir / "x.gguf").string());
    model_seeds((tmpdir / "m.gguf").string(), generated);
    safetensors_seeds();
    json_seeds();
    dump_seeds(tmpdir.string());
    string_seeds();
    fs::remove_all(tmpdir);
  } catch (const ds4::Error& e) {
    std::fprintf(stderr, "make_fuzz_corpus: %s\n", e.what());
    return 2;
  }
  return 0;
}
