// ds4-parity: the numerical-equivalence harness and differential debugger.
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "ds4/error.h"

namespace {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*fn)(const std::vector<std::string>&);
};

const Subcommand kCommands[] = {
    {"gates", "list the gates (gates.def): id, family, backends, fast and exact variants", ds4::cmd_gates},
    {"taps", "list the tap names (taps.def) in dataflow order; --variants: the variant names (variants.def)", ds4::cmd_taps},
    {"run", "run a model plain / batched / verify and dump taps to HDF5", ds4::cmd_run},
    {"diff", "compare two dumps: first divergence, worst taps, growth, logits, routing; JSON", ds4::cmd_diff},
    {"check", "check diff results against parity.toml thresholds; JUnit XML", ds4::cmd_check},
    {"ablate", "gate ablation matrix vs plain decode: ranking, minimal exact set (resumable, shards)", ds4::cmd_ablate},
    {"bisect", "first (position, layer, tap) not bit-equal, its variant and gate; local vs propagated", ds4::cmd_bisect},
    {"sweep", "verify width 1..K and prompt-length bands: where bit-equality or the fork moves", ds4::cmd_sweep},
    {"report", "Markdown + self-contained HTML report of ablate / bisect / sweep results", ds4::cmd_report},
};

// Old names that keep working, with a one-line note on stderr. `gate` was the threshold check
// until it was renamed so as not to share a word with the kernel gates (gates.def, `gates`).
struct Alias {
  const char* old_name;
  const char* name;
};
const Alias kAliases[] = {{"gate", "check"}};

void usage(FILE* out) {
  std::fprintf(out, "usage: ds4-parity <command> [options]   (ds4-parity <command> --help)\ncommands:\n");
  for (const Subcommand& c : kCommands) std::fprintf(out, "  %-8s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string name = argv[1];
  for (const Alias& a : kAliases)
    if (name == a.old_name) {
      std::fprintf(stderr, "ds4-parity: note: `%s` is deprecated, use `ds4-parity %s` (same flags)\n",
                   a.old_name, a.name);
      name = a.name;
    }
  std::vector<std::string> args(argv + 2, argv + argc);
  for (const Subcommand& c : kCommands) {
    if (name != c.name) continue;
    try {
      return c.fn(args);
    } catch (const ds4::Error& e) {
      std::fprintf(stderr, "ds4-parity %s: %s\n", c.name, e.what());
      return 2;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ds4-parity %s: internal error: %s\n", c.name, e.what());
      return 3;
    }
  }
  std::fprintf(stderr, "ds4-parity: unknown command '%s'\n", name.c_str());
  usage(stderr);
  return 2;
}
