// `ds4-parity check --config parity.toml RESULT.json... [--junit out.xml]`: checks diff results
// against per-configuration thresholds (the work is ds4::check_command, in the harness library).
#include <cstdio>

#include "commands.h"
#include "ds4/ci_gate.h"

namespace ds4 {

int cmd_check(const std::vector<std::string>& args) {
  std::string out;
  const int rc = check_command(args, out);
  std::fputs(out.c_str(), stdout);
  return rc;
}

}  // namespace ds4
