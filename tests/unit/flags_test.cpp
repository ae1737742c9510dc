// Flags read the same as `--name value` and `--name=value` in every CLI of the project (ds4,
// ds4-synth/ds4-convert, ds4-parity): split_flag_arg and the three parsers built on it. Errors for
// bad flags are rows of the bad-input table (bad_input_test).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ds4/cli_args.h"
#include "ds4/config.h"
#include "ds4/error.h"

namespace {

struct Argv {
  std::vector<std::string> words;
  std::vector<char*> ptrs;
  explicit Argv(std::vector<std::string> w) : words(std::move(w)) {
    for (std::string& s : words) ptrs.push_back(s.data());
  }
  int argc() const { return static_cast<int>(ptrs.size()); }
  char** argv() { return ptrs.data(); }
};

TEST(Flags, SplitFlagArg) {
  const ds4::FlagArg a = ds4::split_flag_arg("--gates=all=exact,q8_gemm=fast");
  EXPECT_EQ(a.name, "--gates");
  EXPECT_EQ(a.value, std::optional<std::string>("all=exact,q8_gemm=fast"));  // split at the first '='
  EXPECT_EQ(ds4::split_flag_arg("--width=").value, std::optional<std::string>(""));
  for (const char* plain : {"--strict", "-o", "-o=x.h5", "a=b", "--=x", "-"}) {
    const ds4::FlagArg p = ds4::split_flag_arg(plain);
    EXPECT_EQ(p.name, plain);
    EXPECT_FALSE(p.value.has_value()) << plain;  // only long flags take the '=' form
  }
}

TEST(Flags, Ds4CliTakesBothForms) {
  const ds4::EnvSettings env;
  Argv spaced({"ds4", "-n", "7", "--temp", "0.5", "--gates", "all=exact", "--prompt", "a=b"});
  Argv joined({"ds4", "-n", "7", "--temp=0.5", "--gates=all=exact", "--prompt=a=b"});
  const ds4::Ds4Cli a = ds4::parse_ds4_cli(spaced.argc(), spaced.argv(), env);
  const ds4::Ds4Cli b = ds4::parse_ds4_cli(joined.argc(), joined.argv(), env);
  EXPECT_EQ(a.n_predict, 7);
  EXPECT_EQ(b.temperature, 0.5f);
  EXPECT_EQ(a.temperature, b.temperature);
  EXPECT_EQ(a.prompt, "a=b");
  EXPECT_EQ(b.prompt, "a=b");
  EXPECT_EQ(a.gates.to_string(), b.gates.to_string());
  Argv bad({"ds4", "--raw=1"});
  try {
    ds4::parse_ds4_cli(bad.argc(), bad.argv(), env);
    ADD_FAILURE() << "--raw=1 accepted";
  } catch (const ds4::Error& e) {
    EXPECT_STREQ(e.what(), "bad flag: --raw takes no value");
  }
}

TEST(Flags, SynthCliTakesBothForms) {
  Argv joined({"ds4-synth", "--layers=2", "--seed=9", "--output=x.gguf", "--mtp"});
  const ds4::SynthCli c = ds4::parse_synth_cli(joined.argc(), joined.argv());
  EXPECT_EQ(c.opt.n_layer, 2u);
  EXPECT_EQ(c.opt.seed, 9u);
  EXPECT_EQ(c.output, "x.gguf");
  EXPECT_TRUE(c.opt.mtp);
  Argv bad({"ds4-synth", "--mtp=yes", "-o", "x.gguf"});
  try {
    ds4::parse_synth_cli(bad.argc(), bad.argv());
    ADD_FAILURE() << "--mtp=yes accepted";
  } catch (const ds4::Error& e) {
    EXPECT_STREQ(e.what(), "bad flag: --mtp takes no value");
  }
}

TEST(Flags, ParityArgParserTakesBothForms) {
  int64_t width = 0;
  std::string out;
  bool strict = false;
  ds4::ArgParser p("run");
  p.option("--width", &width, "rows", 0, 100).option("-o", &out, "output").flag("--strict", &strict, "exact");
  ASSERT_TRUE(p.parse({"--width=16", "-o", "a.h5", "--strict"}));
  EXPECT_EQ(width, 16);
  EXPECT_EQ(out, "a.h5");
  EXPECT_TRUE(strict);
  ds4::ArgParser q("run");
  q.flag("--strict", &strict, "exact");
  try {
    q.parse({"--strict=no"});
    ADD_FAILURE() << "--strict=no accepted";
  } catch (const ds4::Error& e) {
    EXPECT_STREQ(e.what(), "bad flag: --strict takes no value");
  }
}

}  // namespace
