// libFuzzer target: the parity config language of `ds4-parity check --config parity.toml`
// (ds4::parse_toml_tables on toml++, and ds4::parse_parity_config, harness/PARITY_TOML.md) on
// arbitrary text.
//   scripts/fuzz parity_toml        (corpus: tests/fuzz/corpus/parity_toml)
#include <cstdint>
#include <string_view>

#include "ds4/ci_gate.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const std::vector<ds4::TomlTable> tables = ds4::parse_toml_tables(text, "fuzz.toml");
    for (const ds4::TomlTable& t : tables) ds4::fuzz::check(t.line >= 1, "tables have a line");
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
  }
  try {
    const ds4::ParityConfig c = ds4::parse_parity_config(text, "fuzz.toml");
    for (const auto& [name, g] : c.configs)
      for (const auto& [metric, th] : g.thresholds) {
        ds4::fuzz::check(ds4::gate_metric_key(metric) != nullptr, "metrics have keys");
        (void)th.text();
      }
  } catch (const ds4::Error& e) {
    ds4::fuzz::check_one_line(e);
  }
  return 0;
}
