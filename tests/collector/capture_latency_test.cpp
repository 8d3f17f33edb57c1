// Episode -> capture landed (issue 19 part 6; collector/src/capture/capture_latency.hpp).
//
// End to end on a real collector (ingest, POST /capture, trace store, /metrics)
// with a wire-level agent double: the real agent cannot capture without CUPTI,
// so the double answers a capture request the way an agent with CUPTI does -
// health reports counting the capture started and then complete, and GPU
// kernel spans tagged `capture` = the capture id, some of them after the
// report that says complete (the agent counts a window complete before CUPTI's
// last flush). The latency histogram must hold one observation per stage, in
// the order started <= first_span <= stored, and when `stored` is observed
// every span the double sent must already be readable from the trace files.
// No wall-clock bounds: only presence, counts and order.
//
// Then the captures that never land: refused by the agent, an agent that
// disconnects, and (on the tracker alone, with its clock in the test's hands)
// the timeout reasons and the bounded table.
#include "../../collector/src/capture/capture_latency.hpp"

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <asio.hpp>
#include <cstring>
#include <functional>
#include <thread>

#include "inferscope/collector/collector.hpp"
#include "inferscope/collector/trace_scan.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/ack.hpp"
#include "inferscope/wire/capture.hpp"
#include "running_collector.hpp"
#include "test_client.hpp"

namespace inferscope::collector::testing {
namespace {

// [SECTION] A collector with a trace store and a running tick

// TempDir first: the store's directory exists before the collector starts and outlives it.
struct LiveCollector : TempDir, RunningCollector {
  explicit LiveCollector(const std::string& name,
                         const std::function<void(CollectorOptions&)>& tune = {})
      : TempDir(name), RunningCollector({}, [&](CollectorOptions& o) {
          o.viewer = "";
          o.trace_dir = path.string();
          o.trace_block_age_ns = 50'000'000;  // blocks settle soon after their first frame
          o.tick = std::chrono::milliseconds(20);
          o.capture.http = "127.0.0.1:0";
          o.capture.cooldown_ns = 0;  // several captures per test
          o.capture.busy_ns = 1;
          if (tune) tune(o);
        }) {}
  // POST /capture; the capture id the endpoint answered with (0: none sent).
  uint64_t post_capture(const std::string& model) {
    const std::string response = http_post(capture, "/capture?model=" + model + "&steps=4");
    const size_t at = response.find("\"capture_id\":");
    if (response.find("\"sent\":1") == std::string::npos || at == std::string::npos) return 0;
    return std::stoull(response.substr(at + 13));
  }
};

// [SECTION] The agent double

// Speaks the wire protocol over a real socket: frames out; acknowledgements and
// capture requests in (wire/capture.hpp: acks are 16 bytes "ISAK", any other
// message starts with an 8-byte header giving its length).
class AgentDouble {
 public:
  static constexpr uint32_t kCaptureKey = 1, kKernelName = 2;

  AgentDouble(uint16_t port, const std::string& model) {
    socket_.connect({asio::ip::make_address("127.0.0.1"), port});
    wire::Hello h = make_hello(model, 0, 1, 8);
    h.capabilities = wire::kCapabilityCaptureRequests;
    // The names an agent with CUPTI interns: the capture arg and a kernel.
    send({wire::Record{h}, wire::Record{wire::StringDef{kCaptureKey, "capture"}},
          wire::Record{wire::StringDef{kKernelName, "small_linear"}}, health()});
  }
  void send(const std::vector<wire::Record>& records) {
    asio::write(socket_, asio::buffer(frame_of(records)));
  }
  void close() { socket_.close(); }

  // The agent's cumulative GPU counts, as its AgentHealth carries them.
  wire::AgentHealth::Gpu gpu;
  wire::Record health() {
    wire::AgentHealth h;
    h.timestamp_ns = ++clock_ns_;
    h.gpu = gpu;
    h.gpu.mode = 2;  // triggered
    return wire::Record{h};
  }
  // n GPU kernel spans tagged with the capture.
  std::vector<wire::Record> spans(uint64_t tag, int n) {
    std::vector<wire::Record> out;
    for (int i = 0; i < n; ++i) {
      wire::Span s;
      s.track_kind = wire::TrackKind::kGpuStream;
      s.category = wire::SpanCategory::kKernel;
      s.name_id = kKernelName;
      s.start_ns = (clock_ns_ += 1000);
      s.end_ns = s.start_ns + 500;
      s.num_args = 1;
      s.args[0] = {kCaptureKey, static_cast<int64_t>(tag & INT64_MAX)};
      out.emplace_back(s);
    }
    return out;
  }

  // One layer's expert loads, all of them routed to expert 0: a hot expert, seven dead.
  wire::Record skewed_load() {
    return wire::Record{make_load(0, clock_ns_ += 10'000'000, {64, 0, 0, 0, 0, 0, 0, 0})};
  }

  // Waits for the next capture request (acknowledgements are skipped), reading
  // the socket up to `reads` times (10 ms apart when nothing is there).
  std::optional<wire::CaptureRequest> next_request(int reads = 3000) {
    std::vector<uint8_t> msg;
    for (int i = 0; i < reads && !error_; ++i) {
      while (in_.size() >= wire::kControlHeaderBytes) {
        uint32_t magic = 0;
        std::memcpy(&magic, in_.data(), 4);
        size_t len = wire::kAckBytes;
        if (magic != wire::kAckMagic) {
          auto h = wire::decode_control_header(in_);
          if (!h) return std::nullopt;
          len = h->length;
        }
        if (in_.size() < len) break;
        msg.assign(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(len));
        in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(len));
        if (magic != wire::kAckMagic) return wire::decode_capture_request(msg);
      }
      read_some();
    }
    return std::nullopt;
  }

 private:
  void read_some() {
    socket_.non_blocking(true);
    uint8_t buf[4096];
    std::error_code ec;
    const size_t n = socket_.read_some(asio::buffer(buf), ec);
    if (ec == asio::error::would_block) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      return;
    }
    if (ec) {
      error_ = true;
      return;
    }
    in_.insert(in_.end(), buf, buf + n);
  }
  asio::io_context io_;
  asio::ip::tcp::socket socket_{io_};
  std::vector<uint8_t> in_;
  bool error_ = false;
  int64_t clock_ns_ = 1'000'000'000;
};

// [SECTION] Reading the metrics

double series(const std::map<std::string, double>& m, const std::string& name,
              const std::vector<std::string>& labels = {}) {
  return find_series(m, name, labels).value_or(-1);
}
double stage_count(const std::map<std::string, double>& m, const std::string& stage) {
  return series(m, "inferscope_collector_capture_latency_seconds_count",
                {"stage=\"" + stage + "\""});
}
double stage_sum(const std::map<std::string, double>& m, const std::string& stage) {
  return series(m, "inferscope_collector_capture_latency_seconds_sum", {"stage=\"" + stage + "\""});
}

// Spans tagged `tag` in the collector's trace files, as inferscope-export reads them.
int stored_spans(const std::string& dir, uint64_t tag) {
  int n = 0;
  wire::FrameDecoder dec(wire::DecoderOptions{wire::kMaxBlockRawBytes});
  TraceScanStats stats;
  std::string error;
  scan_trace_files(
      TraceStore::list_segments(dir),
      [&](uint32_t source, std::span<const uint8_t> frame) {
        if (source == 0 || !dec.open(frame).ok()) return true;
        wire::Record r;
        while (dec.next(r))
          if (const auto* s = std::get_if<wire::Span>(&r))
            n += s->num_args == 1 && s->args[0].key_id == AgentDouble::kCaptureKey &&
                 s->args[0].value == static_cast<int64_t>(tag & INT64_MAX);
        return true;
      },
      stats, error);
  return n;
}

// [SECTION] End to end

TEST(CaptureLatency, EpisodeToStoredThroughARealCollector) {
  LiveCollector lc("capture-latency-e2e");
  ::testing::internal::CaptureStderr();  // the collector's log lines
  AgentDouble agent(lc.ingest, "latmodel");
  uint64_t id = 0;
  ASSERT_TRUE(eventually([&] { return (id = lc.post_capture("latmodel")) != 0; }));
  const auto req = agent.next_request();
  ASSERT_TRUE(req.has_value());
  EXPECT_EQ(req->capture_id, id);
  EXPECT_EQ(req->tag(), id) << "a user capture is tagged with its capture id";

  // Started (health), spans, complete (health), CUPTI's last flush, the next health.
  agent.gpu.captures_requested = agent.gpu.captures_started = 1;
  agent.send({agent.health()});
  agent.send(agent.spans(req->tag(), 20));
  agent.send(agent.spans(req->tag(), 20));
  agent.gpu.captures_completed = 1;
  agent.send({agent.health()});
  agent.send(agent.spans(req->tag(), 10));  // CUPTI's last flush, after the report of complete
  ASSERT_TRUE(eventually([&] { return stored_spans(lc.path.string(), req->tag()) == 50; }));
  // All of it is on disk, but the agent could still be flushing: landing waits for its next
  // report. A frame after the store settled (a span of no capture) gives the collector its
  // chance to land the capture too early; it must not.
  const double frames = series(lc.scrape(), "inferscope_collector_frames_total");
  agent.send(agent.spans(0, 1));
  ASSERT_TRUE(eventually(
      [&] { return series(lc.scrape(), "inferscope_collector_frames_total") == frames + 1; }));
  EXPECT_EQ(stage_count(lc.scrape(), "stored"), 0);
  agent.send({agent.health()});
  ASSERT_TRUE(eventually([&] { return stage_count(lc.scrape(), "stored") == 1; }));
  const auto m = lc.scrape();
  EXPECT_EQ(stage_count(m, "started"), 1);
  EXPECT_EQ(stage_count(m, "first_span"), 1);
  // One capture: each stage's sum is its one observation.
  EXPECT_LE(stage_sum(m, "started"), stage_sum(m, "first_span"));
  EXPECT_LE(stage_sum(m, "first_span"), stage_sum(m, "stored"));
  EXPECT_GT(stage_sum(m, "stored"), 0);
  // The buckets are cumulative and the +Inf one is the count.
  std::vector<double> buckets;
  for (const auto& [key, v] : m)
    if (key.rfind("inferscope_collector_capture_latency_seconds_bucket{", 0) == 0 &&
        key.find("stage=\"stored\"") != std::string::npos)
      buckets.push_back(v);
  ASSERT_GE(buckets.size(), 2u);
  EXPECT_EQ(*std::max_element(buckets.begin(), buckets.end()), 1);
  EXPECT_EQ(series(m, "inferscope_collector_capture_latency_seconds_bucket",
                   {"stage=\"stored\"", "le=\"+Inf\""}),
            1);
  EXPECT_EQ(find_series(m, "inferscope_collector_capture_not_landed_total"), std::nullopt)
      << "nothing failed";
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("capture " + std::to_string(id) + " (user, tag " + std::to_string(id) + ")"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("50 spans stored"), std::string::npos) << log;
}

// The other origin: an episode the collector opens on the double's expert loads
// asks it for a capture, tagged with the episode, timed from the opening.
TEST(CaptureLatency, AnEpisodeCaptureIsTimedFromTheEpisodesOpening) {
  LiveCollector lc("capture-latency-episode", [](CollectorOptions& o) {
    o.aggregation.window_ns = 20'000'000;  // 20 ms windows, by record timestamps
    o.aggregation.windows = 1;
    // The hot and the dead experts open episodes together: the collector's cooldown (as
    // deployed) lets one capture through, so the agent's counts belong to it alone.
    o.capture.cooldown_ns = 30'000'000'000;
    o.capture.busy_ns = 2'000'000'000;
  });
  ::testing::internal::CaptureStderr();
  AgentDouble agent(lc.ingest, "episodic");
  std::optional<wire::CaptureRequest> req;
  ASSERT_TRUE(eventually([&] {
    agent.send({agent.skewed_load()});  // loads keep coming until the request arrives
    return (req = agent.next_request(1)).has_value();
  }));
  EXPECT_NE(req->episode_id, 0u);
  EXPECT_EQ(req->tag(), req->episode_id);
  agent.gpu.captures_requested = agent.gpu.captures_started = 1;
  agent.send({agent.health()});
  agent.send(agent.spans(req->tag(), 8));
  agent.gpu.captures_completed = 1;
  agent.send({agent.health()});
  agent.send({agent.health()});
  ASSERT_TRUE(eventually([&] { return stage_count(lc.scrape(), "stored") == 1; }));
  EXPECT_EQ(stored_spans(lc.path.string(), req->tag()), 8);
  const auto m = lc.scrape();
  EXPECT_EQ(stage_count(m, "started"), 1);
  EXPECT_EQ(stage_count(m, "first_span"), 1);
  EXPECT_LE(stage_sum(m, "started"), stage_sum(m, "first_span"));
  EXPECT_LE(stage_sum(m, "first_span"), stage_sum(m, "stored"));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("(episode, tag " + std::to_string(req->tag()) + ") of source"),
            std::string::npos)
      << log;
}

// A capture the agent refuses never lands, and says why; so does one whose
// agent goes away before answering.
TEST(CaptureLatency, RefusedAndDisconnectedCapturesAreCountedByReason) {
  LiveCollector lc("capture-latency-refused");
  ::testing::internal::CaptureStderr();
  {
    AgentDouble agent(lc.ingest, "refuser");
    ASSERT_TRUE(eventually([&] { return lc.post_capture("refuser") != 0; }));
    ASSERT_TRUE(agent.next_request().has_value());
    agent.gpu.captures_requested = agent.gpu.captures_refused_cooldown = 1;
    agent.send({agent.health()});
    EXPECT_TRUE(eventually([&] {
      return series(lc.scrape(), "inferscope_collector_capture_not_landed_total",
                    {"reason=\"refused_cooldown\""}) == 1;
    }));
  }
  AgentDouble quitter(lc.ingest, "quitter");
  ASSERT_TRUE(eventually([&] { return lc.post_capture("quitter") != 0; }));
  ASSERT_TRUE(quitter.next_request().has_value());
  quitter.close();
  EXPECT_TRUE(eventually([&] {
    return series(lc.scrape(), "inferscope_collector_capture_not_landed_total",
                  {"reason=\"disconnected\""}) == 1;
  }));
  const auto m = lc.scrape();
  EXPECT_EQ(stage_count(m, "started"), 0);
  EXPECT_EQ(stage_count(m, "stored"), 0);
  ::testing::internal::GetCapturedStderr();
}

// [SECTION] The tracker alone, its clock in the test's hands

struct Tracker {
  prometheus::Registry registry;
  SourceRegistry sources;
  detail::CaptureLatency latency;
  uint64_t settled = 0;
  explicit Tracker(detail::CaptureLatencyOptions o) : latency(o, registry) {
    latency.set_settled([this] { return settled; });
  }
  Source& agent(const std::string& model) {
    wire::Hello h = make_hello(model, 0, 1, 8);
    h.capabilities = wire::kCapabilityCaptureRequests;
    Source& s = sources.add(h);
    s.strings[1] = "capture";
    ++s.strings_version;
    return s;
  }
  double value(const std::string& name, const std::string& label, const std::string& v) {
    for (const auto& f : registry.Collect())
      if (f.name == name)
        for (const auto& m : f.metric)
          for (const auto& l : m.label)
            if (l.name == label && l.value == v)
              return f.type == prometheus::MetricType::Histogram
                         ? static_cast<double>(m.histogram.sample_count)
                         : m.counter.value;
    return 0;
  }
  double not_landed(const std::string& reason) {
    return value("inferscope_collector_capture_not_landed_total", "reason", reason);
  }
  double stage(const std::string& s) {
    return value("inferscope_collector_capture_latency_seconds", "stage", s);
  }
  std::vector<uint8_t> span_frame(const Source& s, uint64_t tag) {
    wire::Span sp;
    sp.category = wire::SpanCategory::kKernel;
    sp.num_args = 1;
    sp.args[0] = {1, static_cast<int64_t>(tag)};
    return frame_from(s.id, {wire::Record{sp}});
  }
};

constexpr int64_t kS = 1'000'000'000;

TEST(CaptureLatencyTracker, TimeoutsAreCountedByTheStageReached) {
  detail::CaptureLatencyOptions o;
  o.timeout_ns = 10 * kS;
  Tracker t(o);
  const wire::AgentHealth::Gpu zero{};
  wire::AgentHealth::Gpu started;
  started.captures_requested = started.captures_started = 1;
  wire::AgentHealth::Gpu completed = started;
  completed.captures_completed = 1;
  // 1: never acknowledged.
  Source& a = t.agent("a");
  t.latency.on_sent(a, 1, 101, "user", 0, zero);
  // 2: started, no span (an agent without CUPTI).
  Source& b = t.agent("b");
  t.latency.on_sent(b, 2, 102, "user", 0, zero);
  t.latency.on_health(b, started, kS);
  // 3: started, spans, never complete.
  Source& c = t.agent("c");
  t.latency.on_sent(c, 3, 103, "user", 0, zero);
  t.latency.on_health(c, started, kS);
  t.latency.on_frame(t.sources, t.span_frame(c, 103), 7, kS);
  // 4: complete, but its frame never settled in the store.
  Source& d = t.agent("d");
  t.latency.on_sent(d, 4, 104, "user", 0, zero);
  t.latency.on_frame(t.sources, t.span_frame(d, 104), 8, kS);
  t.latency.on_health(d, completed, 2 * kS);
  t.latency.on_health(d, completed, 3 * kS);
  t.settled = 7;
  EXPECT_EQ(t.stage("started"), 3);
  EXPECT_EQ(t.stage("first_span"), 2);

  t.latency.tick(t.sources, 10 * kS - 1);
  EXPECT_EQ(t.latency.pending(), 4u) << "within the bound nothing is given up";
  t.latency.tick(t.sources, 10 * kS);
  EXPECT_EQ(t.latency.pending(), 0u);
  EXPECT_EQ(t.not_landed("no_ack"), 1);
  EXPECT_EQ(t.not_landed("no_spans"), 1);
  EXPECT_EQ(t.not_landed("not_completed"), 1);
  EXPECT_EQ(t.not_landed("not_stored"), 1);
  EXPECT_EQ(t.stage("stored"), 0);
}

TEST(CaptureLatencyTracker, NoAckTimesOutAndTheTableIsBounded) {
  detail::CaptureLatencyOptions o;
  o.timeout_ns = 10 * kS;
  o.max_pending = 3;
  Tracker t(o);
  Source& a = t.agent("m");
  for (uint64_t i = 1; i <= 5; ++i) t.latency.on_sent(a, i, 100 + i, "user", int64_t(i), {});
  EXPECT_EQ(t.latency.pending(), 3u);
  EXPECT_EQ(t.not_landed("evicted"), 2);
  t.latency.tick(t.sources, 20 * kS);
  EXPECT_EQ(t.not_landed("no_ack"), 3);
  EXPECT_EQ(t.latency.pending(), 0u);
}

TEST(CaptureLatencyTracker, StoredWaitsForTheLastSpanFrameToSettle) {
  Tracker t(detail::CaptureLatencyOptions{});
  Source& a = t.agent("m");
  t.latency.on_sent(a, 1, 55, "user", 0, {});
  t.latency.on_frame(t.sources, t.span_frame(a, 55), 3, 1 * kS);  // started by its span
  wire::AgentHealth::Gpu g;
  g.captures_requested = g.captures_started = g.captures_completed = 1;
  t.latency.on_health(a, g, 2 * kS);
  t.latency.on_frame(t.sources, t.span_frame(a, 55), 9, 3 * kS);  // a late span
  t.settled = 8;
  t.latency.on_health(a, g, 4 * kS);  // the report after complete
  t.latency.tick(t.sources, 5 * kS);
  EXPECT_EQ(t.stage("stored"), 0) << "frame 9 is not settled yet";
  EXPECT_EQ(t.latency.pending(), 1u);
  t.settled = 9;
  t.latency.tick(t.sources, 6 * kS);
  EXPECT_EQ(t.stage("stored"), 1);
  EXPECT_EQ(t.latency.pending(), 0u);
  // A frame of another tag or from the collector itself (source 0) is not the capture's.
  t.latency.on_sent(a, 2, 56, "user", 7 * kS, {});
  t.latency.on_frame(t.sources, t.span_frame(a, 57), 10, 8 * kS);
  EXPECT_EQ(t.stage("first_span"), 1);
}

}  // namespace
}  // namespace inferscope::collector::testing
