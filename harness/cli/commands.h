// The ds4-parity subcommands. Each takes the words after its name and returns the exit code
// (0 ok, 1 a check failed / runs differ, 2 bad input); errors are thrown as ds4::Error and
// printed by the main as one line.
#pragma once
#include <string>
#include <vector>

#include "ds4/cli_args.h"
#include "ds4/taps.h"

namespace ds4 {

// --tap-layers / --tap-names / --positions: which taps a dump captures (run) or which rows the
// reference captures and runs are compared on (ablate, bisect, sweep: long contexts).
struct TapFilterFlags {
  std::string layers, names, positions;
  void add_to(ArgParser& p, const std::string& what) {
    p.option("--tap-layers", &layers, what + " only these layers, e.g. 0,2-3 (-1 = head)")
        .option("--tap-names", &names, what + " only these taps, comma separated")
        .option("--positions", &positions, what + " only these positions, e.g. 10-20 or 2048-");
  }
  bool given() const { return !layers.empty() || !names.empty() || !positions.empty(); }
  TapFilter filter() const { return TapFilter::parse(layers, names, positions); }
};

int cmd_gates(const std::vector<std::string>& args);
int cmd_taps(const std::vector<std::string>& args);
int cmd_run(const std::vector<std::string>& args);
int cmd_diff(const std::vector<std::string>& args);
int cmd_check(const std::vector<std::string>& args);
int cmd_ablate(const std::vector<std::string>& args);
int cmd_bisect(const std::vector<std::string>& args);
int cmd_sweep(const std::vector<std::string>& args);
int cmd_report(const std::vector<std::string>& args);
}  // namespace ds4
