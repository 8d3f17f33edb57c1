// The reference engine serves a throughput run while its collector is killed
// (kill -9) and a new one starts on the same port: the engine finishes every
// request, its agent reconnects within a few seconds, and the new collector
// sees the agent's books. The engine's throughput with and without the fault
// is printed for docs/reliability.md (measured, not asserted).
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "harness.hpp"

namespace inferscope::reliability {
namespace {

constexpr int kRequests = 1200;

std::vector<std::string> engine_args(const std::string& collector, const std::string& summary) {
  return {"--model",
          source_dir() + "/reference_engine/models/tiny.json",
          "--workload",
          "skewed-multimodal",
          "--offline",
          "--requests",
          std::to_string(kRequests),
          "--seed",
          "5",
          "--threads",
          "1",
          "--collector",
          collector,
          "--quiet",
          "--summary-json",
          summary};
}

struct EngineRun {
  int exit_code = -1;
  nlohmann::json summary;
  uint64_t telemetry_sent = 0, telemetry_dropped = 0;
  double decode_tokens_per_s = 0;
};

EngineRun finish(Child& engine, const std::string& summary_path) {
  EngineRun r;
  const std::string out = engine.read_all(60s);
  r.exit_code = engine.wait(10s).value_or(-1);
  std::ifstream in(summary_path);
  if (in) r.summary = nlohmann::json::parse(in, nullptr, false);
  std::smatch m;
  if (std::regex_search(out, m, std::regex(R"(telemetry .*: (\d+) records sent, (\d+) dropped)"))) {
    r.telemetry_sent = std::stoull(m[1]);
    r.telemetry_dropped = std::stoull(m[2]);
  }
  if (r.summary.is_object() && r.summary.contains("throughput"))
    r.decode_tokens_per_s = r.summary["throughput"].value("decode_tokens_per_s", 0.0);
  return r;
}

TEST(EngineRestart, EngineServesThroughACollectorKillAndReconnects) {
  if (engine_binary().empty()) GTEST_SKIP() << "inferscope-engine is not built";
  TempDir dir;

  // Baseline: the same run with a collector that stays up.
  EngineRun baseline;
  {
    CollectorProcess c(0, {});
    ASSERT_TRUE(c.ok()) << c.error();
    Child engine(engine_binary(), engine_args(c.ingest_address(), dir.path() + "/baseline.json"));
    baseline = finish(engine, dir.path() + "/baseline.json");
    ASSERT_EQ(baseline.exit_code, 0);
  }

  auto a = std::make_unique<CollectorProcess>(0, std::vector<std::string>{});
  ASSERT_TRUE(a->ok()) << a->error();
  const uint16_t port = a->ports().ingest;
  Child engine(engine_binary(), engine_args(a->ingest_address(), dir.path() + "/run.json"));
  ASSERT_TRUE(eventually(
      [&] {
        return sum_series(scrape(a->ports().metrics), "inferscope_agent_connected",
                          {"model=\"tiny\""}) == 1;
      },
      30s))
      << "the engine's agent never connected";
  std::this_thread::sleep_for(300ms);
  a->child().signal(SIGKILL);
  ASSERT_TRUE(a->child().wait(30s).has_value());
  a.reset();
  std::this_thread::sleep_for(300ms);

  CollectorProcess b(port, {});
  ASSERT_TRUE(b.ok()) << b.error();
  const auto up = Clock::now();
  // The agent's reconnect backoff is capped at 2 s by default.
  const bool reconnected = eventually(
      [&] {
        return sum_series(scrape(b.ports().metrics), "inferscope_agent_connected",
                          {"model=\"tiny\""}) == 1;
      },
      30s);
  const double reconnect_ms = std::chrono::duration<double, std::milli>(Clock::now() - up).count();
  const EngineRun run = finish(engine, dir.path() + "/run.json");
  ASSERT_EQ(run.exit_code, 0);
  ASSERT_TRUE(run.summary.is_object());
  EXPECT_EQ(run.summary["requests"]["finished"], kRequests)
      << "the engine lost requests to a collector fault";
  EXPECT_EQ(run.summary["requests"]["rejected"], 0);

  Series m;
  if (reconnected) {
    // The final health report arrives as the engine exits.
    EXPECT_TRUE(eventually(
        [&] {
          m = scrape(b.ports().metrics);
          return sum_series(m, "inferscope_agent_reconnects_total", {"model=\"tiny\""}) >= 1 &&
                 sum_series(m, "inferscope_agent_records_sent_total", {"model=\"tiny\""}) >=
                     static_cast<double>(run.telemetry_sent);
        },
        30s));
    EXPECT_EQ(sum_series(m, "inferscope_agent_reconnects_total", {"model=\"tiny\""}), 1.0);
    EXPECT_EQ(sum_series(m, "inferscope_agent_records_dropped_total", {"model=\"tiny\""}),
              static_cast<double>(run.telemetry_dropped));
  }
  std::printf(
      "[figures] engine through a collector kill -9: reconnected %.0f ms after the new collector "
      "listened; %d requests finished; decode %.0f tok/s (baseline without the fault %.0f tok/s, "
      "ratio %.2f); agent sent %llu, dropped %llu\n",
      reconnect_ms, run.summary["requests"]["finished"].get<int>(), run.decode_tokens_per_s,
      baseline.decode_tokens_per_s,
      baseline.decode_tokens_per_s > 0 ? run.decode_tokens_per_s / baseline.decode_tokens_per_s : 0,
      (unsigned long long)run.telemetry_sent, (unsigned long long)run.telemetry_dropped);
  EXPECT_TRUE(reconnected) << "the engine's agent did not reconnect";
}

}  // namespace
}  // namespace inferscope::reliability

namespace inferscope::reliability {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The collector is down for the whole run: the engine still serves, and at exit
// it names what was not delivered and where it was meant to go.
TEST(EngineRestart, EngineWarnsAtExitWhenTelemetryWasNotDelivered) {
  if (engine_binary().empty()) GTEST_SKIP() << "inferscope-engine is not built";
  TempDir dir;
  CollectorProcess probe(0, {});  // a port that was free a moment ago
  ASSERT_TRUE(probe.ok()) << probe.error();
  const std::string address = probe.ingest_address();
  probe.child().kill_and_reap();
  ChildOptions co;
  co.stderr_path = dir.path() + "/stderr.txt";
  auto args = engine_args(address, dir.path() + "/summary.json");
  args[std::find(args.begin(), args.end(), "--requests") - args.begin() + 1] = "50";
  Child engine(engine_binary(), args, co);
  const EngineRun run = finish(engine, dir.path() + "/summary.json");
  ASSERT_EQ(run.exit_code, 0);
  ASSERT_TRUE(run.summary.is_object());
  const auto& t = run.summary["telemetry"];
  const uint64_t undelivered = t["records_undelivered"].get<uint64_t>();
  EXPECT_GT(undelivered, 0u);
  EXPECT_EQ(t["records_delivered"].get<uint64_t>(), 0u);
  EXPECT_EQ(
      t["records_recorded"].get<uint64_t>(),
      undelivered + t["records_dropped"].get<uint64_t>() + t["records_unconfirmed"].get<uint64_t>())
      << "every record the engine's agent accepted is in a book";
  const std::string err = slurp(co.stderr_path);
  EXPECT_NE(err.find("warning: " + std::to_string(undelivered) +
                     " telemetry records were not delivered to " + address),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("never connected"), std::string::npos) << err;
}

}  // namespace
}  // namespace inferscope::reliability
