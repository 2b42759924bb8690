// `vbctl doctor`: the host checks an operator runs after installing vbd.
#pragma once

#include <string>
#include <vector>

namespace vb::doctor {

enum class Verdict { kPass, kWarn, kFail };

struct Check {
  std::string name;
  Verdict verdict;
  std::string detail;
};

// Runs every check, printing progress to stderr as the long ones go. `daemon_health` is the
// outcome of the health call ("" when it succeeded).
std::vector<Check> run_checks(const std::string& address, const std::string& daemon_health);

// The transfer rate a GPU should reach from pinned memory over PCIe, in GB/s: from the
// link's generation and width, or the figure known for the model where the link is unknown.
double expected_pcie_gbps(int generation, int width, const std::string& gpu_name);

}  // namespace vb::doctor
