// The agent's books close in every case a user can misconfigure: every record
// the host hands over ends delivered, dropped, unconfirmed or undelivered
// (agent.hpp, Stats), whether the collector was up, never there, or the
// address pointed at something that is not a collector at all.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>

#include "inferscope/agent.hpp"
#include "test_collector.hpp"

namespace inferscope::agent {
namespace {

using namespace std::chrono_literals;
using testing::TestCollector;

Config config_for(const std::string& address) {
  Config c;
  c.collector = address;
  c.service = "accounting";
  c.flush_interval = 5ms;
  c.reconnect_max_backoff = 50ms;
  c.shutdown_timeout = 300ms;
  c.nvtx = false;
  return c;
}

uint64_t accounted(const Stats& s) {
  return s.records_delivered + s.records_dropped + s.records_unconfirmed + s.records_undelivered;
}

// A loopback listener that answers every connection the way a server of some
// other protocol would (or not at all), counting the connections it accepts.
class WrongPeer {
 public:
  explicit WrongPeer(std::string answer) : answer_(std::move(answer)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(fd_, 16);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~WrongPeer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  std::string address() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  int accepted() const { return accepted_; }

 private:
  void run() {
    while (!stop_) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      ++accepted_;
      char buf[4096];
      if (!answer_.empty()) {
        // An HTTP server: read the request's first bytes, answer, close.
        (void)::recv(c, buf, sizeof buf, 0);
        (void)::send(c, answer_.data(), answer_.size(), MSG_NOSIGNAL);
        ::close(c);
      } else {
        // A silent sink: reads everything, never answers.
        std::thread([c] {
          char b[4096];
          while (::recv(c, b, sizeof b, 0) > 0) {
          }
          ::close(c);
        }).detach();
      }
    }
  }
  std::string answer_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

TEST(AgentAccounting, DeliveredWhenTheCollectorAcknowledges) {
  TestCollector collector;
  Agent agent(config_for(collector.address()));
  const uint32_t name = intern("accounting.delivered");
  for (int i = 0; i < 2000; ++i) agent.counter(name, 1);
  ASSERT_TRUE(agent.flush(30s));
  const Stats s = agent.shutdown();
  EXPECT_EQ(s.records_recorded, 2000u);
  EXPECT_EQ(s.records_sent, 2000u);
  EXPECT_EQ(s.records_delivered, 2000u);
  EXPECT_EQ(s.records_undelivered, 0u);
  EXPECT_EQ(s.records_unconfirmed, 0u);
  EXPECT_EQ(s.protocol_errors, 0u);
  EXPECT_EQ(accounted(s), s.records_recorded);
}

// Nobody listens for the whole run: the 2000 records are not lost silently,
// they are reported undelivered when the agent shuts down.
TEST(AgentAccounting, NeverConnectedRecordsAreReportedUndelivered) {
  int port = 0;
  {
    WrongPeer probe("x");  // a port that was free a moment ago
    port = std::stoi(probe.address().substr(probe.address().rfind(':') + 1));
  }
  Agent agent(config_for("tcp://127.0.0.1:" + std::to_string(port)));
  const uint32_t name = intern("accounting.never");
  for (int i = 0; i < 2000; ++i) agent.counter(name, 1);
  const Stats s = agent.shutdown();
  EXPECT_EQ(s.records_recorded, 2000u);
  EXPECT_EQ(s.records_sent, 0u);
  EXPECT_EQ(s.records_delivered, 0u);
  EXPECT_EQ(s.records_undelivered, 2000u);
  EXPECT_EQ(accounted(s), s.records_recorded);
}

// An HTTP server on the collector's address (Prometheus's own port, say): the
// agent recognises the answer as not an acknowledgement, says so once, counts
// it, and stops hammering it (no 20 reconnects a second).
TEST(AgentAccounting, HttpServerIsRecognisedAsNotACollector) {
  WrongPeer http("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
  Config cfg = config_for(http.address());
  cfg.protocol_error_backoff = 60s;  // longer than the test: exactly one connection
  ::testing::internal::CaptureStderr();
  Stats s;
  {
    Agent agent(cfg);
    const uint32_t name = intern("accounting.http");
    for (int i = 0; i < 500; ++i) agent.counter(name, 1);
    agent.flush(5s);
    for (int i = 0; i < 200 && agent.stats().protocol_errors == 0; ++i)
      std::this_thread::sleep_for(50ms);
    for (int i = 0; i < 500; ++i) agent.counter(name, 1);
    agent.flush(100ms);
    s = agent.shutdown();
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(s.protocol_errors, 1u);
  EXPECT_EQ(http.accepted(), 1) << "the agent came back before its protocol-error backoff";
  EXPECT_EQ(s.records_delivered, 0u);
  EXPECT_EQ(accounted(s), s.records_recorded);
  EXPECT_EQ(s.records_recorded, 1000u);
  EXPECT_NE(err.find("not an inferscope collector"), std::string::npos) << err;
  EXPECT_NE(err.find(http.address()), std::string::npos) << err;
  EXPECT_NE(err.find("HTTP/1.1 400"), std::string::npos) << err;
  // Said once, not once per attempt.
  EXPECT_EQ(err.find("not an inferscope collector"), err.rfind("not an inferscope collector"))
      << err;
}

// A peer that takes everything and never answers: the acknowledgement
// deadline tells it apart from a collector.
TEST(AgentAccounting, SilentPeerIsRecognisedByTheAcknowledgementDeadline) {
  WrongPeer silent("");
  Config cfg = config_for(silent.address());
  cfg.ack_timeout = 200ms;
  cfg.protocol_error_backoff = 60s;
  ::testing::internal::CaptureStderr();
  Stats s;
  {
    Agent agent(cfg);
    const uint32_t name = intern("accounting.silent");
    for (int i = 0; i < 1000; ++i) agent.counter(name, 1);
    for (int i = 0; i < 600 && agent.stats().protocol_errors == 0; ++i)
      std::this_thread::sleep_for(50ms);
    s = agent.shutdown();
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(s.protocol_errors, 1u);
  EXPECT_EQ(silent.accepted(), 1);
  EXPECT_EQ(s.records_delivered, 0u);
  // Written to the silent peer, never acknowledged: in doubt, not silently gone.
  EXPECT_EQ(s.records_unconfirmed + s.records_undelivered, 1000u);
  EXPECT_EQ(accounted(s), s.records_recorded);
  EXPECT_NE(err.find("no acknowledgement within 200 ms"), std::string::npos) << err;
}

}  // namespace
}  // namespace inferscope::agent
