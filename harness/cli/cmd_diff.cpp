// `ds4-parity diff A.h5 B.h5`: compares two tap dumps (the work is ds4::diff_command, in the
// harness library so tests and the ablation code reach it without the executable).
#include <cstdio>

#include "commands.h"
#include "ds4/diff.h"

namespace ds4 {

int cmd_diff(const std::vector<std::string>& args) {
  std::string out;
  const int rc = diff_command(args, out);
  std::fputs(out.c_str(), stdout);
  return rc;
}

}  // namespace ds4
