// The viewer's LiveClient asking a running collector for stored history:
// fetch_range() over the live connection, the reply folded into a TraceModel
// (merged spans named "(merged spans)"), and the RangeEnd seen by range_state().
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "inferscope/collector/collector.hpp"
#include "inferscope/viewer/live_client.hpp"
#include "inferscope/viewer/trace_model.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace viewer = inferscope::viewer;
namespace fs = std::filesystem;

TEST(RangeClient, LiveClientFetchesStoredHistoryIntoTheModel) {
  const fs::path dir =
      fs::temp_directory_path() / ("inferscope-range-client-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  CollectorOptions o;
  o.listen = {"tcp://127.0.0.1:0"};
  o.metrics = "";
  o.viewer = "127.0.0.1:0";
  o.trace_dir = dir.string();
  o.trace_block_age_ns = 20'000'000;
  o.tick = std::chrono::milliseconds(10);
  Collector c(o);
  std::string error;
  ASSERT_TRUE(c.start(error)) << error;
  uint16_t ingest = 0, port = 0;
  for (const auto& line : c.listening_lines()) {
    const auto p = static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
    if (line.rfind("listening ingest", 0) == 0) ingest = p;
    if (line.rfind("listening viewer", 0) == 0) port = p;
  }
  std::thread loop([&] { c.run(); });
  {
    // History: 4000 spans of 1 us, 1 us apart, on one thread, stored before the viewer comes.
    FakeAgent a(ingest);
    a.send({make_hello("m", 0, 1, 4), wire::StringDef{1, "step"}});
    std::vector<wire::Record> spans;
    for (int i = 0; i < 4000; ++i) {
      wire::Span s;
      s.track_id = 9;
      s.name_id = 1;
      s.start_ns = 1'000'000'000 + int64_t{i} * 2000;
      s.end_ns = s.start_ns + 1000;
      spans.push_back(s);
    }
    a.send(spans);

    viewer::LiveOptions lo;
    lo.port = port;
    viewer::LiveClient client(lo);
    client.start();
    ASSERT_TRUE(eventually([&] { return client.connected(); }));
    // The history is queryable once stored and indexed (block age + a tick): ask
    // until all of it is there rather than guessing how long a busy machine takes.
    uint64_t query = 0;
    std::vector<std::pair<uint32_t, wire::Record>> got;
    ASSERT_TRUE(eventually(
        [&] {
          got.clear();
          client.drain(got, 1'000'000);  // replies to earlier, incomplete attempts
          got.clear();
          query = client.fetch_range(0, 2'000'000'000, 100'000);  // 100 us per pixel: merged
          if (!eventually([&] { return !client.range_state().in_flight; },
                          std::chrono::seconds(30)))
            return false;
          return client.range_state().last_end.spans == 4000u;
        },
        std::chrono::seconds(30)))
        << "the stored history never reached 4000 spans";
    const auto st = client.range_state();
    EXPECT_EQ(st.last_end.query_id, query);
    EXPECT_EQ(st.last_end.status, wire::RangeStatus::kOk) << st.last_end.message;
    EXPECT_EQ(st.last_end.spans, 4000u);
    EXPECT_GT(st.last_end.merged_spans, 0u);
    EXPECT_LT(st.last_end.records, 200u) << "8 ms of spans at 100 us per pixel";

    viewer::TraceModel model;
    client.drain(got, 1'000'000);
    for (auto& [src, rec] : got) model.add(src, rec);
    model.finalize();
    EXPECT_EQ(model.span_count(), st.last_end.records);
    EXPECT_NE(model.find_name("(merged spans)"), 0u);
    EXPECT_EQ(model.min_ns(), 1'000'000'000);
    client.stop();
  }
  c.stop();
  loop.join();
  fs::remove_all(dir);
}
