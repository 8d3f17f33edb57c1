// inferscope-export: trace segments -> Perfetto protobuf trace or Chrome Trace Event JSON.
// Exit status (docs/cli.md): 2 for a bad command line, 1 when the input cannot
// be read or the output written, 0 on success.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

#include "inferscope/cli/exit_status.hpp"
#include "inferscope/collector/chrome_export.hpp"
#include "inferscope/collector/perfetto_export.hpp"

using namespace inferscope::collector;
namespace fs = std::filesystem;

namespace {

constexpr const char* kProgram = "inferscope-export";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A node's label: its directory's name (the file's for a single file), made unique.
std::string node_label(const std::string& input, std::set<std::string>& used) {
  fs::path p = fs::path(input).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  std::string base = p.filename().string();
  if (base.empty() || base == ".") base = fs::absolute(p).filename().string();
  std::string label = base;
  for (int n = 2; !used.insert(label).second; ++n) label = base + "#" + std::to_string(n);
  return label;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> inputs;
  std::string output, format, episode;
  double from_s = -1, to_s = -1, margin_s = 5;
  bool list = false;
  CLI::App app{
      "inferscope-export: collector --trace-dir(s) or trace files to a Perfetto protobuf trace "
      "(one trace across nodes) or Chrome Trace Event JSON"};
  app.add_option("inputs", inputs,
                 "trace directories (one per node's collector) or trace files (.istrace)")
      ->required();
  app.add_option("-o,--output", output,
                 "output file; .perfetto-trace / .pftrace write the Perfetto format");
  app.add_option("--format", format, "perfetto or json (default: by the output's extension, json)")
      ->check(CLI::IsMember({"perfetto", "json"}));
  app.add_option("--from", from_s,
                 "keep events ending at or after this time (s, monotonic clock; several nodes: the "
                 "earliest-booted host's)");
  app.add_option("--to", to_s, "keep events starting at or before this time (s)");
  app.add_option(
      "--episode", episode,
      "export an alert episode's span plus --margin on each side (ids: --list-episodes)");
  app.add_option("--margin", margin_s, "seconds kept around --episode (default 5)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--list-episodes", list, "print the stored alert episodes and their ids");
  if (auto status = inferscope::cli::parse(app, kProgram, argc, argv)) return *status;
  if (from_s >= 0 && to_s >= 0 && to_s < from_s)
    return inferscope::cli::usage_error(kProgram, "--to must not be before --from");
  if (!episode.empty() && (from_s >= 0 || to_s >= 0))
    return inferscope::cli::usage_error(kProgram, "--episode replaces --from/--to");
  if (!list && output.empty())
    return inferscope::cli::usage_error(kProgram, "--output is required");
  if (format.empty())
    format =
        ends_with(output, ".perfetto-trace") || ends_with(output, ".pftrace") ? "perfetto" : "json";
  if (!list && format == "json" && inputs.size() > 1)
    return inferscope::cli::usage_error(kProgram,
                                        "several inputs are merged by --format perfetto only");
  if (!list && format == "json" && !episode.empty())
    return inferscope::cli::usage_error(kProgram, "--episode needs --format perfetto");

  std::string error;
  std::vector<ExportNode> nodes;
  std::set<std::string> labels;
  for (const auto& in : inputs) {
    auto files = trace_inputs(in, error);
    if (files.empty()) {
      std::cerr << kProgram << ": " << error << "\n";
      return inferscope::cli::kFailure;
    }
    nodes.push_back({node_label(in, labels), std::move(files)});
  }

  if (list) {
    std::vector<FoundEpisode> episodes;
    if (!list_episodes(nodes, episodes, error)) {
      std::cerr << kProgram << ": " << error << "\n";
      return inferscope::cli::kFailure;
    }
    for (const auto& e : episodes)
      std::cout << episode_id(e.episode) << "  node " << nodes[e.node].label << "  model "
                << e.episode.model << "  " << e.episode.start_ns / 1e9 << " s .. "
                << (e.episode.end_ns ? std::to_string(e.episode.end_ns / 1e9) + " s" : "open")
                << "\n";
    return inferscope::cli::kSuccess;
  }

  ExportOptions options;
  if (from_s >= 0) options.start_ns = static_cast<int64_t>(from_s * 1e9);
  if (to_s >= 0) options.end_ns = static_cast<int64_t>(to_s * 1e9);
  if (!episode.empty()) {
    FoundEpisode found;
    if (!find_episode(nodes, episode, found, error)) {
      std::cerr << kProgram << ": " << error << "\n";
      return inferscope::cli::kFailure;
    }
    const auto margin = static_cast<int64_t>(margin_s * 1e9);
    options.start_ns = found.episode.start_ns + found.shift_ns - margin;
    // An episode still open runs to the end of what is stored.
    if (found.episode.end_ns != 0) options.end_ns = found.episode.end_ns + found.shift_ns + margin;
  }
  std::ofstream out(output, std::ios::binary | std::ios::trunc);
  if (!out) {
    std::cerr << kProgram << ": cannot write " << output << "\n";
    return inferscope::cli::kFailure;
  }
  ExportStats stats;
  const bool ok = format == "perfetto"
                      ? export_perfetto_trace(nodes, out, options, stats, error)
                      : export_chrome_trace(nodes[0].files, out, options, stats, error);
  if (!ok) {
    std::cerr << kProgram << ": " << error << "\n";
    return inferscope::cli::kFailure;
  }
  for (const auto& d : stats.damage) std::cerr << kProgram << ": warning: " << d << "\n";
  std::cerr << kProgram << ": " << stats.files << " file(s), " << stats.frames << " frames, "
            << stats.records << " records -> " << stats.events
            << (format == "perfetto" ? " packets" : " events") << " in " << output;
  if (format == "perfetto")
    std::cerr << " (" << stats.blocks_read << " blocks read, " << stats.blocks_skipped
              << " skipped by the time index)";
  std::cerr << "\n";
  return inferscope::cli::kSuccess;
}
