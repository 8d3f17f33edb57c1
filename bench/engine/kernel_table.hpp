// Per-kernel-name GPU time of a window of work (CUPTI kernel activity), for
// hf_bench's decode-step table: which kernels a step spends its time in.
// A bench tool, not the agent: no shipping, no attribution, only sums. Built
// with CUPTI where the CUDA parts are (kernel_table_cupti.cpp), a stub that
// says so elsewhere (kernel_table_stub.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace inferscope::bench {

struct KernelSum {
  std::string name;  // demangled, without the parameter list and the engine's namespaces
  uint64_t calls = 0;
  uint64_t total_ns = 0;
};

// One recording window at a time (CUPTI activity is per process).
class KernelTable {
 public:
  // Turns kernel activity on and opens the window; false (and *why) without CUPTI.
  bool start(std::string* why);
  // Closes the window after the caller synchronised the device; kernels that
  // started inside it, summed by name, most time first. Turns the activity off.
  std::vector<KernelSum> stop();
};

}  // namespace inferscope::bench
