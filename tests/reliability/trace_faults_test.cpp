// The trace store (v2: compressed blocks with a time index) under a full disk
// and under kill -9 of the real daemon in the middle of writes: every block the
// daemon reported written is readable after the kill, a torn last block is cut
// by the restarted daemon, which goes on writing in a new segment; a full disk
// leaves only whole blocks, is counted, and ingest and /metrics go on.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>

#include "harness.hpp"
#include "inferscope/agent.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/trace_block.hpp"

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

// The block walk of every segment in a directory (what a restarted store sees).
struct BlockCount {
  uint64_t segments = 0, blocks = 0, torn_tails = 0, damaged_regions = 0, largest_file = 0;
  std::vector<uint64_t> blocks_per_segment;
};
BlockCount scan_dir(const std::string& dir) {
  BlockCount c;
  for (const auto& path : collector::TraceStore::list_segments(dir)) {
    wire::BlockScan scan;
    std::string error;
    EXPECT_TRUE(wire::scan_blocks(path, scan, error)) << error;
    ++c.segments;
    c.blocks += scan.blocks.size();
    c.torn_tails += scan.torn_tail ? 1 : 0;
    c.damaged_regions += scan.damaged_regions;
    c.largest_file = std::max(c.largest_file, scan.file_bytes);
    c.blocks_per_segment.push_back(scan.blocks.size());
  }
  return c;
}

// Records spans and counters at about 100k records/s until stopped.
class Writer {
 public:
  Writer(agent::Agent& a, const std::string& prefix)
      : agent_(a),
        span_(agent::intern(prefix + ".span")),
        counter_(agent::intern(prefix + ".counter")) {
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

TEST(TraceFaults, FullDiskKeepsWholeBlocksAndIngestGoesOn) {
  TempDir dir;
  // RLIMIT_FSIZE stands in for a full disk (no root or tmpfs needed): a write
  // past 256 KiB fails with EFBIG exactly where ENOSPC would. Segments are made
  // larger than that so every segment runs into the "full disk".
  constexpr uint64_t kLimit = 256u << 10;
  ChildOptions co;
  co.file_size_limit = kLimit;
  CollectorProcess c(0,
                     {"--trace-dir", dir.path(), "--trace-segment-bytes", std::to_string(4u << 20),
                      "--trace-block-bytes", "16384", "--trace-block-age", "50ms"},
                     co);
  ASSERT_TRUE(c.ok()) << c.error();

  uint64_t produced = 0;
  agent::Stats st;
  {
    agent::Agent a(agent_config(c.ingest_address()));
    Writer w(a, "reliab.fulldisk");
    ASSERT_TRUE(eventually(
        [&] {
          return sum_series(scrape(c.ports().metrics),
                            "inferscope_collector_trace_write_errors_total") > 0;
        },
        30s))
        << "the trace store never hit the limit";
    std::this_thread::sleep_for(
        2500ms);  // at least two retries in fresh segments, both failing again
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
  EXPECT_TRUE(eventually(
      [&] {
        m = scrape(c.ports().metrics);
        return sum_series(m, "inferscope_collector_records_total", {"kind=\"counter\""}) +
                   sum_series(m, "inferscope_collector_records_total", {"kind=\"span\""}) ==
               static_cast<double>(produced);
      },
      30s))
      << "collector received " << sum_series(m, "inferscope_collector_records_total");
  const double write_errors = sum_series(m, "inferscope_collector_trace_write_errors_total");
  EXPECT_GT(write_errors, 0);
  EXPECT_GT(sum_series(m, "inferscope_collector_trace_blocks_written_total"), 0);

  c.child().signal(SIGTERM);
  EXPECT_EQ(c.child().wait(10s), std::optional<int>(0));
  BlockCount b = scan_dir(dir.path());
  TraceCount t = read_trace_dir(dir.path());
  std::printf(
      "[figures] full disk: %llu segments, %llu blocks, %llu frames kept, %.0f frames refused by "
      "the disk, "
      "largest segment %llu bytes (limit %llu)\n",
      (unsigned long long)b.segments, (unsigned long long)b.blocks, (unsigned long long)t.frames,
      write_errors, (unsigned long long)b.largest_file, (unsigned long long)kLimit);
  EXPECT_GE(b.segments, 2u) << "the store retries in a fresh segment";
  EXPECT_LE(b.largest_file, kLimit);
  EXPECT_EQ(b.torn_tails, 0u) << "a failed write must not leave a partial block";
  EXPECT_EQ(b.damaged_regions, 0u);
  EXPECT_EQ(t.corrupt_frames, 0u);
  EXPECT_EQ(t.undecodable_frames, 0u);
  EXPECT_EQ(t.segments_without_hello, 0u)
      << "every segment with data starts with the sources' hellos";
  // What reached the disk is what ingest saw minus what the disk refused.
  const uint64_t on_disk =
      t.records_of(wire::RecordKind::kSpan) + t.records_of(wire::RecordKind::kCounter);
  EXPECT_GT(on_disk, 0u);
  EXPECT_LT(on_disk, produced);
}

TEST(TraceFaults, KillDashNineKeepsEveryReportedBlockAndRestartCutsTheTornTail) {
  TempDir dir;
  constexpr int kRounds = 3;
  uint16_t port = 0;
  const std::vector<std::string> args{
      "--trace-dir",         dir.path(), "--trace-segment-bytes", "262144",
      "--trace-block-bytes", "16384",    "--trace-block-age",     "50ms"};
  auto collector = std::make_unique<CollectorProcess>(port, args);
  ASSERT_TRUE(collector->ok()) << collector->error();
  port = collector->ports().ingest;
  agent::Agent a(agent_config(collector->ingest_address()));
  Writer w(a, "reliab.kill9");
  uint64_t torn_seen = 0, cut_reported = 0, reported_total = 0, torn_by_test = 0;
  for (int round = 0; round < kRounds; ++round) {
    double reported = 0;
    ASSERT_TRUE(eventually(
        [&] {
          reported = sum_series(scrape(collector->ports().metrics),
                                "inferscope_collector_trace_blocks_written_total");
          return reported >= 20;
        },
        30s))
        << "round " << round << ": no blocks written";
    const BlockCount before = scan_dir(dir.path());
    collector->child().signal(SIGKILL);
    ASSERT_TRUE(collector->child().wait(5s).has_value());
    reported_total += static_cast<uint64_t>(reported);
    // Every block the daemon had reported (its metric lags its writes) is on disk and whole.
    BlockCount after_kill = scan_dir(dir.path());
    EXPECT_GE(after_kill.blocks, before.blocks);
    EXPECT_GE(after_kill.blocks + torn_by_test, reported_total);
    EXPECT_EQ(after_kill.damaged_regions, 0u);
    EXPECT_LE(after_kill.torn_tails, 1u) << "only the segment being written can be torn";
    const uint64_t whole_after_kill = after_kill.blocks, torn_by_kill = after_kill.torn_tails;
    if (after_kill.torn_tails == 0) {
      // A block goes out in one write(), so a kill rarely lands inside it: tear the
      // last block of the newest segment as a kill mid-write would have left it.
      const std::string last = collector::TraceStore::list_segments(dir.path()).back();
      wire::BlockScan scan;
      std::string error;
      ASSERT_TRUE(wire::scan_blocks(last, scan, error)) << error;
      ASSERT_FALSE(scan.blocks.empty());
      const auto& b = scan.blocks.back();
      std::filesystem::resize_file(last,
                                   b.offset + wire::kBlockHeaderBytes + b.header.stored_bytes / 2);
      after_kill = scan_dir(dir.path());
      ASSERT_EQ(after_kill.torn_tails, 1u);
      ++torn_by_test;
    }
    torn_seen += after_kill.torn_tails;
    std::printf(
        "[figures] kill -9 round %d: %.0f blocks reported by the killed daemon, %llu whole blocks "
        "on disk "
        "in all, %llu torn by the kill itself%s\n",
        round, reported, (unsigned long long)whole_after_kill, (unsigned long long)torn_by_kill,
        torn_by_kill ? "" : " (the test tore the last block instead)");

    collector =
        std::make_unique<CollectorProcess>(port, args);  // same directory: numbering continues
    ASSERT_TRUE(collector->ok()) << collector->error();
    Series m = scrape(collector->ports().metrics);
    cut_reported +=
        static_cast<uint64_t>(sum_series(m, "inferscope_collector_trace_torn_tails_cut_total"));
    const BlockCount restarted = scan_dir(dir.path());
    EXPECT_EQ(restarted.torn_tails, 0u) << "the restart cuts the torn tail";
    // (the new process may already be writing blocks into its new segment)
    uint64_t old_blocks = 0;
    for (size_t i = 0; i < after_kill.segments && i < restarted.blocks_per_segment.size(); ++i)
      old_blocks += restarted.blocks_per_segment[i];
    EXPECT_EQ(old_blocks, after_kill.blocks) << "and keeps every whole block";
    EXPECT_EQ(restarted.segments, after_kill.segments + 1) << "writing goes on in a new segment";
  }
  EXPECT_EQ(cut_reported, torn_seen);
  // The last segment receives blocks after the last restart.
  ASSERT_TRUE(eventually(
      [&] {
        return sum_series(scrape(collector->ports().metrics),
                          "inferscope_collector_trace_blocks_written_total") > 0;
      },
      30s));
  w.stop();
  ASSERT_TRUE(a.flush(10s));
  collector->child().signal(SIGTERM);
  EXPECT_EQ(collector->child().wait(10s), std::optional<int>(0));

  const BlockCount final_count = scan_dir(dir.path());
  TraceCount t = read_trace_dir(dir.path());
  EXPECT_EQ(final_count.torn_tails, 0u);
  EXPECT_GT(final_count.blocks_per_segment.back(), 0u);
  EXPECT_EQ(t.corrupt_frames, 0u);
  EXPECT_EQ(t.undecodable_frames, 0u);
  EXPECT_EQ(t.truncated_tails, 0u);
  EXPECT_GT(t.records_of(wire::RecordKind::kSpan), 10000u);
}

}  // namespace
}  // namespace inferscope::reliability
