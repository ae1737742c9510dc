// `ds4-parity report`: Markdown + self-contained HTML from ablate / bisect / sweep JSON (ds4/report.h).
#include <cstdio>

#include "commands.h"
#include "ds4/cli_args.h"
#include "ds4/error.h"
#include "ds4/report.h"

namespace ds4 {

int cmd_report(const std::vector<std::string>& args) {
  std::string out = "report";
  std::vector<std::string> files;
  ArgParser p("report");
  p.option("-o", &out, "output folder: report.md and report.html (default: report)")
      .positionals(&files, "result JSON files of ablate, bisect and sweep (any of them, each at most once)", 1, 3);
  if (!p.parse(args)) {
    std::fputs(p.usage().c_str(), stdout);
    return 0;
  }
  const std::string html = write_report(load_report_inputs(files), out);
  std::printf("report: %s (and report.md beside it)\n", html.c_str());
  return 0;
}

}  // namespace ds4
