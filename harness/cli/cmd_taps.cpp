// `ds4-parity taps`: the tap list generated from taps.def, in dataflow order (text, or --markdown);
// --variants: the variant list from variants.def.
#include <cstdio>

#include "commands.h"
#include "ds4/cli_args.h"
#include "ds4/tap_list.h"

namespace ds4 {

int cmd_taps(const std::vector<std::string>& args) {
  bool markdown = false, variants = false;
  ArgParser p("taps");
  p.flag("--markdown", &markdown, "print a Markdown table");
  p.flag("--variants", &variants, "list the kernel variant names (variants.def) instead of the taps");
  if (!p.parse(args)) {
    std::fputs(p.usage().c_str(), stdout);
    return 0;
  }
  if (variants) {
    if (markdown) {
      std::fputs(variants_markdown_table().c_str(), stdout);
      return 0;
    }
    std::printf("%-30s %-12s %-9s %s\n", "variant", "family", "backends", "what it is");
    for (const VariantInfo& v : all_variants())
      std::printf("%-30s %-12s %-9s %s\n", v.name, v.family, v.backends, v.doc);
    return 0;
  }
  if (markdown) {
    std::fputs(taps_markdown_table().c_str(), stdout);
    return 0;
  }
  std::printf("%-3s %-24s %-6s %-9s %s\n", "#", "tap", "scope", "when", "what it holds");
  int i = 0;
  for (const TapInfo& t : all_taps()) std::printf("%-3d %-24s %-6s %-9s %s\n", i++, t.name, t.scope, t.when, t.doc);
  return 0;
}

}  // namespace ds4
