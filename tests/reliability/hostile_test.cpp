// Hostile and broken connections against the real collector while a good
// agent keeps streaming: garbage, an oversized frame header, a bad checksum, a
// frame without a hello, a wrong token, a connection cut inside a frame, a
// connection flood beyond --max-connections, slow-loris senders, and peers
// that announce large frames without a hello to make the collector hold memory.
// Each is rejected and counted in inferscope_collector_rejected_frames_total{reason};
// the good agent loses nothing and never reconnects.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "harness.hpp"
#include "inferscope/agent.hpp"
#include "inferscope/wire/codec.hpp"

namespace inferscope::reliability {
namespace {

constexpr const char* kToken = "s3cret-reliability-token";

agent::Config good_config(const std::string& address) {
  agent::Config c;
  c.collector = address;
  c.service = "reliability";
  c.model.name = "reliab-good";
  c.auth_token = kToken;
  c.flush_interval = 5ms;
  c.reconnect_max_backoff = 100ms;
  c.nvtx = false;
  return c;
}

std::vector<uint8_t> frame_of(const std::vector<wire::Record>& records) {
  wire::FrameEncoder enc;
  for (const auto& r : records) enc.add(r);
  std::vector<uint8_t> out;
  enc.finish(out);
  return out;
}

wire::Hello hello(const std::string& token) {
  wire::Hello h;
  h.service = "hostile";
  h.instance = "hostile:1";
  h.model.name = "reliab-hostile";
  h.auth_token = token;
  return h;
}

// The good agent records counters at a steady pace for the whole test.
class GoodAgent {
 public:
  explicit GoodAgent(const std::string& address) : agent_(good_config(address)) {
    thread_ = std::thread([this] {
      const uint32_t name = agent::intern("reliab.hostile.good");
      while (!stop_) {
        for (int i = 0; i < 50; ++i) agent_.counter(name, 1.0);
        produced_ += 50;
        std::this_thread::sleep_for(2ms);
      }
    });
  }
  ~GoodAgent() { finish(); }
  agent::Stats finish() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    EXPECT_TRUE(agent_.flush(10s));
    return agent_.stats();
  }
  uint64_t produced() const { return produced_; }
  agent::Agent& agent() { return agent_; }

 private:
  agent::Agent agent_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> produced_{0};
  std::thread thread_;
};

class Hostile : public ::testing::Test {
 protected:
  void start(std::vector<std::string> extra = {}) {
    token_file_ = dir_.path() + "/token";
    std::ofstream(token_file_) << kToken << "\n";
    extra.insert(extra.end(), {"--auth-token-file", token_file_});
    collector_ = std::make_unique<CollectorProcess>(0, extra, child_options_);
    ASSERT_TRUE(collector_->ok()) << collector_->error();
    good_ = std::make_unique<GoodAgent>(collector_->ingest_address());
    ASSERT_TRUE(eventually([&] { return good_->agent().stats().connected; }, 30s));
  }
  double rejected(const std::string& reason) {
    return sum_series(scrape(collector_->ports().metrics),
                      "inferscope_collector_rejected_frames_total", {"reason=\"" + reason + "\""});
  }
  // Opens a connection, sends bytes, expects the collector to close it and to
  // count one more rejection with this reason.
  void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& reason,
                       bool close_after_send = false) {
    const double before = rejected(reason);
    const int fd = connect_loopback(collector_->ports().ingest);
    ASSERT_GE(fd, 0);
    send_all(fd, bytes.data(), bytes.size());
    if (close_after_send) {
      ::close(fd);
    } else {
      EXPECT_TRUE(closed_by_peer(fd, 30s)) << reason << ": the collector kept the connection open";
      ::close(fd);
    }
    EXPECT_TRUE(eventually([&] { return rejected(reason) == before + 1; }, 30s))
        << "reason=\"" << reason << "\" went from " << before << " to " << rejected(reason);
  }
  // The good agent lost nothing, never reconnected, and the collector got every record.
  void expect_good_agent_unaffected() {
    const agent::Stats s = good_->finish();
    EXPECT_EQ(s.reconnects, 0u);
    EXPECT_EQ(s.records_dropped, 0u);
    EXPECT_EQ(s.records_sent, good_->produced());
    EXPECT_TRUE(eventually(
        [&] {
          return sum_series(scrape(collector_->ports().metrics),
                            "inferscope_collector_records_total",
                            {"kind=\"counter\""}) == static_cast<double>(good_->produced());
        },
        30s))
        << "the good agent's records did not all arrive";
  }

  TempDir dir_;
  ChildOptions child_options_;
  std::string token_file_;
  std::unique_ptr<CollectorProcess> collector_;
  std::unique_ptr<GoodAgent> good_;
};

TEST_F(Hostile, MalformedConnectionsAreRejectedCountedAndIsolated) {
  start();
  std::mt19937 rng(9);
  std::vector<uint8_t> garbage(4096);
  for (auto& b : garbage) b = static_cast<uint8_t>(rng());
  expect_rejected(garbage, "bad_magic");

  // A header that promises 1 GiB: refused from the header alone, before any payload arrives.
  auto big = frame_of({hello(kToken)});
  const uint32_t huge = 1u << 30;
  std::memcpy(big.data() + 8, &huge, 4);
  big.resize(wire::kFrameHeaderBytes);
  expect_rejected(big, "frame_too_large");

  auto bad_crc = frame_of({hello(kToken)});
  bad_crc.back() ^= 0xff;
  expect_rejected(bad_crc, "checksum");

  wire::CounterSample sample;
  sample.name_id = 1;
  expect_rejected(frame_of({sample}), "no_hello");
  expect_rejected(frame_of({hello("wrong-token")}), "auth");
  expect_rejected(frame_of({hello("")}), "auth");

  auto version = frame_of({hello(kToken)});
  version[4] = 9;  // protocol version 9 in the header
  expect_rejected(version, "unsupported_version");

  // Many at once, interleaved with the good agent's stream.
  std::vector<int> fds;
  for (int i = 0; i < 32; ++i) {
    const int fd = connect_loopback(collector_->ports().ingest);
    ASSERT_GE(fd, 0);
    send_all(fd, garbage.data(), garbage.size());
    fds.push_back(fd);
  }
  for (int fd : fds) {
    EXPECT_TRUE(closed_by_peer(fd, 30s));
    ::close(fd);
  }
  EXPECT_EQ(rejected("bad_magic"), 33);
  expect_good_agent_unaffected();
}

// A connection that ends inside a frame (the sender died mid-write): its whole
// frames count, the torn one is counted as rejected (reason "truncated").
TEST_F(Hostile, ConnectionCutInsideAFrameIsCounted) {
  start();
  auto bytes = frame_of({hello(kToken)});
  auto data = frame_of({wire::StringDef{1, "x"}});
  bytes.insert(bytes.end(), data.begin(), data.begin() + static_cast<long>(data.size() / 2));
  expect_rejected(bytes, "truncated", /*close_after_send=*/true);
  expect_good_agent_unaffected();
}

TEST_F(Hostile, ConnectionFloodBeyondTheLimitIsRefusedAndCounted) {
  start({"--max-connections", "8"});
  // The good agent holds one slot; 7 idle-but-valid peers take the rest.
  std::vector<int> held;
  const auto h = frame_of({hello(kToken)});
  for (int i = 0; i < 7; ++i) {
    const int fd = connect_loopback(collector_->ports().ingest);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, h.data(), h.size()));
    held.push_back(fd);
  }
  ASSERT_TRUE(eventually(
      [&] {
        return sum_series(scrape(collector_->ports().metrics),
                          "inferscope_collector_connections") == 8;
      },
      30s));
  const double before = rejected("connection_limit");
  std::vector<int> extra;
  for (int i = 0; i < 20; ++i) {
    const int fd = connect_loopback(collector_->ports().ingest);
    ASSERT_GE(fd, 0);
    extra.push_back(fd);
  }
  for (int fd : extra) {
    EXPECT_TRUE(closed_by_peer(fd, 30s)) << "a connection beyond the limit was kept";
    ::close(fd);
  }
  EXPECT_TRUE(eventually([&] { return rejected("connection_limit") == before + 20; }, 30s));
  for (int fd : held) ::close(fd);
  // Slots free again once the peers leave.
  EXPECT_TRUE(eventually(
      [&] {
        return sum_series(scrape(collector_->ports().metrics),
                          "inferscope_collector_connections") == 1;
      },
      30s));
  const int again = connect_loopback(collector_->ports().ingest);
  ASSERT_GE(again, 0);
  ASSERT_TRUE(send_all(again, h.data(), h.size()));
  EXPECT_FALSE(closed_by_peer(again, 300ms));
  ::close(again);
  expect_good_agent_unaffected();
}

// Slow-loris: peers that trickle a frame a byte at a time, or connect and send
// nothing, must not hold connection slots forever: the collector's hello and
// frame deadlines (10 s each by default) close them and count reason "timeout".
TEST_F(Hostile, SlowLorisPeersAreTimedOutAndCounted) {
  start({"--max-connections", "4"});
  const auto h = frame_of({hello(kToken)});
  std::vector<int> slow;
  for (int i = 0; i < 3; ++i) {
    const int fd = connect_loopback(collector_->ports().ingest);
    ASSERT_GE(fd, 0);
    slow.push_back(fd);
  }
  // Trickle one byte a second into two of them; the third sends nothing.
  const auto deadline = Clock::now() + 20s;
  size_t sent = 0;
  bool all_closed = false;
  while (Clock::now() < deadline && !all_closed) {
    if (sent < h.size()) {
      send_all(slow[0], &h[sent], 1);
      send_all(slow[1], &h[sent], 1);
      ++sent;
    }
    all_closed = true;
    for (int fd : slow) all_closed = all_closed && closed_by_peer(fd, 1ms);
    std::this_thread::sleep_for(1s);
  }
  EXPECT_TRUE(all_closed) << "slow-loris peers still hold connection slots after 20 s";
  EXPECT_TRUE(eventually([&] { return rejected("timeout") == 3; }, 30s)) << rejected("timeout");
  // Their slots are free again: a real peer gets in.
  const int fd = connect_loopback(collector_->ports().ingest);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, h.data(), h.size()));
  EXPECT_FALSE(closed_by_peer(fd, 300ms));
  ::close(fd);
  for (int s : slow) ::close(s);
  expect_good_agent_unaffected();
}

// Issue 15's attack: connections that announce a ~4 MiB frame and send all of
// it but the last byte, without a hello (200 of them took the collector from
// 6 MB to 846 MB RSS). Before its hello a connection may not send a frame over
// 512 KiB (reason "frame_too_large_before_hello"), and connections without a
// hello may hold 16 MiB together (reason "memory_budget" beyond it). A second
// wave announces frames just within the 512 KiB limit and fills that share.
// The collector's memory stays bounded, every attacker is counted, an agent
// that connects in the middle of the attack gets its records through, and the
// log holds a few lines per reason, not one per connection.
TEST_F(Hostile, LargeFramesBeforeAHelloAreBoundedInMemoryAndCounted) {
  child_options_.stderr_path = dir_.path() + "/collector.log";
  start();
  const pid_t pid = collector_->child().pid();
  const uint64_t rss_before = rss_kib(pid);
  constexpr int kAttackers = 200;

  // A frame header that announces `total` bytes, and the rest of the frame but its last byte.
  auto attack = [&](uint32_t total, std::vector<int>& fds) {
    auto header = frame_of({hello(kToken)});
    const uint32_t payload = total - static_cast<uint32_t>(wire::kFrameHeaderBytes);
    std::memcpy(header.data() + 8, &payload, 4);
    header.resize(wire::kFrameHeaderBytes);
    const std::vector<uint8_t> body(payload - 1, 0);
    for (int i = 0; i < kAttackers; ++i) {
      const int fd = connect_loopback(collector_->ports().ingest);
      ASSERT_GE(fd, 0);
      send_all(fd, header.data(), header.size());
      send_all(fd, body.data(), body.size());  // fails once the collector has closed it
      fds.push_back(fd);                       // held open, as an attacker would
    }
  };
  std::vector<int> wave1, wave2;
  attack((4u << 20) - 1024, wave1);
  EXPECT_TRUE(
      eventually([&] { return rejected("frame_too_large_before_hello") == kAttackers; }, 30s))
      << rejected("frame_too_large_before_hello");
  attack(512u << 10, wave2);
  // The before-hello share holds about 36 such frames; the rest are refused.
  // Those it holds are closed by the frame deadline (10 s) later.
  EXPECT_TRUE(eventually([&] { return rejected("memory_budget") > 0; }, 30s));
  const uint64_t rss_attack = rss_kib(pid);

  // An agent that connects now, while the attackers hold what they may.
  agent::Config late_config = good_config(collector_->ingest_address());
  late_config.model.name = "reliab-late";
  agent::Agent late(late_config);
  const uint32_t name = agent::intern("reliab.hostile.late");
  for (int i = 0; i < 1000; ++i) late.counter(name, 1.0);
  EXPECT_TRUE(late.flush(20s)) << "an agent connecting during the attack could not deliver";
  const agent::Stats ls = late.stats();
  EXPECT_EQ(ls.records_sent, 1000u);
  EXPECT_EQ(ls.records_dropped, 0u);

  // Every wave-2 attacker ends up counted: refused at once, or timed out.
  EXPECT_TRUE(eventually(
      [&] { return rejected("memory_budget") + rejected("timeout") == kAttackers; }, 40s))
      << "memory_budget " << rejected("memory_budget") << " timeout " << rejected("timeout");
  const uint64_t rss_peak = peak_rss_kib(pid);
  std::printf(
      "[figures] %d connections announcing 4 MiB frames, then %d announcing 512 KiB, no hello: "
      "collector RSS %.1f MB before, %.1f MB during, peak %.1f MB; rejected %g before_hello, "
      "%g memory_budget, %g timeout\n",
      kAttackers, kAttackers, rss_before / 1024.0, rss_attack / 1024.0, rss_peak / 1024.0,
      rejected("frame_too_large_before_hello"), rejected("memory_budget"), rejected("timeout"));
  // Before the budget this attack's first wave alone reached 846 MB. ASan's
  // quarantine keeps freed buffers resident for a while: allow for it there.
#if defined(__SANITIZE_ADDRESS__)
  constexpr uint64_t kBoundKib = 400u << 10;
#else
  constexpr uint64_t kBoundKib = 100u << 10;
#endif
  EXPECT_LT(rss_peak - rss_before, kBoundKib)
      << "the collector held too much for peers without a hello";
  for (int fd : wave1) ::close(fd);
  for (int fd : wave2) ::close(fd);

  // Good agents: the one streaming all along and the late one, every record arrived.
  const agent::Stats gs = good_->finish();
  EXPECT_EQ(gs.reconnects, 0u);
  EXPECT_EQ(gs.records_dropped, 0u);
  EXPECT_EQ(gs.records_sent, good_->produced());
  EXPECT_TRUE(eventually(
      [&] {
        return sum_series(scrape(collector_->ports().metrics), "inferscope_collector_records_total",
                          {"kind=\"counter\""}) == static_cast<double>(good_->produced() + 1000);
      },
      30s))
      << "the agents' records did not all arrive";

  // 400 rejected connections, a handful of log lines: one per reason per 10 s,
  // then one with the count of those suppressed (written by the once-a-second
  // sweep when the interval has passed).
  size_t lines = 0, before_hello_lines = 0;
  bool counted = false;
  auto read_log = [&] {
    std::ifstream log(child_options_.stderr_path);
    std::string line;
    lines = before_hello_lines = 0;
    counted = false;
    while (std::getline(log, line)) {
      ++lines;
      if (line.find("before its hello") != std::string::npos) ++before_hello_lines;
      if (line.find("more \"frame_too_large_before_hello\" lines suppressed") != std::string::npos)
        counted = true;
    }
    return counted;
  };
  EXPECT_TRUE(eventually(read_log, 15s)) << "no line carries the count of the suppressed ones";
  EXPECT_LE(before_hello_lines, 3u);
  EXPECT_LT(lines, 40u) << "one log line per rejected connection?";
}

}  // namespace
}  // namespace inferscope::reliability
