// inferscope-export as a user runs it: the Perfetto format chosen by the output's
// extension, several trace directories into one trace, --list-episodes and
// --episode, and clear errors for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "inferscope/collector/trace_store.hpp"
#include "perfetto_decoded.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
using inferscope::testing::decode_perfetto;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

struct CliRun {
  int status = -1;
  std::string output;  // stdout and stderr
};

CliRun run(const std::string& args) {
  CliRun r;
  FILE* p = ::popen((std::string(INFERSCOPE_EXPORT_BIN) + " " + args + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// A node with one span per 10 ms over 1 s, and (optionally) one closed episode.
void make_node(const fs::path& dir, uint32_t rank, const std::string& host, bool episode) {
  TraceStoreOptions o;
  o.dir = dir.string();
  o.background = false;
  TraceStore store(o, nullptr, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  auto h = make_hello("demo", rank, 4, 4);
  h.host = host;
  h.instance = host + ":1";
  store.write(frame_from(1, {h, wire::StringDef{1, "step"}}), 0);
  for (int i = 0; i < 100; ++i) {
    wire::Span s;
    s.track_id = 7;
    s.name_id = 1;
    s.start_ns = int64_t(i) * 10'000'000;
    s.end_ns = s.start_ns + 1'000'000;
    store.write(frame_from(1, {s}), 0);
    if (i % 10 == 9) store.flush();
  }
  if (episode)
    store.write(frame_from(0, {wire::AlertEpisode{wire::AlertKind::kHotExpert, rank, 1, 3,
                                                  500'000'000, 520'000'000, 0.6f, 2.4f, "demo"}}),
                0);
  store.flush();
}

}  // namespace

TEST(ExportCli, PerfettoByExtensionMergesNodesAndExportsAnEpisode) {
  TempDir root("inferscope-export-cli");
  const fs::path a = root.path / "node-a", b = root.path / "node-b";
  make_node(a, 0, "hostA", true);
  make_node(b, 1, "hostB", false);

  const fs::path all = root.path / "all.pftrace";
  CliRun r = run(a.string() + " " + b.string() + " -o " + all.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("packets"), std::string::npos) << r.output;
  auto d = decode_perfetto(inferscope::testing::read_file(all.string()));
  for (const auto& p : d.problems) ADD_FAILURE() << p;
  EXPECT_NE(d.track_named("demo rank 0 (hostA:1) @ node-a"), nullptr);
  EXPECT_NE(d.track_named("demo rank 1 (hostB:1) @ node-b"), nullptr);
  EXPECT_EQ(d.slices_named("step").size(), 200u);

  CliRun list = run(a.string() + " " + b.string() + " --list-episodes");
  ASSERT_EQ(list.status, 0) << list.output;
  EXPECT_NE(list.output.find("hot_expert-r0-l1-e3-500000000  node node-a"), std::string::npos)
      << list.output;

  // The episode is 500..520 ms; with a 15 ms margin the spans at 490..530 ms
  // (those that overlap [485, 535] ms) are kept, on both nodes.
  const fs::path ep = root.path / "episode.perfetto-trace";
  r = run(a.string() + " " + b.string() +
          " --episode hot_expert-r0-l1-e3-500000000 --margin 0.015 -o " + ep.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("skipped by the time index"), std::string::npos);
  d = decode_perfetto(inferscope::testing::read_file(ep.string()));
  for (const auto& p : d.problems) ADD_FAILURE() << p;
  std::vector<int64_t> starts;
  for (const auto* s : d.slices_named("step")) starts.push_back(s->start);
  std::sort(starts.begin(), starts.end());
  EXPECT_EQ(starts, (std::vector<int64_t>{490'000'000, 490'000'000, 500'000'000, 500'000'000,
                                          510'000'000, 510'000'000, 520'000'000, 520'000'000,
                                          530'000'000, 530'000'000}));
  EXPECT_EQ(d.slices_named("hot_expert").size(), 1u);
}

TEST(ExportCli, BadInputSaysWhy) {
  TempDir root("inferscope-export-cli-bad");
  const fs::path a = root.path / "a", b = root.path / "b";
  make_node(a, 0, "hostA", false);
  make_node(b, 1, "hostB", false);
  CliRun r = run(a.string() + " --episode nonsense -o " + (root.path / "x.pftrace").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("is not <kind>-r<rank>"), std::string::npos) << r.output;
  r = run(a.string() + " --episode hot_expert-r0-l1-e3-5 -o " + (root.path / "x.pftrace").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("no stored alert episode"), std::string::npos) << r.output;
  r = run(a.string() + " " + b.string() + " -o " + (root.path / "x.json").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--format perfetto"), std::string::npos) << r.output;
  r = run(a.string() + " -o " + (root.path / "x.bin").string() + " --format protobuf");
  EXPECT_EQ(r.status, 2) << r.output;
  r = run((root.path / "missing").string() + " -o " + (root.path / "x.pftrace").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("no such trace file or directory"), std::string::npos) << r.output;
}
