// inferscope-export: trace segments -> Chrome Trace Event JSON (opens in Perfetto).
// Exit status (docs/cli.md): 2 for a bad command line, 1 when the input cannot
// be read or the output written, 0 on success.
#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>

#include "inferscope/cli/exit_status.hpp"
#include "inferscope/collector/chrome_export.hpp"

using namespace inferscope::collector;

int main(int argc, char** argv) {
  std::string input, output;
  double from_s = -1, to_s = -1;
  CLI::App app{
      "inferscope-export: a trace file or a collector --trace-dir to Chrome Trace Event JSON"};
  app.add_option("input", input, "trace file (.istrace) or trace directory")->required();
  app.add_option("-o,--output", output, "output JSON file")->required();
  app.add_option("--from", from_s,
                 "keep events ending at or after this time (s, agents' monotonic clock)");
  app.add_option("--to", to_s, "keep events starting at or before this time (s)");
  if (auto status = inferscope::cli::parse(app, "inferscope-export", argc, argv)) return *status;
  if (from_s >= 0 && to_s >= 0 && to_s < from_s)
    return inferscope::cli::usage_error("inferscope-export", "--to must not be before --from");

  std::string error;
  auto files = trace_inputs(input, error);
  if (files.empty()) {
    std::cerr << "inferscope-export: " << error << "\n";
    return inferscope::cli::kFailure;
  }
  ExportOptions options;
  if (from_s >= 0) options.start_ns = static_cast<int64_t>(from_s * 1e9);
  if (to_s >= 0) options.end_ns = static_cast<int64_t>(to_s * 1e9);
  std::ofstream out(output, std::ios::binary | std::ios::trunc);
  if (!out) {
    std::cerr << "inferscope-export: cannot write " << output << "\n";
    return inferscope::cli::kFailure;
  }
  ExportStats stats;
  if (!export_chrome_trace(files, out, options, stats, error)) {
    std::cerr << "inferscope-export: " << error << "\n";
    return inferscope::cli::kFailure;
  }
  for (const auto& d : stats.damage) std::cerr << "inferscope-export: warning: " << d << "\n";
  std::cerr << "inferscope-export: " << stats.files << " file(s), " << stats.frames << " frames, "
            << stats.records << " records -> " << stats.events << " events in " << output << "\n";
  return inferscope::cli::kSuccess;
}
