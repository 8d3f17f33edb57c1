// Names of the GPU tracing modes and activity kinds (config, C API, docs).
#include <string>

#include "inferscope/agent.hpp"

namespace inferscope::agent {

const char* to_string(GpuTraceMode mode) {
  switch (mode) {
    case GpuTraceMode::kOff:
      return "off";
    case GpuTraceMode::kSampled:
      return "sampled";
    case GpuTraceMode::kTriggered:
      return "triggered";
    case GpuTraceMode::kFull:
      return "full";
  }
  return "unknown";
}

bool parse_gpu_trace_mode(std::string_view text, GpuTraceMode& out) {
  for (GpuTraceMode m : {GpuTraceMode::kOff, GpuTraceMode::kSampled, GpuTraceMode::kTriggered,
                         GpuTraceMode::kFull}) {
    if (text == to_string(m)) {
      out = m;
      return true;
    }
  }
  return false;
}

bool parse_gpu_trace_kinds(std::string_view text, uint32_t& out) {
  struct Name {
    std::string_view name;
    uint32_t bits;
  };
  static constexpr Name kNames[] = {
      {"kernel", kGpuKernels},
      {"callbacks", kGpuLaunchCallbacks},
      {"memcpy", kGpuMemcpy},
      {"memset", kGpuMemset},
      {"runtime", kGpuRuntime},
      {"driver", kGpuDriver},
      {"extcorr", kGpuExternalCorrelation},
      {"default", kGpuTraceDefaultKinds},
      {"all", 0x7f},
  };
  uint32_t bits = 0;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view word = text.substr(0, comma);
    bool known = false;
    for (const Name& n : kNames) {
      if (word == n.name) {
        bits |= n.bits;
        known = true;
      }
    }
    if (!known) return false;
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  if (!(bits & kGpuKernels)) return false;  // nothing to attribute or capture without kernels
  out = bits;
  return true;
}

}  // namespace inferscope::agent
