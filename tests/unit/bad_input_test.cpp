// The bad-input table, tested through the real binaries (build/engine/ds4, ds4-synth,
// ds4-convert, build/harness/ds4-parity from DS4_BINARY_DIR).
//
// Each row runs one tool with exactly one bad input and checks the contract every tool keeps:
//   * exit status 2;
//   * stderr is one line ("<tool>: <message>") and the message names the input at fault (each
//     row lists the substrings it must contain: the flag, variable, file, key or item);
//   * nothing half-written: the row's output path does not exist afterwards, and no temporary
//     ("*.tmp", "*.tmp.<pid>") is left next to it.
// Tools run under `env -i` with only PATH, HOME and the row's variables, so a DS4_* variable of
// the calling shell cannot change the outcome.
//
// Rows for subcommands that other work adds (`ds4-parity diff`, `ds4-parity check`) skip until the
// binary has them. With BAD_INPUT_TABLE=FILE each row is also written to FILE as a Markdown
// row (input, what is tried, the exact error with paths shortened): the README's table comes from
//   BAD_INPUT_TABLE=table.md build/tests/bad_input_test
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "ds4/dump.h"
#include "ds4/gguf.h"
#include "ds4/synth.h"
#include "../support/tiny_models.h"

namespace fs = std::filesystem;

namespace {

const std::string kBin = DS4_BINARY_DIR;
const std::string kDs4 = kBin + "/engine/ds4";
const std::string kSynth = kBin + "/engine/ds4-synth";
const std::string kConvert = kBin + "/engine/ds4-convert";
const std::string kParity = kBin + "/harness/ds4-parity";

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
}

struct Result {
  int status = -1;  // exit status, or 128 + signal
  std::string out, err;
};

// Runs `bin args...` with a clean environment plus `env` ("NAME=VALUE" entries).
Result run_tool(const std::string& dir, const std::string& bin, const std::vector<std::string>& args,
                const std::vector<std::string>& env) {
  std::string cmd = "env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=" + quote(dir + "/home");
  for (const std::string& e : env) cmd += " " + quote(e);
  cmd += " " + quote(bin);
  for (const std::string& a : args) cmd += " " + quote(a);
  cmd += " >" + quote(dir + "/run.out") + " 2>" + quote(dir + "/run.err") + " </dev/null";
  const int w = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(w) ? WEXITSTATUS(w) : 128 + (WIFSIGNALED(w) ? WTERMSIG(w) : 0);
  r.out = slurp(dir + "/run.out");
  r.err = slurp(dir + "/run.err");
  return r;
}

// ---------------------------------------------------------------------------------------------
// Fixtures: bad files made once per test program.
// ---------------------------------------------------------------------------------------------

struct Files {
  std::string dir, model, good_dump, tokens_ok;
};

// Copies the tiny model's metadata (and optionally tensors) into a new GGUF, with edits.
void rewrite_gguf(const std::string& src, const std::string& dst, const std::string& drop_key,
                  const std::string& drop_tensor, bool tensors,
                  const std::map<std::string, std::vector<int32_t>>& int_arrays = {}) {
  const auto f = ds4::GgufFile::open(src);
  ds4::GgufWriter w;
  for (const auto& [k, v] : f->metadata()) {
    if (k == drop_key) continue;
    auto it = int_arrays.find(k);
    if (it != int_arrays.end()) w.set_arr_i32(k, it->second);
    else w.set_value(k, v);
  }
  if (tensors)
    for (const ds4::GgufTensor& t : f->tensors())
      if (t.name != drop_tensor) w.add_tensor(t.name, t.ne, t.type, t.data, t.nbytes);
  w.write(dst);
}

// A valid dump written with DumpWriter (what `ds4-parity run` writes), then edited with HDF5.
void write_dump(const std::string& path) {
  ds4::RunManifest m;
  m.engine_version = "test";
  m.model_path = "m.gguf";
  m.backend = "cpu";
  m.profile = "ds4";
  m.run_mode = "plain";
  m.width = 1;
  m.tokens = {1, 2};
  m.command_line = "ds4-parity run -o x.h5";
  ds4::DumpWriter w(path, m, ds4::TapLevel::Full);
  const std::vector<float> v = {1, 2, 3, 4};
  for (int64_t p = 0; p < 2; ++p) {
    w.begin_forward(p, 1);
    w.tap(0, "attn_out", p, v.data(), v.size(), "x__ref");
    w.tap(-1, "result_output", p, v.data(), v.size(), "x__ref");
  }
  w.finish();
}

void edit_dump(const std::string& path, bool bump_schema, const char* drop_link) {
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  if (bump_schema) {
    H5Adelete(f, "schema_version");
    const hid_t sp = H5Screate(H5S_SCALAR);
    const hid_t a = H5Acreate2(f, "schema_version", H5T_NATIVE_INT32, sp, H5P_DEFAULT, H5P_DEFAULT);
    const int32_t two = 2;
    H5Awrite(a, H5T_NATIVE_INT32, &two);
    H5Aclose(a);
    H5Sclose(sp);
  }
  if (drop_link) H5Ldelete(f, drop_link, H5P_DEFAULT);
  H5Fclose(f);
  ds4::reseal_dump(path);  // an edited dump keeps a valid DS4 header: the reader's own checks run
}

const Files& files() {
  static const Files fx = [] {
    Files x;
    x.dir = (fs::temp_directory_path() / ("ds4-bad-input-" + std::to_string(::getpid()))).string();
    fs::remove_all(x.dir);
    fs::create_directories(x.dir + "/home");
    fs::create_directories(x.dir + "/adir");
    fs::create_directories(x.dir + "/adir.i32");
    fs::create_directories(x.dir + "/ckpt-empty");
    fs::create_directories(x.dir + "/ckpt-badjson");
    x.model = ds4::testing::tiny_model_path("ds4");
    const std::string m = slurp(x.model);
    const std::string d = x.dir + "/";
    spit(d + "empty.gguf", "");
    spit(d + "text.gguf", "hello, not a model\n");
    spit(d + "truncated.gguf", m.substr(0, 1000));
    spit(d + "truncated-meta.gguf", m.substr(0, 20000));
    spit(d + "data-cut.gguf", m.substr(0, m.size() - 1));
    std::string v2 = m;
    v2[4] = 2;
    spit(d + "version2.gguf", v2);
    {
      ds4::GgufWriter w;
      w.set_str("general.architecture", "llama");
      w.write(d + "llama.gguf");
    }
    rewrite_gguf(x.model, d + "no-block-count.gguf", "deepseek4.block_count", "", false);
    rewrite_gguf(x.model, d + "no-output.gguf", "", "output.weight", true);
    const auto mf = ds4::GgufFile::open(x.model);
    std::vector<int32_t> ratios;
    for (int64_t r : mf->get_int_array("deepseek4.attention.compress_ratios"))
      ratios.push_back(static_cast<int32_t>(r));
    ratios[0] = 3;
    rewrite_gguf(x.model, d + "bad-ratio.gguf", "", "", true,
                 {{"deepseek4.attention.compress_ratios", ratios}});
    // MTP sidecars (--mtp): the tiny model's own, one of a model with another vocabulary, one
    // with a tensor missing; and a trunk that already holds its MTP block.
    {
      ds4::SynthOptions o;
      o.mtp_sidecar = true;
      ds4::write_synth_model(o, d + "mtp.gguf");
      rewrite_gguf(d + "mtp.gguf", d + "mtp-no-hproj.gguf", "", "mtp.0.h_proj.weight", true);
      o.n_vocab = 600;
      ds4::write_synth_model(o, d + "mtp-vocab600.gguf");
      fs::copy_file(ds4::testing::tiny_model_path("ds4", true), d + "tiny-mtp.gguf");
    }
    // Token files.
    spit(d + "tokens-ok.txt", "1 2 3");
    spit(d + "tokens-word.txt", "1 two 3");
    spit(d + "tokens-vocab.txt", "1 2 99999");
    spit(d + "tokens-neg.txt", "1 -2");
    spit(d + "tokens-big.txt", "1 99999999999999999999");
    spit(d + "tokens-empty.txt", " \n");
    spit(d + "tokens-odd.i32", "abc");
    // Dumps.
    write_dump(d + "good.h5");
    const std::string dump = slurp(d + "good.h5");
    spit(d + "dump-truncated.h5", dump.substr(0, dump.size() / 2));
    spit(d + "dump-text.h5", "not hdf5\n");
    std::string flipped = dump;
    flipped[flipped.size() * 2 / 3] ^= 0x10;  // one bit, inside the HDF5 body
    spit(d + "dump-bitflip.h5", flipped);
    fs::copy_file(d + "good.h5", d + "dump-schema2.h5");
    edit_dump(d + "dump-schema2.h5", true, nullptr);
    fs::copy_file(d + "good.h5", d + "dump-no-order.h5");
    edit_dump(d + "dump-no-order.h5", false, "tap_order_name");
    // Prompt files.
    spit(d + "prompts-ok.txt", "Hello\n");
    spit(d + "prompts-empty.txt", "# nothing\n\n");
    spit(d + "prompts-at.txt", "Hello\n@\n");
    // Parity configs.
    spit(d + "cfg-unknown-key.toml", "[config.fast]\nkld_mean_maxx = 1e-3\n");
    spit(d + "cfg-bad-number.toml", "[config.fast]\nkld_mean_max = 1e-3x\n");
    spit(d + "cfg-bad-table.toml", "[fast]\nkld_mean_max = 1e-3\n");
    spit(d + "cfg-unterminated.toml", "[config.fast]\ndescription = \"oops\n");
    spit(d + "cfg-outside.toml", "kld_mean_max = 1e-3\n");
    spit(d + "result.json", "{}");
    // Checkpoints for ds4-convert.
    spit(d + "ckpt-badjson/config.json", "{\"num_hidden_layers\": 2,}");
    spit(d + "ckpt-badjson/model.safetensors", std::string("\x02\0\0\0\0\0\0\0{}", 10));
    spit(d + "bad.safetensors", std::string("\xff\0\0\0\0\0\0\0{}", 10));
    return x;
  }();
  return fx;
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

enum class Tool { Ds4, Parity, Synth, Convert };

struct Row {
  const char* input;  // the README table's first column
  const char* tried;  // what is tried
  Tool tool;
  std::vector<std::string> args;   // {DIR}, {MODEL}, {OUT} are substituted
  std::vector<std::string> env;    // "NAME=VALUE"
  std::vector<std::string> names;  // the message must contain each (after substitution)
  const char* needs = nullptr;     // ds4-parity subcommand the row needs (skips until it exists)
};

// Arguments of a `ds4-parity run` that would succeed (3 tokens on the tiny model), with `extra`
// added; a flag of `extra` that the base already has replaces the base's value.
std::vector<std::string> run_ok(std::vector<std::string> extra) {
  std::vector<std::string> a = {"run", "-m", "{MODEL}", "--tokens", "{DIR}/tokens-ok.txt", "-o", "{OUT}"};
  for (size_t i = 0; i < extra.size(); ++i) {
    auto it = std::find(a.begin() + 1, a.end(), extra[i]);
    if (it != a.end() && i + 1 < extra.size() && it + 1 != a.end()) {
      *(it + 1) = extra[++i];
      continue;
    }
    a.push_back(extra[i]);
  }
  return a;
}

// The parity run with the model replaced by `model`.
std::vector<std::string> run_model(const std::string& model) {
  return {"run", "-m", model, "--tokens", "{DIR}/tokens-ok.txt", "-o", "{OUT}"};
}

std::vector<std::string> ds4_ok(std::vector<std::string> extra) {
  std::vector<std::string> a = {"-m", "{MODEL}", "-n", "1"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

const std::vector<Row>& rows() {
  static const std::vector<Row> r = {
      // ---- model GGUF (-m) ----
      {"model (`-m`)", "missing file", Tool::Ds4, {"-m", "{DIR}/nope.gguf"}, {}, {"{DIR}/nope.gguf", "cannot open"}},
      {"model (`-m`)", "a directory", Tool::Ds4, {"-m", "{DIR}/adir"}, {}, {"{DIR}/adir", "not a regular file"}},
      {"model (`-m`)", "empty file", Tool::Ds4, {"-m", "{DIR}/empty.gguf"}, {}, {"empty.gguf", "not a GGUF file"}},
      {"model (`-m`)", "not a GGUF (text)", Tool::Parity, run_model("{DIR}/text.gguf"), {}, {"text.gguf", "bad magic"}},
      {"model (`-m`)", "GGUF version 2", Tool::Ds4, {"-m", "{DIR}/version2.gguf"}, {}, {"version2.gguf", "version 2"}},
      {"model (`-m`)", "cut to 1000 bytes", Tool::Parity, run_model("{DIR}/truncated.gguf"), {}, {"truncated.gguf", "tensor count", "1000 bytes"}},
      {"model (`-m`)", "cut inside the metadata", Tool::Ds4, {"-m", "{DIR}/truncated-meta.gguf"}, {}, {"truncated-meta.gguf", "truncated while reading"}},
      {"model (`-m`)", "last tensor cut short", Tool::Ds4, {"-m", "{DIR}/data-cut.gguf"}, {}, {"data-cut.gguf", "runs past end of file"}},
      {"model (`-m`)", "another architecture", Tool::Ds4, {"-m", "{DIR}/llama.gguf"}, {}, {"llama.gguf", "general.architecture", "llama"}},
      {"model (`-m`)", "hyperparameter key missing", Tool::Parity, run_model("{DIR}/no-block-count.gguf"), {}, {"no-block-count.gguf", "deepseek4.block_count", "missing"}},
      {"model (`-m`)", "bad hyperparameter value", Tool::Ds4, {"-m", "{DIR}/bad-ratio.gguf"}, {}, {"bad-ratio.gguf", "compress_ratios", "3"}},
      {"model (`-m`)", "tensor missing", Tool::Parity, run_model("{DIR}/no-output.gguf"), {}, {"no-output.gguf", "output.weight"}},
      // ---- MTP sidecar (--mtp) ----
      {"MTP sidecar (`--mtp`)", "missing file", Tool::Ds4, ds4_ok({"--mtp", "{DIR}/nope-mtp.gguf"}), {}, {"{DIR}/nope-mtp.gguf", "cannot open"}},
      {"MTP sidecar (`--mtp`)", "not a GGUF (text)", Tool::Parity, run_ok({"--mtp", "{DIR}/text.gguf"}), {}, {"text.gguf", "bad magic"}},
      {"MTP sidecar (`--mtp`)", "a trunk, not a sidecar", Tool::Ds4, ds4_ok({"--mtp", "{MODEL}"}), {}, {"general.architecture", "deepseek4_mtp_support"}},
      {"MTP sidecar (`--mtp`)", "sidecar of another model (vocab 600)", Tool::Parity, run_ok({"--mtp", "{DIR}/mtp-vocab600.gguf"}), {}, {"mtp-vocab600.gguf", "deepseek4.vocab_size", "600"}},
      {"MTP sidecar (`--mtp`)", "sidecar tensor missing", Tool::Ds4, ds4_ok({"--mtp", "{DIR}/mtp-no-hproj.gguf"}), {}, {"mtp-no-hproj.gguf", "mtp.0.h_proj.weight", "missing"}},
      {"MTP sidecar (`--mtp`)", "trunk already holds its MTP block", Tool::Ds4, {"-m", "{DIR}/tiny-mtp.gguf", "--mtp", "{DIR}/mtp.gguf", "-n", "1"}, {}, {"tiny-mtp.gguf", "already holds"}},
      {"MTP sidecar (`--mtp`)", "--mtp without -m", Tool::Ds4, {"--mtp", "{DIR}/mtp.gguf", "-n", "1"}, {}, {"--mtp", "-m"}},
      // ---- tokens file (--tokens) ----
      {"tokens (`--tokens`)", "missing file", Tool::Parity, run_ok({"--tokens", "{DIR}/nope.txt"}), {}, {"{DIR}/nope.txt", "token file"}},
      {"tokens (`--tokens`)", "a directory", Tool::Parity, run_ok({"--tokens", "{DIR}/adir"}), {}, {"{DIR}/adir", "token file"}},
      {"tokens (`--tokens`)", "a directory named *.i32", Tool::Parity, run_ok({"--tokens", "{DIR}/adir.i32"}), {}, {"adir.i32", "token file"}},
      {"tokens (`--tokens`)", "a word that is not an integer", Tool::Parity, run_ok({"--tokens", "{DIR}/tokens-word.txt"}), {}, {"tokens-word.txt", "'two'"}},
      {"tokens (`--tokens`)", "a token outside the vocabulary", Tool::Parity, run_ok({"--tokens", "{DIR}/tokens-vocab.txt"}), {}, {"tokens-vocab.txt", "99999", "index 2"}},
      {"tokens (`--tokens`)", "a negative token", Tool::Parity, run_ok({"--tokens", "{DIR}/tokens-neg.txt"}), {}, {"tokens-neg.txt", "-2"}},
      {"tokens (`--tokens`)", "a number beyond int32", Tool::Parity, run_ok({"--tokens", "{DIR}/tokens-big.txt"}), {}, {"tokens-big.txt", "99999999999999999999"}},
      {"tokens (`--tokens`)", "no tokens", Tool::Parity, run_ok({"--tokens", "{DIR}/tokens-empty.txt"}), {}, {"tokens-empty.txt", "no tokens"}},
      {"tokens (`--tokens`)", "`.i32` size not a multiple of 4", Tool::Parity, run_ok({"--tokens", "{DIR}/tokens-odd.i32"}), {}, {"tokens-odd.i32", "multiple of 4"}},
      // ---- dumps (ds4-parity diff A.h5 B.h5) ----
      {"dump (`diff A.h5 B.h5`)", "missing file", Tool::Parity, {"diff", "{DIR}/nope.h5", "{DIR}/good.h5"}, {}, {"{DIR}/nope.h5"}, "diff"},
      {"dump (`diff A.h5 B.h5`)", "not HDF5", Tool::Parity, {"diff", "{DIR}/good.h5", "{DIR}/dump-text.h5"}, {}, {"dump-text.h5", "HDF5"}, "diff"},
      {"dump (`diff A.h5 B.h5`)", "truncated", Tool::Parity, {"diff", "{DIR}/dump-truncated.h5", "{DIR}/good.h5"}, {}, {"dump-truncated.h5"}, "diff"},
      {"dump (`diff A.h5 B.h5`)", "one bit flipped", Tool::Parity, {"diff", "{DIR}/good.h5", "{DIR}/dump-bitflip.h5"}, {}, {"dump-bitflip.h5", "checksum"}, "diff"},
      {"dump (`diff A.h5 B.h5`)", "schema version 2", Tool::Parity, {"diff", "{DIR}/dump-schema2.h5", "{DIR}/good.h5"}, {}, {"dump-schema2.h5", "schema version 2", "regenerate"}, "diff"},
      {"dump (`diff A.h5 B.h5`)", "a required dataset missing", Tool::Parity, {"diff", "{DIR}/good.h5", "{DIR}/dump-no-order.h5"}, {}, {"dump-no-order.h5", "tap_order_name"}, "diff"},
      // ---- parity config (ds4-parity check --config) ----
      {"parity config (`check --config`)", "missing file", Tool::Parity, {"check", "--config", "{DIR}/nope.toml", "{DIR}/result.json"}, {}, {"{DIR}/nope.toml"}, "check"},
      {"parity config (`check --config`)", "unknown key", Tool::Parity, {"check", "--config", "{DIR}/cfg-unknown-key.toml", "{DIR}/result.json"}, {}, {"cfg-unknown-key.toml", "kld_mean_maxx"}, "check"},
      {"parity config (`check --config`)", "bad number", Tool::Parity, {"check", "--config", "{DIR}/cfg-bad-number.toml", "{DIR}/result.json"}, {}, {"cfg-bad-number.toml", "1e-3x"}, "check"},
      {"parity config (`check --config`)", "table not [config.NAME]", Tool::Parity, {"check", "--config", "{DIR}/cfg-bad-table.toml", "{DIR}/result.json"}, {}, {"cfg-bad-table.toml", "fast"}, "check"},
      {"parity config (`check --config`)", "unterminated string", Tool::Parity, {"check", "--config", "{DIR}/cfg-unterminated.toml", "{DIR}/result.json"}, {}, {"cfg-unterminated.toml", ":2"}, "check"},
      {"parity config (`check --config`)", "key outside a table", Tool::Parity, {"check", "--config", "{DIR}/cfg-outside.toml", "{DIR}/result.json"}, {}, {"cfg-outside.toml", "kld_mean_max"}, "check"},
      {"parity config (`check --config`)", "`--config` not given", Tool::Parity, {"check", "{DIR}/result.json"}, {}, {"--config"}, "check"},
      // ---- prompt file (ds4-parity ablate --prompts: one prompt per line, '@file' = token file) ----
      {"prompt file (`ablate --prompts`)", "missing file", Tool::Parity, {"ablate", "-m", "{MODEL}", "--prompts", "{DIR}/nope.txt", "--state", "{OUT}"}, {}, {"{DIR}/nope.txt"}, "ablate"},
      {"prompt file (`ablate --prompts`)", "no prompts (comments only)", Tool::Parity, {"ablate", "-m", "{MODEL}", "--prompts", "{DIR}/prompts-empty.txt", "--state", "{OUT}"}, {}, {"prompts-empty.txt", "no prompts"}, "ablate"},
      {"prompt file (`ablate --prompts`)", "'@' without a file", Tool::Parity, {"ablate", "-m", "{MODEL}", "--prompts", "{DIR}/prompts-at.txt", "--state", "{OUT}"}, {}, {"prompts-at.txt:2", "'@'"}, "ablate"},
      {"flag", "bad --shard (ablate)", Tool::Parity, {"ablate", "-m", "{MODEL}", "--prompts", "{DIR}/prompts-ok.txt", "--shard", "3/2", "--state", "{OUT}"}, {}, {"--shard", "3/2"}, "ablate"},
      {"tap filter (`--positions`)", "bad range (ablate)", Tool::Parity, {"ablate", "-m", "{MODEL}", "--prompts", "{DIR}/prompts-ok.txt", "--positions", "abc", "--state", "{OUT}"}, {}, {"positions", "'abc'"}, "ablate"},
      {"flag", "`--gates` on bisect (its switch is `--minimize-gates`)", Tool::Parity, {"bisect", "--gates"}, {}, {"--gates", "--minimize-gates", "--cand"}, "bisect"},
      {"flag", "capture filter with dumps (bisect)", Tool::Parity, {"bisect", "{DIR}/good.h5", "{DIR}/good.h5", "--positions", "5-"}, {}, {"--positions", "in-process"}, "bisect"},
      // ---- gate string (--gates, DS4_GATES) ----
      {"gate string (`--gates`)", "unknown gate", Tool::Ds4, ds4_ok({"--gates", "q8_gemmm=exact"}), {}, {"--gates", "q8_gemmm"}},
      {"gate string (`--gates`)", "bad state", Tool::Parity, run_ok({"--mode", "batched", "--gates", "q8_gemm=slow"}), {}, {"--gates", "q8_gemm=slow"}},
      {"gate string (`--gates`)", "no `=`", Tool::Ds4, ds4_ok({"--gates", "q8_gemm"}), {}, {"--gates", "q8_gemm"}},
      // ---- fault string (--fault) ----
      {"fault (`--fault`)", "too few fields", Tool::Parity, run_ok({"--fault", "1:q"}), {}, {"fault", "'1:q'", "layer:tap:pos"}},
      {"fault (`--fault`)", "layer not a number", Tool::Parity, run_ok({"--fault", "x:q:0"}), {}, {"fault", "layer", "'x'"}},
      {"fault (`--fault`)", "layer beyond int", Tool::Parity, run_ok({"--fault", "4294967296:q:0"}), {}, {"fault", "layer", "4294967296"}},
      {"fault (`--fault`)", "negative position", Tool::Parity, run_ok({"--fault", "0:q:-3"}), {}, {"fault", "negative"}},
      {"fault (`--fault`)", "empty tap name", Tool::Parity, run_ok({"--fault", "0::0"}), {}, {"fault", "'0::0'"}},
      // ---- tap selection (--taps, --tap-layers, --tap-names, --positions) ----
      {"tap level (`--taps`)", "unknown level", Tool::Parity, run_ok({"--taps", "all"}), {}, {"tap level", "'all'"}},
      {"tap filter (`--tap-layers`)", "not a number", Tool::Parity, run_ok({"--tap-layers", "x2"}), {}, {"layers", "'x2'"}},
      {"tap filter (`--tap-layers`)", "layer below -1", Tool::Parity, run_ok({"--tap-layers", "-5"}), {}, {"layers", "'-5'"}},
      {"tap filter (`--tap-names`)", "a name with '/'", Tool::Parity, run_ok({"--tap-names", "q,a/b"}), {}, {"names", "'a/b'"}},
      {"tap filter (`--positions`)", "end before start", Tool::Parity, run_ok({"--positions", "5-2"}), {}, {"positions", "'5-2'"}},
      {"tap filter (`--positions`)", "two ranges", Tool::Parity, run_ok({"--positions", "1-2,4"}), {}, {"positions", "one range"}},
      // ---- flags ----
      {"flag", "unknown flag (ds4)", Tool::Ds4, ds4_ok({"--bogus"}), {}, {"--bogus"}},
      {"flag", "unknown flag (ds4-parity run)", Tool::Parity, run_ok({"--bogus"}), {}, {"--bogus", "ds4-parity run"}},
      {"flag", "value missing", Tool::Parity, {"run", "-m", "{MODEL}", "-o"}, {}, {"-o", "needs a value"}},
      {"flag", "value missing (ds4)", Tool::Ds4, {"-m"}, {}, {"-m", "needs a value"}},
      {"flag", "`=value` on a switch", Tool::Parity, run_ok({"--strict=yes"}), {}, {"--strict", "takes no value"}},
      {"flag", "`=value` on a switch (ds4)", Tool::Ds4, ds4_ok({"--nothink=1"}), {}, {"--nothink", "takes no value"}},
      {"flag", "`--name=value` out of range", Tool::Parity, run_ok({"--width=-1"}), {}, {"--width", "'-1'", "[0, 1048576]"}},
      {"flag", "integer not a number", Tool::Ds4, ds4_ok({"-n", "abc"}), {}, {"-n", "'abc'"}},
      {"flag", "integer out of range", Tool::Parity, run_ok({"--width", "-1"}), {}, {"--width", "'-1'", "[0, 1048576]"}},
      {"flag", "integer with trailing junk", Tool::Parity, run_ok({"--threads", "4x"}), {}, {"--threads", "'4x'"}},
      {"flag", "float not a number", Tool::Ds4, ds4_ok({"--temp", "warm"}), {}, {"--temp", "'warm'"}},
      {"flag", "float out of range", Tool::Ds4, ds4_ok({"--temp", "1e9"}), {}, {"--temp", "'1e9'"}},
      {"flag", "unknown choice (--mode)", Tool::Parity, run_ok({"--mode", "fast"}), {}, {"--mode", "'fast'"}},
      {"flag", "unknown choice (--profile)", Tool::Ds4, ds4_ok({"--profile", "fast"}), {}, {"--profile", "'fast'"}},
      {"flag", "unknown choice (--profile, run)", Tool::Parity, run_ok({"--profile", "fast"}), {}, {"profile", "'fast'"}},
      {"flag", "unknown choice (--backend)", Tool::Ds4, ds4_ok({"--backend", "tpu"}), {}, {"--backend", "'tpu'"}},
      {"flag", "unknown choice (--drafts)", Tool::Parity, run_ok({"--mode", "verify", "--drafts", "oracle"}), {}, {"--drafts", "'oracle'"}},
      {"flag", "unexpected positional", Tool::Parity, run_ok({"extra"}), {}, {"'extra'"}},
      {"flag", "required flag missing", Tool::Parity, {"run", "-m", "{MODEL}"}, {}, {"-o"}},
      {"flag", "unknown subcommand", Tool::Parity, {"frob"}, {}, {"'frob'"}},
      {"flag", "unknown flag (ds4-synth)", Tool::Synth, {"--bogus", "-o", "{OUT}"}, {}, {"--bogus"}},
      {"flag", "bad number (ds4-synth)", Tool::Synth, {"--layers", "two", "-o", "{OUT}"}, {}, {"--layers", "'two'"}},
      {"flag", "unknown preset (ds4-synth)", Tool::Synth, {"--preset", "huge", "-o", "{OUT}"}, {}, {"preset", "'huge'"}},
      {"flag", "unknown quant mix (ds4-synth)", Tool::Synth, {"--quant", "q3", "-o", "{OUT}"}, {}, {"'q3'"}},
      {"flag", "unknown values (ds4-synth)", Tool::Synth, {"--values", "noise", "-o", "{OUT}"}, {}, {"--values", "'noise'"}},
      {"flag", "vocabulary too small (ds4-synth)", Tool::Synth, {"--vocab", "10", "-o", "{OUT}"}, {}, {"vocabulary", "10"}},
      {"flag", "-o missing (ds4-synth)", Tool::Synth, {"--layers", "1"}, {}, {"-o"}},
      // ---- checkpoints (ds4-convert) ----
      {"checkpoint (ds4-convert)", "missing input", Tool::Convert, {"{DIR}/nope", "-o", "{OUT}"}, {}, {"{DIR}/nope"}},
      {"checkpoint (ds4-convert)", "folder without safetensors", Tool::Convert, {"{DIR}/ckpt-empty", "-o", "{OUT}"}, {}, {"ckpt-empty"}},
      {"checkpoint (ds4-convert)", "config.json not valid JSON", Tool::Convert, {"{DIR}/ckpt-badjson", "-o", "{OUT}"}, {}, {"config.json", "invalid JSON"}},
      {"checkpoint (ds4-convert)", "safetensors header past end", Tool::Convert, {"{DIR}/bad.safetensors", "--config", DS4_SOURCE_DIR "/tests/fixtures/hf-tiny/config.json", "-o", "{OUT}"}, {}, {"bad.safetensors"}},
      // ---- output path (-o) ----
      {"output (`-o`)", "folder does not exist", Tool::Parity, run_ok({"-o", "{DIR}/no/such/dir/out.h5"}), {}, {"{DIR}/no/such/dir/out.h5"}},
      {"output (`-o`)", "a directory", Tool::Parity, run_ok({"-o", "{DIR}/adir"}), {}, {"{DIR}/adir", "Is a directory"}},
      {"output (`-o`)", "folder does not exist (ds4-synth)", Tool::Synth, {"--layers", "1", "--vocab", "280", "-o", "{DIR}/no/such/dir/m.gguf"}, {}, {"{DIR}/no/such/dir/m.gguf"}},
      // ---- DS4_* environment ----
      {"environment", "unknown DS4_ variable", Tool::Ds4, ds4_ok({}), {"DS4_GATE=all=exact"}, {"DS4_GATE"}},
      {"environment", "unknown DS4_ variable (ds4-parity)", Tool::Parity, run_ok({}), {"DS4_THREAD=2"}, {"DS4_THREAD"}},
      {"environment", "DS4_THREADS not a number", Tool::Ds4, ds4_ok({}), {"DS4_THREADS=many"}, {"DS4_THREADS", "'many'"}},
      {"environment", "DS4_THREADS out of range", Tool::Parity, run_ok({}), {"DS4_THREADS=100000"}, {"DS4_THREADS", "100000"}},
      {"environment", "DS4_STRICT_BATCHED not 0/1", Tool::Ds4, ds4_ok({}), {"DS4_STRICT_BATCHED=yes"}, {"DS4_STRICT_BATCHED", "'yes'"}},
      {"environment", "DS4_CUDA_STRICT_BATCHED not 0/1", Tool::Parity, run_ok({}), {"DS4_CUDA_STRICT_BATCHED=2"}, {"DS4_CUDA_STRICT_BATCHED", "'2'"}},
      {"environment", "DS4_PROFILE unknown", Tool::Ds4, ds4_ok({}), {"DS4_PROFILE=fast"}, {"DS4_PROFILE", "'fast'"}},
      {"environment", "DS4_PROFILE unknown (ds4-parity)", Tool::Parity, run_ok({}), {"DS4_PROFILE=fast"}, {"DS4_PROFILE", "'fast'"}},
      {"environment", "DS4_GATES bad", Tool::Parity, run_ok({"--mode", "batched"}), {"DS4_GATES=all=slow"}, {"DS4_GATES", "all=slow"}},
      {"environment", "DS4_CPU_DEQUANT_CACHE_MB not a number", Tool::Ds4, ds4_ok({}), {"DS4_CPU_DEQUANT_CACHE_MB=lots"}, {"DS4_CPU_DEQUANT_CACHE_MB", "'lots'"}},
      {"environment", "DS4_CPU_DEQUANT_CACHE_MB zero", Tool::Parity, run_ok({"--mode", "batched"}), {"DS4_CPU_DEQUANT_CACHE_MB=0"}, {"DS4_CPU_DEQUANT_CACHE_MB", "0"}},
      {"environment", "DS4_CACHE_DIR not creatable", Tool::Ds4, {"-n", "1"}, {"DS4_CACHE_DIR=/dev/null/cache"}, {"/dev/null/cache"}},
  };
  return r;
}

const char* tool_name(Tool t) {
  switch (t) {
    case Tool::Ds4: return "ds4";
    case Tool::Parity: return "ds4-parity";
    case Tool::Synth: return "ds4-synth";
    case Tool::Convert: return "ds4-convert";
  }
  return "?";
}

const std::string& tool_path(Tool t) {
  switch (t) {
    case Tool::Ds4: return kDs4;
    case Tool::Synth: return kSynth;
    case Tool::Convert: return kConvert;
    case Tool::Parity: break;
  }
  return kParity;
}

bool has_subcommand(const std::string& name) {
  static std::map<std::string, bool> known;
  auto it = known.find(name);
  if (it != known.end()) return it->second;
  const Result r = run_tool(files().dir, kParity, {name, "--help"}, {});
  return known[name] = (r.status == 0);
}

std::string row_name(const Row& row, size_t i) {
  std::string s = std::to_string(i) + "_" + row.input + "_" + row.tried;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

class BadInput : public ::testing::TestWithParam<size_t> {};

TEST_P(BadInput, ExitTwoWithOneLineNamingTheInputAndNothingWritten) {
  const Row& row = rows()[GetParam()];
  const Files& fx = files();
  if (row.needs && !has_subcommand(row.needs))
    GTEST_SKIP() << "ds4-parity has no `" << row.needs << "` subcommand in this build yet";
  const std::string out = fx.dir + "/out-" + std::to_string(GetParam()) +
                          (row.tool == Tool::Synth || row.tool == Tool::Convert ? ".gguf" : ".h5");
  auto subst = [&](std::string s) {
    replace_all(s, "{DIR}", fx.dir);
    replace_all(s, "{MODEL}", fx.model);
    replace_all(s, "{OUT}", out);
    return s;
  };
  std::vector<std::string> args, env;
  for (const std::string& a : row.args) args.push_back(subst(a));
  for (const std::string& e : row.env) env.push_back(subst(e));
  const std::vector<fs::path> before = [&] {
    std::vector<fs::path> v;
    for (const auto& e : fs::recursive_directory_iterator(fx.dir)) v.push_back(e.path());
    return v;
  }();

  const Result r = run_tool(fx.dir, tool_path(row.tool), args, env);

  std::string shown;
  for (const std::string& a : args) shown += " " + a;
  SCOPED_TRACE(std::string(tool_name(row.tool)) + shown + "\nstderr: " + r.err);
  EXPECT_EQ(r.status, 2);
  // One line: "<tool>: <message>\n". `ds4-parity <unknown subcommand>` follows its error line
  // with the command list (usage), so only its first line is the message.
  const std::string first = r.err.substr(0, r.err.find('\n'));
  const bool usage_follows = row.args.size() == 1 && row.args[0] == "frob";
  if (!usage_follows) {
    EXPECT_EQ(r.err.size(), first.size() + 1) << "stderr is not exactly one line";
  }
  EXPECT_EQ(first.rfind(tool_name(row.tool), 0), 0u) << "the message starts with the tool's name";
  for (const std::string& n : row.names) EXPECT_NE(first.find(subst(n)), std::string::npos) << "names " << subst(n);
  EXPECT_EQ(first.find("internal error"), std::string::npos);
  // Nothing half-written: no output, and no new file anywhere in the scratch folder (temporaries
  // included), except the captured stdout/stderr.
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::recursive_directory_iterator(fx.dir)) {
    const fs::path& p = e.path();
    if (p.filename() == "run.out" || p.filename() == "run.err") continue;
    if (p.string().rfind(fx.dir + "/home", 0) == 0) continue;
    EXPECT_NE(std::find(before.begin(), before.end(), p), before.end()) << "left behind: " << p;
  }

  // The README row: input | what is tried | exact message (paths as DIR/).
  const std::string out_shown = fs::path(out).extension() == ".gguf" ? "out.gguf" : "out.h5";
  std::string msg = first;
  replace_all(msg, out, "DIR/" + out_shown);
  replace_all(msg, fx.model, "tiny.gguf");
  replace_all(msg, fx.dir + "/", "DIR/");
  replace_all(msg, fx.dir, "DIR");
  replace_all(msg, "|", "\\|");
  std::string cmd = std::string(tool_name(row.tool));
  for (std::string a : args) {
    replace_all(a, out, out_shown);
    replace_all(a, fx.model, "tiny.gguf");
    replace_all(a, fx.dir + "/", "");
    replace_all(a, std::string(DS4_SOURCE_DIR) + "/", "");
    replace_all(a, "|", "\\|");
    cmd += " " + a;
  }
  // A message that quotes a command in backticks needs a double-backtick code span.
  const std::string tick = msg.find('`') == std::string::npos ? "`" : "`` ";
  const std::string untick = tick == "`" ? "`" : " ``";
  std::string env_text;
  for (std::string e : env) {
    replace_all(e, fx.dir + "/", "");
    env_text += e + " ";
  }
  const std::string line = std::string("| ") + row.input + " | " + row.tried + ": `" + env_text + cmd + "` | " + tick + msg + untick + " |";
  if (const char* table = std::getenv("BAD_INPUT_TABLE")) {
    std::ofstream(table, std::ios::app) << line << "\n";
  } else {
    // The README's table is this test's output: every row must be there, word for word.
    std::ifstream readme(std::string(DS4_SOURCE_DIR) + "/README.md");
    const std::string text((std::istreambuf_iterator<char>(readme)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find(line + "\n"), std::string::npos)
        << "README.md's bad-input table lacks or misquotes this row (regenerate it with "
           "BAD_INPUT_TABLE=table.md build/tests/bad_input_test):\n" << line;
  }
}

INSTANTIATE_TEST_SUITE_P(Rows, BadInput, ::testing::Range(size_t{0}, rows().size()),
                         [](const ::testing::TestParamInfo<size_t>& i) { return row_name(rows()[i.param], i.param); });

// `ds4-parity gate`, the threshold check's old name, still runs `check`, after a one-line note
// on stderr, so that existing CI scripts keep working.
TEST(DeprecatedAlias, GateRunsCheckAfterANote) {
  const Files& fx = files();
  const std::string note =
      "ds4-parity: note: `gate` is deprecated, use `ds4-parity check` (same flags)\n";
  Result r = run_tool(fx.dir, kParity, {"gate", "--help"}, {});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.err, note);
  EXPECT_EQ(r.out.rfind("usage: ds4-parity check ", 0), 0u) << r.out;
  r = run_tool(fx.dir, kParity, {"gate", "--config", fx.dir + "/nope.toml", fx.dir + "/result.json"}, {});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err.rfind(note + "ds4-parity check: " + fx.dir + "/nope.toml: ", 0), 0u) << r.err;
}

// Starts the table file (BAD_INPUT_TABLE) and removes the scratch folder at the end.
struct TableAndCleanup : ::testing::Environment {
  void SetUp() override {
    if (const char* table = std::getenv("BAD_INPUT_TABLE"))
      std::ofstream(table, std::ios::trunc)
          << "| input | what is tried (command) | error (stderr; exit status 2) |\n|---|---|---|\n";
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all((fs::temp_directory_path() / ("ds4-bad-input-" + std::to_string(::getpid()))), ec);
  }
};
const auto* const kEnvironment = ::testing::AddGlobalTestEnvironment(new TableAndCleanup);

}  // namespace
