// The ds4-parity subcommands. Each takes the words after its name and returns the exit code
// (0 ok, 1 a check failed / runs differ, 2 bad input); errors are thrown as ds4::Error and
// printed by the main as one line.
#pragma once
#include <string>
#include <vector>

namespace ds4 {
int cmd_gates(const std::vector<std::string>& args);
int cmd_run(const std::vector<std::string>& args);
int cmd_diff(const std::vector<std::string>& args);
int cmd_gate(const std::vector<std::string>& args);
int cmd_ablate(const std::vector<std::string>& args);
int cmd_bisect(const std::vector<std::string>& args);
int cmd_sweep(const std::vector<std::string>& args);
int cmd_report(const std::vector<std::string>& args);
}  // namespace ds4
