// A collector that stops reading. Two forms: the real collector frozen with
// SIGSTOP (then thawed), and a peer that accepts and never reads at all. The
// agent's memory stays within its configured bounds, no host call waits, and
// when the collector thaws the books close exactly: received + dropped = recorded.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "harness.hpp"
#include "host_blocking.hpp"
#include "inferscope/agent.hpp"

namespace inferscope::reliability {
namespace {

constexpr size_t kThreadBuffer = 256u << 10;
constexpr size_t kMaxPending = 2u << 20;
constexpr size_t kFrameBudget = 256u << 10;  // the agent's data frame size (shipper.cpp)

agent::Config agent_config(const std::string& address) {
  agent::Config c;
  c.collector = address;
  c.service = "reliability";
  c.model.name = "reliab-stall";
  c.model.top_k = 2;
  c.model.layers.push_back({wire::LayerKind::kAttention, wire::FfnKind::kMoe, 16});
  c.flush_interval = 5ms;
  c.reconnect_max_backoff = 200ms;
  c.thread_buffer_bytes = kThreadBuffer;
  c.max_pending_bytes = kMaxPending;
  c.shutdown_timeout = 500ms;
  c.nvtx = false;
  return c;
}

// Host threads recording as fast as they can (no sleeps: the worst case for
// the buffers). Each counts the voluntary context switches inside its batches
// of calls (host_blocking.hpp): a call that waited on the network, a lock or
// a full buffer would give up the CPU there, while a thread preempted on a
// busy machine does not. Latencies are timed too, but only printed.
struct Hammer {
  static constexpr int kThreads = 2;
  static constexpr int kBatch = 4096;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> calls{0};
  std::atomic<int64_t> max_call_ns{0};
  std::atomic<uint64_t> calls_over_1ms{0};
  std::atomic<uint64_t> voluntary_switches{0};
  std::atomic<uint64_t> involuntary_switches{0};
  std::atomic<uint64_t> blocked_batches{0};     // waited without a page fault: the agent blocked
  std::atomic<uint64_t> fault_wait_batches{0};  // waited inside a page fault (the kernel's doing)
  std::vector<std::thread> threads;

  explicit Hammer(agent::Agent& a) {
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([this, &a, t] {
        const uint32_t name = agent::intern("reliab.stall.span." + std::to_string(t));
        std::vector<uint32_t> routed(16, 4);
        a.span(name, 1, 2, wire::SpanCategory::kCpuRange,
               0);  // the thread's ring exists before counting
        int64_t local_max = 0;
        uint64_t n = 1, slow = 0;
        test_support::BlockingMeter meter;
        while (!stop.load(std::memory_order_relaxed)) {
          meter.begin();
          for (int i = 0; i < kBatch; ++i, ++n) {
            const auto t0 = Clock::now();
            if (n % 8 == 0)
              a.expert_load(n, 0, routed, 32, 0);
            else
              a.span(name, 1, 2, wire::SpanCategory::kCpuRange, n);
            const int64_t ns =
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
            local_max = std::max(local_max, ns);
            slow += ns > 1'000'000;
          }
          meter.end();
          std::this_thread::yield();  // outside the measured batch
        }
        calls += n;
        calls_over_1ms += slow;
        voluntary_switches += meter.voluntary();
        involuntary_switches += meter.involuntary();
        blocked_batches += meter.blocked_batches();
        fault_wait_batches += meter.fault_wait_batches();
        int64_t prev = max_call_ns.load();
        while (prev < local_max && !max_call_ns.compare_exchange_weak(prev, local_max)) {
        }
      });
  }
  void join() {
    stop = true;
    for (auto& t : threads) t.join();
    threads.clear();
  }
  ~Hammer() {
    if (!threads.empty()) join();
  }
};

TEST(Stall, FrozenCollectorBoundsAgentMemoryThenBooksCloseExactly) {
  CollectorProcess c(0, {});
  ASSERT_TRUE(c.ok()) << c.error();
  const uint64_t rss_before = rss_kib(::getpid());
  uint64_t calls = 0;
  agent::Stats frozen{}, final{};
  int64_t max_call_ns = 0;
  uint64_t calls_over_1ms = 0, voluntary = 0, involuntary = 0, blocked = 0, fault_waits = 0;
  {
    agent::Agent a(agent_config(c.ingest_address()));
    ASSERT_TRUE(eventually([&] { return a.stats().connected; }, 30s));
    Hammer h(a);
    std::this_thread::sleep_for(300ms);
    c.child().signal(SIGSTOP);  // the collector stops reading; its socket buffers fill up
    // Long enough to overflow the bounds however slowly a loaded machine runs the hammer.
    EXPECT_TRUE(eventually([&] { return a.stats().records_dropped > 0; }, 60s));
    std::this_thread::sleep_for(1s);
    frozen = a.stats();
    const uint64_t rss_frozen = rss_kib(::getpid());
    c.child().signal(SIGCONT);
    h.join();
    calls = h.calls;
    max_call_ns = h.max_call_ns;
    calls_over_1ms = h.calls_over_1ms;
    voluntary = h.voluntary_switches;
    involuntary = h.involuntary_switches;
    blocked = h.blocked_batches;
    fault_waits = h.fault_wait_batches;
    ASSERT_TRUE(a.flush(60s));
    final = a.stats();
    std::printf(
        "[figures] frozen collector: %llu host calls, max %.1f us, %llu over 1 ms, context "
        "switches "
        "inside the calls %llu voluntary (%llu batches blocked, %llu waited in a page fault) / "
        "%llu "
        "involuntary; pending high water "
        "%llu KiB (bound %zu KiB + one %zu KiB frame); ring high water %llu KiB (bound %zu KiB); "
        "process RSS %llu -> %llu KiB; %llu recorded %llu sent %llu dropped\n",
        (unsigned long long)calls, static_cast<double>(max_call_ns) / 1e3,
        (unsigned long long)calls_over_1ms, (unsigned long long)voluntary,
        (unsigned long long)blocked, (unsigned long long)fault_waits,
        (unsigned long long)involuntary, (unsigned long long)frozen.pending_high_water_bytes >> 10,
        kMaxPending >> 10, kFrameBudget >> 10,
        (unsigned long long)frozen.buffer_high_water_bytes >> 10, kThreadBuffer >> 10,
        (unsigned long long)rss_before, (unsigned long long)rss_frozen,
        (unsigned long long) final.records_recorded, (unsigned long long) final.records_sent,
        (unsigned long long) final.records_dropped);
    // The agent holds at most its queue bound plus one frame being sealed, and
    // each thread ring at most its size, however long the stall lasts.
    EXPECT_TRUE(frozen.connected) << "a stall is not a disconnect";
    EXPECT_GT(frozen.records_dropped, 0u) << "the stall was long enough to overflow the bounds";
    EXPECT_LE(frozen.pending_high_water_bytes, kMaxPending + kFrameBudget);
    EXPECT_LE(frozen.buffer_high_water_bytes, kThreadBuffer);
    // Process memory: the agent's bounds plus slack for the collector's scrape, never the stall's
    // length.
    EXPECT_LT(rss_frozen,
              rss_before + (kMaxPending + Hammer::kThreads * kThreadBuffer) / 1024 + 32 * 1024);
  }
  // No call waited (on the network, a lock, a full buffer): no batch of host
  // calls gave up the CPU outside a page fault (host_blocking.hpp). Preemption on
  // a busy machine is involuntary and does not count; latencies are printed only.
  EXPECT_EQ(blocked, 0u) << "host calls gave up the CPU to wait";

  // Exact books: every call was either received by the collector or counted as a drop.
  EXPECT_EQ(final.records_sent + final.records_dropped, calls);
  Series m;
  EXPECT_TRUE(eventually(
      [&] {
        m = scrape(c.ports().metrics);
        return sum_series(m, "inferscope_agent_records_sent_total", {"model=\"reliab-stall\""}) ==
               static_cast<double>(final.records_sent);
      },
      30s));
  const double received =
      sum_series(m, "inferscope_collector_records_total", {"kind=\"span\""}) +
      sum_series(m, "inferscope_collector_records_total", {"kind=\"expert_load\""});
  const double dropped =
      sum_series(m, "inferscope_agent_records_dropped_total", {"model=\"reliab-stall\""});
  EXPECT_EQ(received, static_cast<double>(final.records_sent));
  EXPECT_EQ(dropped, static_cast<double>(final.records_dropped));
  EXPECT_EQ(received + dropped, static_cast<double>(calls));
}

// A peer that accepts and never reads: the agent never gets through, so its
// shutdown must end on its own timeout (the peer never unblocks it: were the
// destructor to wait for the peer, the test would hang until ctest's timeout),
// the host's calls never wait, and the process must not grow.
TEST(Stall, PeerThatNeverReadsCannotHoldTheHost) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  int small = 16 * 1024;
  ::setsockopt(listener, SOL_SOCKET, SO_RCVBUF, &small,
               sizeof small);  // inherited by accepted sockets
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  const uint16_t port = ntohs(addr.sin_port);
  // The kernel completes the handshake from the backlog: nobody even accepts.

  const uint64_t rss_before = rss_kib(::getpid());
  Clock::time_point destroy_start;
  int64_t max_call_ns = 0;
  uint64_t voluntary = 0, blocked = 0;
  {
    agent::Agent a(agent_config("tcp://127.0.0.1:" + std::to_string(port)));
    Hammer h(a);
    // Until the queue for the peer is full: the kernel's buffers are full too.
    EXPECT_TRUE(eventually([&] { return a.stats().pending_high_water_bytes >= kMaxPending; }, 60s));
    h.join();
    max_call_ns = h.max_call_ns;
    voluntary = h.voluntary_switches;
    blocked = h.blocked_batches;
    const agent::Stats s = a.stats();
    EXPECT_LE(s.pending_high_water_bytes, kMaxPending + kFrameBudget);
    EXPECT_LE(s.buffer_high_water_bytes, kThreadBuffer);
    EXPECT_GT(s.records_dropped, 0u);
    EXPECT_LT(rss_kib(::getpid()),
              rss_before + (kMaxPending + Hammer::kThreads * kThreadBuffer) / 1024 + 32 * 1024);
    EXPECT_FALSE(a.flush(50ms));
    destroy_start = Clock::now();
  }
  const auto shutdown = Clock::now() - destroy_start;
  ::close(listener);
  std::printf(
      "[figures] never-reading peer: shutdown took %.0f ms (timeout 500 ms), max host call %.1f "
      "us, "
      "%llu voluntary context switches inside host calls, %llu batches blocked\n",
      std::chrono::duration<double, std::milli>(shutdown).count(),
      static_cast<double>(max_call_ns) / 1e3, (unsigned long long)voluntary,
      (unsigned long long)blocked);
  EXPECT_EQ(blocked, 0u) << "host calls gave up the CPU to wait";
}

}  // namespace
}  // namespace inferscope::reliability
