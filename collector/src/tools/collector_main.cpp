// inferscope-collector: the daemon's command line (docs/collector.md).
// Exit status (docs/cli.md): 2 for a bad command line, 1 when it cannot run
// (a port in use, a file it cannot read), 0 after a clean stop.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <tuple>

#include "inferscope/cli/exit_status.hpp"
#include "inferscope/collector/collector.hpp"
#include "inferscope/collector/endpoint.hpp"

using namespace inferscope::collector;
namespace cli = inferscope::cli;

namespace {
constexpr const char* kProgram = "inferscope-collector";

int usage(const std::string& message) {
  return cli::usage_error(kProgram, message);
}

int failure(const std::string& message) {
  std::cerr << kProgram << ": " << message << "\n";
  return cli::kFailure;
}
}  // namespace

int main(int argc, char** argv) {
  CollectorOptions o;
  std::string window = "10s", token_file, placement_file, trace_max_age, trace_block_age = "1s";
  std::string capture_cooldown = "30s";
  bool no_capture_on_episodes = false;
  CLI::App app{
      "inferscope collector: ingests agent streams, exposes Prometheus metrics, "
      "detects hot/cold/dead experts, stores traces and serves the viewer"};
  app.add_option("--listen", o.listen,
                 "agent ingest address, repeatable: tcp://HOST:PORT or unix:///PATH "
                 "(default tcp://127.0.0.1:7431; port 0 = any free port)");
  app.add_option("--metrics", o.metrics, "Prometheus /metrics address HOST:PORT (\"\" = off)")
      ->capture_default_str();
  app.add_option("--viewer", o.viewer, "viewer API address HOST:PORT (\"\" = off)")
      ->capture_default_str();
  app.add_option("--trace-dir", o.trace_dir,
                 "directory for trace segments (default: no trace store)");
  app.add_option("--trace-max-bytes", o.trace_max_bytes,
                 "bound on all trace segments; oldest are deleted")
      ->capture_default_str();
  app.add_option("--trace-segment-bytes", o.trace_segment_bytes,
                 "segment size (default max-bytes/8, 64 KiB..64 MiB)");
  app.add_option("--trace-max-age", trace_max_age,
                 "delete whole segments whose newest record is older than this, e.g. 24h (default: "
                 "no age bound)");
  app.add_option("--trace-block-bytes", o.trace_block_bytes,
                 "a compressed block closes at this many bytes of frames")
      ->capture_default_str();
  app.add_option("--trace-block-age", trace_block_age,
                 "... or this long after its first frame: what a kill -9 can lose")
      ->capture_default_str();
  app.add_option("--window", window, "aggregation window, e.g. 10s, 500ms")->capture_default_str();
  app.add_option("--hot-threshold", o.aggregation.hot_threshold,
                 "utilization (share / fair share) at or above which an expert is hot")
      ->capture_default_str();
  app.add_option("--hot-clear-threshold", o.aggregation.hot_clear_threshold,
                 "a hot expert clears below this utilization")
      ->capture_default_str();
  app.add_option("--cold-threshold", o.aggregation.cold_threshold,
                 "utilization below which an expert is cold")
      ->capture_default_str();
  app.add_option("--cold-clear-threshold", o.aggregation.cold_clear_threshold,
                 "a cold expert clears at or above this utilization")
      ->capture_default_str();
  app.add_option("--hot-windows", o.aggregation.windows,
                 "consecutive windows that open a hot/cold/dead episode")
      ->capture_default_str();
  app.add_option("--drop-burst-threshold", o.aggregation.drop_burst_threshold,
                 "dropped/routed ratio in a window that opens a drop-burst episode")
      ->capture_default_str();
  app.add_flag("--per-expert-metrics", o.aggregation.per_expert_metrics,
               "export every expert's series (small models only; see docs/metrics.md)");
  app.add_option("--placement", placement_file,
                 "expert placement JSON (overrides the agents' hello)");
  app.add_option("--eplb-redundant", o.aggregation.eplb_redundant,
                 "redundant expert slots for the EPLB what-if (-1: one per EP rank)")
      ->capture_default_str();
  app.add_option("--ep-top-pairs", o.aggregation.ep_top_pairs,
                 "EP traffic pairs exported per MoE layer (heaviest first, 0..64)")
      ->capture_default_str();
  app.add_option("--eplb-expert-bytes", o.aggregation.eplb_expert_bytes,
                 "EPLB advisor: weight bytes of one expert (0: unknown, no cost or horizon)")
      ->capture_default_str();
  app.add_option("--eplb-move-bandwidth", o.aggregation.eplb_move_bytes_per_second,
                 "EPLB advisor: bytes/s at which a rank loads expert weights while re-placing")
      ->capture_default_str();
  app.add_option("--hot-rank-threshold", o.aggregation.hot_rank_threshold,
                 "EP rank load / mean rank load at or above which a rank is hot")
      ->capture_default_str();
  app.add_option("--hot-rank-clear-threshold", o.aggregation.hot_rank_clear_threshold,
                 "a hot EP rank clears below this")
      ->capture_default_str();
  app.add_option("--auth-token-file", token_file,
                 "require this shared token from agents and viewers");
  app.add_option("--max-connections", o.max_connections, "agent connections at once")
      ->capture_default_str();
  app.add_option("--max-frame-buffer-bytes", o.limits.max_buffered_bytes,
                 "bound on the bytes all agent connections may hold for frames still arriving")
      ->capture_default_str();
  app.add_option("--max-models", o.aggregation.max_models, "label bound: models")
      ->capture_default_str();
  app.add_option("--max-ranks", o.aggregation.max_ranks, "label bound: ranks per model")
      ->capture_default_str();
  app.add_option("--max-episode-series", o.aggregation.max_episode_series,
                 "bound on experts with per-expert episode series")
      ->capture_default_str();
  app.add_option("--capture-http", o.capture.http,
                 "GPU capture endpoint HOST:PORT, loopback only: POST "
                 "/capture?model=NAME[&steps=N|&ms=T] (default: off)");
  app.add_flag("--no-capture-on-episodes", no_capture_on_episodes,
               "do not ask agents for a GPU capture when an episode opens");
  app.add_option("--capture-steps", o.capture.steps, "steps per GPU capture")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--capture-cooldown", capture_cooldown,
                 "per agent, no new GPU capture request within this of the last one")
      ->capture_default_str();
  if (auto status = cli::parse(app, kProgram, argc, argv)) return *status;
  o.capture.on_episodes = !no_capture_on_episodes;
  if (auto ns = parse_duration_ns(capture_cooldown))
    o.capture.cooldown_ns = *ns;
  else
    return usage("--capture-cooldown \"" + capture_cooldown + "\" is not a duration (e.g. 30s)");

  // Addresses are checked here, so that a malformed one is a usage error (2)
  // and only a failure to bind one is a runtime failure (1).
  auto check_endpoint = [](const char* flag, const std::string& text) {
    std::string error;
    if (text.empty() || parse_endpoint(text, error)) return true;
    usage(std::string(flag) + " " + text + ": " + error);
    return false;
  };
  for (const auto& l : o.listen)
    if (!check_endpoint("--listen", l)) return cli::kUsage;
  if (!check_endpoint("--metrics", o.metrics) || !check_endpoint("--viewer", o.viewer) ||
      !check_endpoint("--capture-http", o.capture.http))
    return cli::kUsage;
  auto window_ns = parse_duration_ns(window);
  if (!window_ns) return usage("--window \"" + window + "\" is not a duration (e.g. 10s, 200ms)");
  o.aggregation.window_ns = *window_ns;
  for (auto [flag, text, out] :
       {std::tuple{"--trace-max-age", &trace_max_age, &o.trace_max_age_ns},
        std::tuple{"--trace-block-age", &trace_block_age, &o.trace_block_age_ns}}) {
    if (text->empty()) continue;
    auto ns = parse_duration_ns(*text);
    if (!ns)
      return usage(std::string(flag) + " \"" + *text + "\" is not a duration (e.g. 24h, 1s)");
    *out = *ns;
  }
  if (o.aggregation.windows == 0 ||
      o.aggregation.hot_clear_threshold > o.aggregation.hot_threshold ||
      o.aggregation.cold_clear_threshold < o.aggregation.cold_threshold)
    return usage(
        "need --hot-windows >= 1, hot-clear <= hot threshold, cold-clear >= cold threshold");
  if (o.aggregation.hot_rank_clear_threshold > o.aggregation.hot_rank_threshold ||
      o.aggregation.hot_rank_threshold <= 1.0 || o.aggregation.eplb_redundant < -1)
    return usage(
        "need 1 < --hot-rank-threshold, --hot-rank-clear-threshold <= it, --eplb-redundant >= -1");
  if (o.aggregation.ep_top_pairs > 64 || !(o.aggregation.eplb_move_bytes_per_second > 0.0))
    return usage("need --ep-top-pairs <= 64 and --eplb-move-bandwidth > 0");
  if (!placement_file.empty()) {
    Placement p;
    std::string error;
    if (!load_placement_file(placement_file, p, error)) return failure("--placement " + error);
    o.aggregation.placement = std::move(p);
  }
  if (!token_file.empty()) {
    std::ifstream in(token_file);
    if (!in)
      return failure("--auth-token-file " + token_file + ": cannot read: " + std::strerror(errno));
    std::getline(in, o.auth_token);
    while (!o.auth_token.empty() && (o.auth_token.back() == '\r' || o.auth_token.back() == ' '))
      o.auth_token.pop_back();
    if (o.auth_token.empty()) return failure("--auth-token-file " + token_file + " holds no token");
  }

  Collector collector(std::move(o));
  std::string error;
  if (!collector.start(error)) return failure(error);  // names the flag, the address and the reason
  for (const auto& line : collector.listening_lines()) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  collector.run(true);
  log_line("stopped");
  return cli::kSuccess;
}
