// `ds4-parity gates`: the gate table generated from gates.def (text, or --markdown for the README).
#include <cstdio>

#include "commands.h"
#include "ds4/cli_args.h"
#include "ds4/gates.h"

namespace ds4 {

int cmd_gates(const std::vector<std::string>& args) {
  bool markdown = false;
  ArgParser p("gates");
  p.flag("--markdown", &markdown, "print the README's Markdown table");
  if (!p.parse(args)) {
    std::fputs(p.usage().c_str(), stdout);
    return 0;
  }
  if (markdown) {
    std::fputs(gates_markdown_table().c_str(), stdout);
    return 0;
  }
  std::printf("%-20s %-10s %-9s %-32s %-28s %s\n", "gate", "family", "backends", "fast variant", "exact variant", "det");
  for (const GateInfo& g : all_gates())
    std::printf("%-20s %-10s %-9s %-32s %-28s %s\n", g.id, g.family, g.backends, g.fast_variant, g.exact_variant,
                g.deterministic ? "yes" : "no");
  return 0;
}

}  // namespace ds4
