// inferscope-export: trace segments -> Chrome Trace Event JSON (opens in Perfetto).
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>

#include "inferscope/collector/chrome_export.hpp"

using namespace inferscope::collector;

int main(int argc, char** argv) {
  std::string input, output;
  double from_s = -1, to_s = -1;
  CLI::App app{"inferscope-export: a trace file or a collector --trace-dir to Chrome Trace Event JSON"};
  app.add_option("input", input, "trace file (.istrace) or trace directory")->required();
  app.add_option("-o,--output", output, "output JSON file")->required();
  app.add_option("--from", from_s, "keep events ending at or after this time (s, agents' monotonic clock)");
  app.add_option("--to", to_s, "keep events starting at or before this time (s)");
  CLI11_PARSE(app, argc, argv);

  std::string error;
  auto files = trace_inputs(input, error);
  if (files.empty()) {
    std::cerr << "inferscope-export: " << error << "\n";
    return 1;
  }
  ExportOptions options;
  if (from_s >= 0) options.start_ns = static_cast<int64_t>(from_s * 1e9);
  if (to_s >= 0) options.end_ns = static_cast<int64_t>(to_s * 1e9);
  std::ofstream out(output, std::ios::binary | std::ios::trunc);
  if (!out) {
    std::cerr << "inferscope-export: cannot write " << output << "\n";
    return 1;
  }
  ExportStats stats;
  if (!export_chrome_trace(files, out, options, stats, error)) {
    std::cerr << "inferscope-export: " << error << "\n";
    return 1;
  }
  for (const auto& d : stats.damage) std::cerr << "inferscope-export: warning: " << d << "\n";
  std::cerr << "inferscope-export: " << stats.files << " file(s), " << stats.frames << " frames, "
            << stats.records << " records -> " << stats.events << " events in " << output << "\n";
  return 0;
}
