// GPU capture requests end to end, without a GPU: a real collector (its
// loopback POST /capture endpoint, its ingest connection) and a real agent in
// triggered mode whose CUPTI is absent. The request must reach the agent and be
// counted there (the capture "starts" in its scheduler), the agent's cooldown
// must refuse the next one, the collector's own cooldown must refuse without
// sending, and the agent's counts must come back in AgentHealth as metrics.
// Also: the coordinator's choice of episodes, and the endpoint's input checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "../../collector/src/capture/capture_http.hpp"
#include "inferscope/agent.hpp"
#include "inferscope/collector/capture.hpp"
#include "inferscope/wire/capture.hpp"
#include "inferscope/wire/episode_id.hpp"
#include "running_collector.hpp"

namespace inferscope::collector::testing {
namespace {

uint16_t capture_port(const Collector& c) {
  for (const auto& line : c.listening_lines())
    if (line.rfind("listening capture ", 0) == 0)
      return static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
  return 0;
}

agent::Config agent_config(uint16_t ingest, const std::string& model) {
  agent::Config c;
  c.collector = "tcp://127.0.0.1:" + std::to_string(ingest);
  c.model.name = model;
  c.gpu_trace = agent::GpuTraceMode::kTriggered;
  c.gpu_capture_max = std::chrono::milliseconds(50);  // the agent reports no steps here
  c.gpu_capture_cooldown = std::chrono::hours(1);
  return c;
}

struct NoCupti {
  NoCupti() { ::setenv("INFERSCOPE_CUPTI_LIBRARY", "/nonexistent/libcupti.so", 1); }
  ~NoCupti() { ::unsetenv("INFERSCOPE_CUPTI_LIBRARY"); }
};

TEST(CaptureNet, RequestReachesTheAgentAndItsCooldownRefusesTheNext) {
  NoCupti no_cupti;
  CollectorOptions o;
  o.capture.http = "127.0.0.1:0";
  o.capture.cooldown_ns = 0;  // let the agent's cooldown do the refusing
  o.capture.busy_ns = 1;
  RunningCollector rc(o);
  const uint16_t port = capture_port(*rc.collector);
  ASSERT_NE(port, 0);

  ::testing::internal::CaptureStderr();
  agent::Agent a(agent_config(rc.ingest, "capmodel"));
  // 404 until the agent's hello has arrived.
  std::string first;
  int posts = 0;
  ASSERT_TRUE(eventually([&] {
    ++posts;
    first = http_post(port, "/capture?model=capmodel&steps=4");
    return first.find("200 OK") != std::string::npos;
  })) << first;
  const size_t id_at = first.find("\"capture_id\":");
  ASSERT_NE(id_at, std::string::npos) << first;
  const uint64_t capture_id = std::stoull(first.substr(id_at + 13));
  EXPECT_NE(first.find("\"agents\":1"), std::string::npos) << first;
  EXPECT_NE(first.find("\"sent\":1"), std::string::npos) << first;

  ASSERT_TRUE(eventually([&] { return a.stats().gpu.captures_completed == 1; }));
  agent::GpuTraceStats g = a.stats().gpu;
  EXPECT_FALSE(g.cupti_available) << "CUPTI absent is reported";
  EXPECT_EQ(g.captures_requested, 1u);
  EXPECT_EQ(g.captures_started, 1u);
  // A user request is tagged by its capture id (the one in the response).
  EXPECT_EQ(g.last_capture_tag, capture_id);

  const std::string second = http_post(port, "/capture?model=capmodel&ms=100");
  ++posts;
  EXPECT_NE(second.find("\"sent\":1"), std::string::npos) << second;
  ASSERT_TRUE(eventually([&] { return a.stats().gpu.captures_refused_cooldown == 1; }));
  g = a.stats().gpu;
  EXPECT_EQ(g.captures_requested, 2u);
  EXPECT_EQ(g.captures_started, 1u);

  // The agent's counts come back through AgentHealth (about once a second).
  EXPECT_TRUE(eventually([&] {
    auto m = rc.scrape();
    auto refused = find_series(m, "inferscope_agent_gpu_captures_total",
                               {"outcome=\"refused_cooldown\"", "model=\"capmodel\""});
    auto started = find_series(m, "inferscope_agent_gpu_captures_total",
                               {"outcome=\"started\"", "model=\"capmodel\""});
    return refused && *refused == 1 && started && *started == 1;
  }));
  auto m = rc.scrape();
  // Every POST is a request, those answered 404 (hello not in yet) included.
  EXPECT_EQ(find_series(m, "inferscope_collector_capture_requests_total", {"origin=\"user\""}),
            std::optional<double>(posts));
  a.shutdown();
  ::testing::internal::GetCapturedStderr();
}

TEST(CaptureNet, CollectorCooldownRefusesWithoutSending) {
  NoCupti no_cupti;
  CollectorOptions o;
  o.capture.http = "127.0.0.1:0";  // default cooldown: 30 s per agent
  RunningCollector rc(o);
  const uint16_t port = capture_port(*rc.collector);
  ::testing::internal::CaptureStderr();
  agent::Agent a(agent_config(rc.ingest, "cool"));
  std::string r;
  ASSERT_TRUE(eventually([&] {
    r = http_post(port, "/capture?model=cool&steps=2");
    return r.find("200 OK") != std::string::npos;
  })) << r;
  r = http_post(port, "/capture?model=cool&steps=2");
  EXPECT_NE(r.find("\"sent\":0"), std::string::npos) << r;
  EXPECT_TRUE(r.find("\"refused_busy\":1") != std::string::npos ||
              r.find("\"refused_cooldown\":1") != std::string::npos)
      << r;
  ASSERT_TRUE(eventually([&] { return a.stats().gpu.captures_requested == 1; }));
  auto m = rc.scrape();
  EXPECT_EQ(
      find_series(m, "inferscope_collector_capture_agent_requests_total", {"outcome=\"sent\""}),
      std::optional<double>(1));
  a.shutdown();
  ::testing::internal::GetCapturedStderr();
}

// An episode the collector detects in a real agent's expert loads (one hot
// expert, seven dead ones) makes it ask that agent for a capture, tagged with
// the episode's id.
TEST(CaptureNet, AnOpeningEpisodeAsksTheAgentForACapture) {
  NoCupti no_cupti;
  CollectorOptions o;
  o.aggregation.window_ns = 20'000'000;  // 20 ms windows, by record timestamps
  o.aggregation.windows = 1;
  RunningCollector rc(o);
  ::testing::internal::CaptureStderr();
  agent::Config c = agent_config(rc.ingest, "episodic");
  c.flush_interval = std::chrono::milliseconds(5);
  c.model.top_k = 1;
  c.model.layers.push_back({wire::LayerKind::kAttention, wire::FfnKind::kMoe, 8});
  agent::Agent a(c);
  const std::vector<uint32_t> skewed = {64, 0, 0, 0, 0, 0, 0, 0};
  uint64_t step = 0;
  ASSERT_TRUE(eventually([&] {
    // Loads keep coming (as from a serving engine) until the request arrives.
    for (int i = 0; i < 5; ++i) a.expert_load(++step, 0, skewed, 64, 0);
    return a.stats().gpu.captures_requested >= 1;
  }));
  const agent::GpuTraceStats g = a.stats().gpu;
  EXPECT_EQ(g.captures_started, 1u) << "one capture; later episodes fall in the cooldowns";
  EXPECT_NE(g.last_capture_tag, 0u) << "tagged with the episode id";
  EXPECT_TRUE(eventually([&] {
    return find_series(rc.scrape(), "inferscope_collector_capture_requests_total",
                       {"origin=\"episode\""})
        .has_value();
  }));
  a.shutdown();
  ::testing::internal::GetCapturedStderr();
}

TEST(CaptureNet, EndpointChecksItsInput) {
  CollectorOptions o;
  o.capture.http = "127.0.0.1:0";
  RunningCollector rc(o);
  const uint16_t port = capture_port(*rc.collector);
  EXPECT_NE(http_post(port, "/capture").find("400"), std::string::npos);
  EXPECT_NE(http_post(port, "/capture?model=x&steps=0").find("400"), std::string::npos);
  EXPECT_NE(http_post(port, "/capture?model=x&steps=2&ms=5").find("400"), std::string::npos);
  EXPECT_NE(http_post(port, "/capture?model=x&color=red").find("400"), std::string::npos);
  EXPECT_NE(http_post(port, "/capture?model=nobody").find("404"), std::string::npos);
  EXPECT_NE(http_post(port, "/other").find("404"), std::string::npos);
  EXPECT_NE(http_get(port, "/capture?model=x").size(), 0u);  // an error body, not a hang
}

TEST(CaptureNet, EndpointRefusesANonLoopbackAddress) {
  CollectorOptions o;
  o.listen = {"tcp://127.0.0.1:0"};
  o.metrics = "";
  o.viewer = "";
  o.capture.http = "0.0.0.0:0";
  Collector c(o);
  std::string error;
  EXPECT_FALSE(c.start(error));
  EXPECT_NE(error.find("--capture-http"), std::string::npos) << error;
  EXPECT_NE(error.find("loopback"), std::string::npos) << error;
}

// The coordinator alone: which episodes ask for a capture, and of whom.
TEST(CaptureCoordinator, OpeningEpisodesAskCapableAgentsOfTheirModel) {
  CaptureOptions opt;
  opt.steps = 6;
  SourceRegistry sources;
  prometheus::Registry registry;
  CaptureCoordinator cc(opt, sources, registry);
  std::vector<std::pair<uint32_t, wire::CaptureRequest>> sent;
  cc.set_sender([&](uint32_t id, std::vector<uint8_t> m) {
    sent.emplace_back(id, *wire::decode_capture_request(m));
    return true;
  });
  wire::Hello capable = make_hello("m", 0, 2, 8);
  capable.capabilities = wire::kCapabilityCaptureRequests;
  wire::Hello old = make_hello("m", 1, 2, 8);  // an agent from before capture requests
  wire::Hello other = make_hello("other", 0, 2, 8);
  other.capabilities = wire::kCapabilityCaptureRequests;
  const uint32_t id_capable = sources.add(capable).id;
  sources.add(old);
  sources.add(other);

  wire::AlertEpisode hot{wire::AlertKind::kHotExpert, 0, 1, 3, 1'000, 0, 0.5f, 4.0f, "m"};
  cc.on_alert(hot, 0);
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].first, id_capable);
  EXPECT_EQ(sent[0].second.steps, 6u);
  EXPECT_EQ(sent[0].second.episode_id, wire::episode_capture_tag(hot));
  EXPECT_EQ(sent[0].second.tag(), wire::episode_capture_tag(hot));

  wire::AlertEpisode closed = hot;
  closed.end_ns = 2'000;
  cc.on_alert(closed, 100'000'000'000);
  wire::AlertEpisode cold{wire::AlertKind::kColdExpert, 0, 1, 3, 1'000, 0, 0.0f, 0.1f, "m"};
  cc.on_alert(cold, 100'000'000'000);
  EXPECT_EQ(sent.size(), 1u) << "closing and cold episodes ask for nothing";

  wire::AlertEpisode drop{wire::AlertKind::kDropBurst, 0, 1, 0, 5'000, 0, 0.2f, 0.0f, "m"};
  cc.on_alert(drop, 1'000'000'000);
  EXPECT_EQ(sent.size(), 1u) << "within the cooldown";
  cc.on_alert(drop, 31'000'000'000);
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_NE(sent[1].second.episode_id, sent[0].second.episode_id);

  // The episodes that got a capture, named as inferscope-export --episode takes them.
  std::vector<std::string> episodes;
  for (const auto& f : registry.Collect())
    if (f.name == "inferscope_collector_episode_capture_timestamp_seconds")
      for (const auto& m : f.metric) {
        EXPECT_GT(m.gauge.value, 1.6e9);  // a Unix time, for Grafana's "value as timestamp"
        for (const auto& l : m.label)
          if (l.name == "episode") episodes.push_back(l.value);
      }
  std::sort(episodes.begin(), episodes.end());
  EXPECT_EQ(episodes, (std::vector<std::string>{wire::episode_id(drop), wire::episode_id(hot)}));
}

TEST(CaptureCoordinator, EpisodeCaptureSeriesAreBounded) {
  CaptureOptions opt;
  opt.cooldown_ns = 0;
  opt.busy_ns = 0;
  SourceRegistry sources;
  prometheus::Registry registry;
  CaptureCoordinator cc(opt, sources, registry);
  cc.set_sender([](uint32_t, std::vector<uint8_t>) { return true; });
  wire::Hello capable = make_hello("m", 0, 2, 8);
  capable.capabilities = wire::kCapabilityCaptureRequests;
  sources.add(capable);
  for (int i = 0; i < 100; ++i) {
    wire::AlertEpisode hot{wire::AlertKind::kHotExpert, 0, 1, 3, 1'000 + i, 0, 0.5f, 4.0f, "m"};
    cc.on_alert(hot, int64_t(i) * 1'000'000'000);
  }
  size_t series = 0;
  std::string newest = wire::episode_id(
      wire::AlertEpisode{wire::AlertKind::kHotExpert, 0, 1, 3, 1'099, 0, 0.5f, 4.0f, "m"});
  bool has_newest = false;
  for (const auto& f : registry.Collect())
    if (f.name == "inferscope_collector_episode_capture_timestamp_seconds")
      for (const auto& m : f.metric) {
        ++series;
        for (const auto& l : m.label) has_newest |= l.name == "episode" && l.value == newest;
      }
  EXPECT_EQ(series, 16u);
  EXPECT_TRUE(has_newest);
}

}  // namespace
}  // namespace inferscope::collector::testing
