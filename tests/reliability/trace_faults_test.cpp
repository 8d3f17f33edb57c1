// The trace store under a full disk and under kill -9 in the middle of writes:
// the files hold only whole, checksum-valid frames (at most one torn frame at
// the very end of a file after a kill), every segment can be read on its own,
// and ingest goes on while the disk is full.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <cstdio>

#include "harness.hpp"
#include "inferscope/agent.hpp"

namespace inferscope::reliability {
namespace {

agent::Config agent_config(const std::string& address) {
  agent::Config c;
  c.collector = address;
  c.service = "reliability";
  c.model.name = "reliab-trace";
  c.flush_interval = 5ms;
  c.reconnect_max_backoff = 100ms;
  c.max_pending_bytes = 8u << 20;
  c.nvtx = false;
  return c;
}

// Records spans and counters at about 100k records/s until stopped.
class Writer {
 public:
  Writer(agent::Agent& a, const std::string& prefix)
      : agent_(a), span_(agent::intern(prefix + ".span")), counter_(agent::intern(prefix + ".counter")) {
    thread_ = std::thread([this] {
      while (!stop_) {
        for (int i = 0; i < 50; ++i) {
          const int64_t t = agent::now_ns();
          agent_.span(span_, t, t + 1000, wire::SpanCategory::kCpuRange, ++request_);
          agent_.counter(counter_, 1.0);
        }
        produced_ += 100;
        std::this_thread::sleep_for(1ms);
      }
    });
  }
  ~Writer() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t produced() const { return produced_; }

 private:
  agent::Agent& agent_;
  uint32_t span_, counter_;
  uint64_t request_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> produced_{0};
  std::thread thread_;
};

TEST(TraceFaults, FullDiskKeepsWholeFramesAndIngestGoesOn) {
  TempDir dir;
  // RLIMIT_FSIZE stands in for a full disk (no root or tmpfs needed): a write
  // past 256 KiB fails with EFBIG exactly where ENOSPC would. Segments are made
  // larger than that so every segment runs into the "full disk".
  constexpr uint64_t kLimit = 256u << 10;
  ChildOptions co;
  co.file_size_limit = kLimit;
  CollectorProcess c(0, {"--trace-dir", dir.path(), "--trace-segment-bytes", std::to_string(4u << 20)}, co);
  ASSERT_TRUE(c.ok()) << c.error();

  uint64_t produced = 0;
  agent::Stats st;
  {
    agent::Agent a(agent_config(c.ingest_address()));
    Writer w(a, "reliab.fulldisk");
    ASSERT_TRUE(eventually([&] {
      return sum_series(scrape(c.ports().metrics), "inferscope_collector_trace_write_errors_total") > 0;
    }, 15s)) << "the trace store never hit the limit";
    std::this_thread::sleep_for(2500ms);  // at least two retries in fresh segments, both failing again
    w.stop();
    produced = w.produced();
    ASSERT_TRUE(a.flush(10s));
    st = a.stats();
  }
  // Ingest never waited for the disk: the connection stayed up and nothing was dropped.
  EXPECT_EQ(st.reconnects, 0u);
  EXPECT_EQ(st.records_dropped, 0u);
  EXPECT_EQ(st.records_sent, produced);
  Series m;
  EXPECT_TRUE(eventually([&] {
    m = scrape(c.ports().metrics);
    return sum_series(m, "inferscope_collector_records_total", {"kind=\"counter\""}) +
               sum_series(m, "inferscope_collector_records_total", {"kind=\"span\""}) ==
           static_cast<double>(produced);
  }, 5s)) << "collector received " << sum_series(m, "inferscope_collector_records_total");
  const double write_errors = sum_series(m, "inferscope_collector_trace_write_errors_total");
  EXPECT_GT(write_errors, 0);

  c.child().signal(SIGTERM);
  EXPECT_EQ(c.child().wait(10s), std::optional<int>(0));
  TraceCount t = read_trace_dir(dir.path());
  std::printf("[figures] full disk: %llu segments, %llu frames kept, %.0f frames refused by the disk, "
              "largest segment %llu bytes (limit %llu)\n",
              (unsigned long long)t.files, (unsigned long long)t.frames, write_errors,
              (unsigned long long)t.largest_file, (unsigned long long)kLimit);
  EXPECT_GE(t.files, 2u) << "the store retries in a fresh segment";
  EXPECT_LE(t.largest_file, kLimit);
  EXPECT_EQ(t.corrupt_frames, 0u);
  EXPECT_EQ(t.truncated_tails, 0u) << "a failed write must not leave a partial frame";
  EXPECT_EQ(t.undecodable_frames, 0u);
  EXPECT_EQ(t.file_bytes, t.frame_bytes) << "every byte on disk belongs to a whole frame";
  EXPECT_EQ(t.segments_without_hello, 0u) << "every segment starts with the sources' hellos";
  // What reached the disk is what ingest saw minus what the disk refused.
  const uint64_t on_disk = t.records_of(wire::RecordKind::kSpan) + t.records_of(wire::RecordKind::kCounter);
  EXPECT_GT(on_disk, 0u);
  EXPECT_LT(on_disk, produced);
}

TEST(TraceFaults, KillDashNineDuringWritesLeavesOnlyWholeFrames) {
  TempDir dir;
  constexpr int kRounds = 3;
  uint16_t port = 0;
  const std::vector<std::string> args{"--trace-dir", dir.path(), "--trace-segment-bytes", "65536"};
  auto collector = std::make_unique<CollectorProcess>(port, args);
  ASSERT_TRUE(collector->ok()) << collector->error();
  port = collector->ports().ingest;
  agent::Agent a(agent_config(collector->ingest_address()));
  Writer w(a, "reliab.kill9");
  for (int round = 0; round < kRounds; ++round) {
    ASSERT_TRUE(eventually([&] {
      return sum_series(scrape(collector->ports().metrics), "inferscope_collector_records_total",
                        {"kind=\"span\""}) > 20000;
    }, 15s)) << "round " << round << ": no traffic";
    collector->child().signal(SIGKILL);
    ASSERT_TRUE(collector->child().wait(5s).has_value());
    collector = std::make_unique<CollectorProcess>(port, args);  // same directory: numbering continues
    ASSERT_TRUE(collector->ok()) << collector->error();
  }
  w.stop();
  ASSERT_TRUE(a.flush(10s));
  collector->child().signal(SIGKILL);
  ASSERT_TRUE(collector->child().wait(5s).has_value());

  TraceCount t = read_trace_dir(dir.path());
  std::printf("[figures] kill -9 x%d: %llu segments, %llu frames, %llu torn tails, %llu bytes in no frame\n",
              kRounds + 1, (unsigned long long)t.files, (unsigned long long)t.frames,
              (unsigned long long)t.truncated_tails, (unsigned long long)(t.file_bytes - t.frame_bytes));
  EXPECT_GT(t.files, static_cast<uint64_t>(kRounds));
  EXPECT_EQ(t.corrupt_frames, 0u) << "damage may only be a torn last frame";
  EXPECT_EQ(t.undecodable_frames, 0u);
  EXPECT_LE(t.truncated_tails, static_cast<uint64_t>(kRounds + 1)) << "at most one torn frame per kill";
  // Bytes outside complete frames are only those torn tails, each less than one frame.
  EXPECT_LE(t.file_bytes - t.frame_bytes, t.truncated_tails * (256u << 10));
  if (t.truncated_tails == 0) {
    EXPECT_EQ(t.file_bytes, t.frame_bytes);
  }
  EXPECT_EQ(t.segments_without_hello, 0u);
  EXPECT_GT(t.records_of(wire::RecordKind::kSpan), 60000u);
}

}  // namespace
}  // namespace inferscope::reliability
