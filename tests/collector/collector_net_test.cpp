// The whole collector in-process over real loopback sockets: several fake
// agents (real wire frames over TCP and a Unix socket), the real prometheus-cpp
// exposer fetched over HTTP, and a viewer on the live API.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "inferscope/collector/collector.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/trace_file.hpp"
#include "test_client.hpp"

using namespace inferscope::collector;
using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kW = 200'000'000;

uint16_t port_of(const std::string& line) {
  return static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
}

// A Collector on its own thread with every port picked by the kernel.
struct Running {
  std::unique_ptr<Collector> collector;
  std::thread thread;
  uint16_t ingest = 0, metrics = 0, viewer = 0;
  std::string unix_path;

  explicit Running(CollectorOptions o, bool with_unix = false) {
    o.listen = {"tcp://127.0.0.1:0"};
    if (with_unix) {
      unix_path =
          (fs::temp_directory_path() / ("inferscope-test-" + std::to_string(::getpid()) + ".sock"))
              .string();
      o.listen.push_back("unix://" + unix_path);
    }
    o.metrics = "127.0.0.1:0";
    o.viewer = "127.0.0.1:0";
    o.tick = std::chrono::milliseconds(0);  // windows by record timestamps only
    collector = std::make_unique<Collector>(std::move(o));
    std::string error;
    if (!collector->start(error)) throw std::runtime_error(error);
    for (const auto& line : collector->listening_lines()) {
      if (line.rfind("listening ingest tcp://", 0) == 0) ingest = port_of(line);
      if (line.rfind("listening metrics ", 0) == 0) metrics = port_of(line);
      if (line.rfind("listening viewer ", 0) == 0) viewer = port_of(line);
    }
    thread = std::thread([this] { collector->run(); });
  }
  ~Running() {
    collector->stop();
    thread.join();
  }
  std::map<std::string, double> scrape() { return parse_exposition(http_get(metrics)); }
};

// Reads frames from the viewer API until pred(records so far) holds.
struct FakeViewer {
  asio::io_context io;
  asio::ip::tcp::socket socket{io};
  std::vector<uint8_t> buf;
  std::vector<std::pair<uint32_t, wire::Record>> records;  // (source id, record)

  explicit FakeViewer(uint16_t port) {
    socket.connect({asio::ip::make_address("127.0.0.1"), port});
  }

  template <typename Pred>
  bool read_until(Pred pred, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    socket.non_blocking(true);
    wire::FrameDecoder dec;
    uint8_t chunk[65536];
    while (!pred(records)) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::error_code ec;
      size_t n = socket.read_some(asio::buffer(chunk), ec);
      if (ec == asio::error::would_block) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      if (ec) return false;
      buf.insert(buf.end(), chunk, chunk + n);
      size_t size = 0;
      while (dec.frame_size(buf, size).ok()) {
        EXPECT_TRUE(dec.open(std::span<const uint8_t>(buf).first(size)).ok());
        wire::Record r;
        while (dec.next(r)) records.emplace_back(dec.header().source_id, r);
        buf.erase(buf.begin(), buf.begin() + static_cast<long>(size));
      }
    }
    return true;
  }
};

size_t count_kind(const std::vector<std::pair<uint32_t, wire::Record>>& recs, wire::RecordKind k) {
  size_t n = 0;
  for (auto& [s, r] : recs) n += wire::kind_of(r) == k;
  return n;
}

}  // namespace

TEST(CollectorNet, SeveralAgentsOverTcpAndUnixAreAggregated) {
  CollectorOptions o;
  o.aggregation.window_ns = kW;
  Running c(o, true);
  FakeAgent a(c.ingest), b(c.ingest), u(c.unix_path);
  a.send({make_hello("m", 0, 2, 4)});
  b.send({make_hello("m", 1, 2, 4)});
  u.send({make_hello("m", 2, 2, 4)});
  for (int i = 0; i < 10; ++i) {
    a.send({make_load(0, 1000 + i, {4, 3, 2, 1})});
    b.send({make_load(1, 1000 + i, {1, 1, 1, 1}, 1)});
    u.send({make_load(0, 1000 + i, {2, 2, 2, 2})});
  }
  ASSERT_TRUE(eventually([&] {
    auto m = c.scrape();
    return find_series(m, "inferscope_moe_routed_tokens_total", {"rank=\"2\"", "layer=\"0\""}) ==
               80.0 &&
           find_series(m, "inferscope_moe_routed_tokens_total", {"rank=\"0\"", "layer=\"0\""}) ==
               100.0 &&
           find_series(m, "inferscope_moe_dropped_tokens_total", {"rank=\"1\"", "layer=\"1\""}) ==
               10.0;
  }));
  auto m = c.scrape();
  EXPECT_EQ(find_series(m, "inferscope_collector_connections"), 3.0);
  EXPECT_EQ(find_series(m, "inferscope_collector_connections_total"), 3.0);
  EXPECT_EQ(find_series(m, "inferscope_collector_frames_total"), 33.0);
  EXPECT_EQ(find_series(m, "inferscope_collector_records_total", {"kind=\"expert_load\""}), 30.0);
  EXPECT_GT(find_series(m, "inferscope_collector_bytes_received_total").value_or(0), 1000.0);
}

TEST(CollectorNet, MalformedFrameClosesOnlyThatConnection) {
  CollectorOptions o;
  Running c(o);
  FakeAgent good(c.ingest), bad(c.ingest), huge(c.ingest);
  good.send({make_hello("m", 0, 1, 4)});
  bad.send({make_hello("m", 1, 1, 4)});
  huge.send({make_hello("m", 2, 1, 4)});
  // Flip one payload byte: the CRC no longer matches.
  auto frame = frame_of({make_load(0, 5, {1, 2, 3, 4})});
  frame.back() ^= 0x5a;
  bad.send(frame);
  EXPECT_TRUE(bad.closed_by_peer());
  // A header announcing a 64 MiB frame is refused from the header alone.
  auto big = frame_of({make_load(0, 5, {1, 2, 3, 4})});
  const uint32_t payload = 64u << 20;
  std::memcpy(big.data() + 8, &payload, 4);
  huge.send(std::vector<uint8_t>(big.begin(), big.begin() + wire::kFrameHeaderBytes));
  EXPECT_TRUE(huge.closed_by_peer());
  // The good agent is unaffected.
  good.send({make_load(0, 5, {1, 2, 3, 4})});
  ASSERT_TRUE(eventually([&] {
    return find_series(c.scrape(), "inferscope_moe_routed_tokens_total", {"rank=\"0\""}) == 10.0;
  }));
  EXPECT_FALSE(good.closed_by_peer(std::chrono::milliseconds(100)));
  auto m = c.scrape();
  EXPECT_EQ(find_series(m, "inferscope_collector_rejected_frames_total", {"reason=\"checksum\""}),
            1.0);
  EXPECT_EQ(
      find_series(m, "inferscope_collector_rejected_frames_total", {"reason=\"frame_too_large\""}),
      1.0);
  EXPECT_EQ(find_series(m, "inferscope_collector_connections"), 1.0);
  // Garbage that is not a frame at all.
  FakeAgent garbage(c.ingest);
  garbage.send(std::vector<uint8_t>(64, 0x41));
  EXPECT_TRUE(garbage.closed_by_peer());
  EXPECT_TRUE(eventually([&] {
    return find_series(c.scrape(), "inferscope_collector_rejected_frames_total",
                       {"reason=\"bad_magic\""}) == 1.0;
  }));
}

TEST(CollectorNet, SilentAndTrickleAndTornPeersAreClosedAndCounted) {
  CollectorOptions o;
  o.limits.hello_timeout = std::chrono::milliseconds(300);
  o.limits.frame_timeout = std::chrono::milliseconds(300);
  Running c(o);
  FakeAgent silent(c.ingest), trickle(c.ingest), good(c.ingest);
  good.send({make_hello("m", 0, 1, 4)});
  trickle.send({make_hello("m", 1, 1, 4)});
  auto half = frame_of({make_load(0, 5, {1, 2, 3, 4})});
  half.resize(half.size() / 2);
  trickle.send(half);  // a frame that never completes
  EXPECT_TRUE(silent.closed_by_peer());
  EXPECT_TRUE(trickle.closed_by_peer());
  EXPECT_TRUE(eventually([&] {
    return find_series(c.scrape(), "inferscope_collector_rejected_frames_total",
                       {"reason=\"timeout\""}) == 2.0;
  }));
  {
    FakeAgent torn(c.ingest);
    torn.send({make_hello("m", 2, 1, 4)});
    torn.send(half);
  }  // disconnects inside the frame
  EXPECT_TRUE(eventually([&] {
    return find_series(c.scrape(), "inferscope_collector_rejected_frames_total",
                       {"reason=\"truncated\""}) == 1.0;
  }));
  // The good agent, idle between whole frames, stays.
  EXPECT_FALSE(good.closed_by_peer(std::chrono::milliseconds(100)));
}

TEST(CollectorNet, ConnectionCapRefusesTheExtraAgent) {
  CollectorOptions o;
  o.max_connections = 1;
  Running c(o);
  FakeAgent first(c.ingest);
  first.send({make_hello("m", 0, 1, 4)});
  ASSERT_TRUE(eventually(
      [&] { return find_series(c.scrape(), "inferscope_collector_connections") == 1.0; }));
  FakeAgent second(c.ingest);
  EXPECT_TRUE(second.closed_by_peer());
  EXPECT_EQ(find_series(c.scrape(), "inferscope_collector_rejected_frames_total",
                        {"reason=\"connection_limit\""}),
            1.0);
}

TEST(CollectorNet, ViewerGetsReplayThenLiveFramesAndAlerts) {
  CollectorOptions o;
  o.aggregation.window_ns = kW;
  Running c(o);
  FakeAgent a(c.ingest);
  a.send({make_hello("m", 4, 1, 4), wire::StringDef{1, "decode"}, wire::StringDef{2, "prefill"}});
  // A hot expert 0 over 4 windows -> an episode opens.
  for (int w = 0; w < 4; ++w) a.send({make_load(0, w * kW + 1, {70, 10, 10, 10})});
  ASSERT_TRUE(eventually([&] {
    return find_series(c.scrape(), "inferscope_moe_expert_episode",
                       {"expert=\"0\"", "kind=\"hot\""}) == 1.0;
  }));
  FakeViewer v(c.viewer);
  ASSERT_TRUE(v.read_until([](auto& r) {
    return count_kind(r, wire::RecordKind::kHello) == 1 &&
           count_kind(r, wire::RecordKind::kStringDef) == 2 &&
           count_kind(r, wire::RecordKind::kAlert) == 1;
  }));
  EXPECT_EQ(v.records[0].first, 1u);  // source 1's hello first
  EXPECT_EQ(std::get<wire::Hello>(v.records[0].second).rank, 4u);
  for (auto& [src, r] : v.records)
    if (wire::kind_of(r) == wire::RecordKind::kAlert) {
      EXPECT_EQ(src, wire::kCollectorSource);
      EXPECT_EQ(std::get<wire::AlertEpisode>(r).expert, 0u);
    }
  // Live: a new span arrives with the agent's source id.
  wire::Span s;
  s.name_id = 1;
  s.start_ns = 10;
  s.end_ns = 20;
  a.send({s});
  ASSERT_TRUE(v.read_until([](auto& r) { return count_kind(r, wire::RecordKind::kSpan) == 1; }));
  EXPECT_EQ(v.records.back().first, 1u);
  EXPECT_EQ(std::get<wire::Span>(v.records.back().second), s);
}

TEST(CollectorNet, ViewerNeedsTheTokenWhenOneIsSet) {
  CollectorOptions o;
  o.auth_token = "t0ken";
  Running c(o);
  FakeAgent a(c.ingest);
  auto h = make_hello("m", 0, 1, 4);
  h.auth_token = "t0ken";
  a.send({h});
  {
    FakeViewer v(c.viewer);
    wire::Hello vh;
    vh.service = "inferscope-viewer";
    vh.auth_token = "nope";
    asio::write(v.socket, asio::buffer(frame_of({vh})));
    EXPECT_FALSE(v.read_until([](auto& r) { return !r.empty(); }, std::chrono::milliseconds(500)));
  }
  FakeViewer v(c.viewer);
  wire::Hello vh;
  vh.service = "inferscope-viewer";
  vh.auth_token = "t0ken";
  asio::write(v.socket, asio::buffer(frame_of({vh})));
  ASSERT_TRUE(v.read_until([](auto& r) { return count_kind(r, wire::RecordKind::kHello) == 1; }));
  EXPECT_EQ(std::get<wire::Hello>(v.records[0].second).auth_token, "");  // never forwarded
}

TEST(CollectorNet, TraceDirHoldsReplayableSegments) {
  const fs::path dir =
      fs::temp_directory_path() / ("inferscope-net-trace-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  {
    CollectorOptions o;
    o.trace_dir = dir.string();
    Running c(o);
    FakeAgent a(c.ingest);
    a.send({make_hello("m", 0, 1, 4), wire::StringDef{1, "decode"}});
    for (int i = 0; i < 20; ++i) a.send({make_load(0, i, {1, 2, 3, 4})});
    ASSERT_TRUE(eventually(
        [&] { return find_series(c.scrape(), "inferscope_collector_frames_total") == 21.0; }));
  }  // stop() flushes and closes the segment
  auto segments = TraceStore::list_segments(dir.string());
  ASSERT_EQ(segments.size(), 1u);
  wire::TraceFileReader reader;
  ASSERT_TRUE(reader.open(segments[0])) << reader.error();
  std::span<const uint8_t> frame;
  size_t loads = 0, hellos = 0;
  while (reader.next_frame(frame)) {
    std::vector<wire::Record> recs;
    ASSERT_TRUE(wire::decode_frame(frame, recs).ok());
    for (auto& r : recs) {
      loads += wire::kind_of(r) == wire::RecordKind::kExpertLoad;
      hellos += wire::kind_of(r) == wire::RecordKind::kHello;
    }
  }
  EXPECT_EQ(loads, 20u);
  EXPECT_EQ(hellos, 1u);
  fs::remove_all(dir);
}

// Agents number their data frames and write again what was not acknowledged
// (wire::FrameSequence). A collector skips a frame it has already applied, on
// the same run and, restarted on the same --trace-dir, when its predecessor
// stored it: every record is counted and stored once.
TEST(CollectorNet, RestartOnTheSameTraceDirSkipsFramesItsPredecessorStored) {
  TempDir dir("inferscope-net-sequences");
  CollectorOptions o;
  o.trace_dir = dir.path.string();
  const uint64_t stream = 0x5eed5eed5eedull;
  auto data = [&](uint64_t seq) {
    return std::vector<wire::Record>{wire::FrameSequence{stream, seq},
                                     wire::CounterSample{static_cast<int64_t>(seq), 1, false, 1.0}};
  };
  auto counters = [](Running& c) {
    return find_series(c.scrape(), "inferscope_collector_records_total", {"kind=\"counter\""});
  };
  auto duplicates = [](Running& c) {
    return find_series(c.scrape(), "inferscope_collector_duplicate_frames_total");
  };
  {
    Running c(o);
    FakeAgent a(c.ingest);
    a.send({make_hello("m", 0, 1, 4), wire::StringDef{1, "c"}});
    for (uint64_t seq = 1; seq <= 3; ++seq) a.send(data(seq));
    a.send(data(2));  // written again after a (pretend) lost acknowledgement
    ASSERT_TRUE(eventually([&] { return duplicates(c) == 1.0; }));
    EXPECT_EQ(counters(c), 3.0);
  }  // stop() flushes the store
  {
    Running c(o);  // a restart on the same directory
    FakeAgent a(c.ingest);
    a.send({make_hello("m", 0, 1, 4), wire::StringDef{1, "c"}});
    for (uint64_t seq = 2; seq <= 5; ++seq) a.send(data(seq));  // 2 and 3 were stored before
    ASSERT_TRUE(eventually([&] { return counters(c) == 2.0; })) << counters(c).value_or(-1);
    EXPECT_EQ(duplicates(c), 2.0);
  }
  size_t stored = 0;
  for (const auto& path : TraceStore::list_segments(dir.path.string())) {
    wire::TraceFileReader reader;
    ASSERT_TRUE(reader.open(path)) << reader.error();
    std::span<const uint8_t> frame;
    while (reader.next_frame(frame)) {
      std::vector<wire::Record> recs;
      ASSERT_TRUE(wire::decode_frame(frame, recs).ok());
      for (auto& r : recs) stored += wire::kind_of(r) == wire::RecordKind::kCounter;
    }
  }
  EXPECT_EQ(stored, 5u) << "each record once in the trace directory";
}

TEST(CollectorNet, MetricsPassPromtool) {
  if (std::system("command -v promtool >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "promtool not installed";
  CollectorOptions o;
  o.aggregation.window_ns = kW;
  Running c(o);
  FakeAgent a(c.ingest);
  a.send({make_hello("m", 0, 2, 8)});
  for (int w = 0; w < 5; ++w)
    a.send({make_load(0, w * kW + 1, {50, 5, 5, 5, 5, 5, 5, 0}),
            make_load(1, w * kW + 2, {5, 5, 5, 5, 5, 5, 5, 5})});
  wire::RequestEvent rq;
  rq.arrival_ns = 1;
  rq.first_token_ns = 1000;
  rq.finish_ns = 100000;
  rq.output_tokens = 4;
  // An agent that detached CUPTI: the inferscope_agent_gpu_cupti_events_total series too.
  wire::AgentHealth health;
  health.timestamp_ns = 6;
  health.gpu.mode = 1;
  health.gpu.cupti_detaches = 3;
  health.gpu.cupti_reattaches = 2;
  health.gpu.cupti_detach_errors = 1;
  a.send({rq, wire::MemorySample{5, 0, wire::MemoryKind::kKvCache, 10, 100}, health});
  ASSERT_TRUE(eventually([&] {
    const auto m = c.scrape();
    return find_series(m, "inferscope_requests_total", {"status=\"ok\""}) == 1.0 &&
           find_series(m, "inferscope_agent_gpu_cupti_events_total", {"event=\"detach_error\""}) ==
               1.0;
  }));
  const std::string text = http_get(c.metrics);
  EXPECT_NE(
      text.find(
          "inferscope_agent_gpu_cupti_events_total{event=\"detach\",model=\"m\",rank=\"0\"} 3"),
      std::string::npos)
      << text;
  const fs::path file =
      fs::temp_directory_path() / ("inferscope-metrics-" + std::to_string(::getpid()) + ".txt");
  std::ofstream(file) << text;
  const std::string cmd =
      "promtool check metrics < " + file.string() + " > " + file.string() + ".out 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream out(file.string() + ".out");
  std::string report((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << report;
  EXPECT_NE(text.find("inferscope_moe_expert_episode{"), std::string::npos);
  fs::remove(file);
  fs::remove(file.string() + ".out");
}
