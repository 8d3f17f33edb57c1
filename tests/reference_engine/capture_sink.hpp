// A loopback TCP sink that captures what one agent sends and decodes it with
// the wire library (shared by the engine's telemetry tests).
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "inferscope/wire/codec.hpp"

namespace inferscope_test {

namespace wire = inferscope::wire;

class CaptureSink {
 public:
  CaptureSink() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 4), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      char buf[65536];
      ssize_t n;
      while ((n = ::read(c, buf, sizeof buf)) > 0) {
        std::lock_guard lock(mu_);
        bytes_.insert(bytes_.end(), buf, buf + n);
      }
      ::close(c);
    });
  }
  ~CaptureSink() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    if (thread_.joinable()) thread_.join();
  }
  // Waits until the agent closed its connection and everything was read.
  void wait() { thread_.join(); }
  int port() const { return port_; }
  std::vector<wire::Record> records() {
    std::lock_guard lock(mu_);
    std::vector<wire::Record> out;
    wire::FrameDecoder dec;
    std::span<const uint8_t> rest(bytes_);
    size_t n = 0;
    while (!rest.empty() && dec.frame_size(rest, n).ok()) {
      std::vector<wire::Record> frame;
      EXPECT_TRUE(wire::decode_frame(rest.first(n), frame).ok());
      out.insert(out.end(), frame.begin(), frame.end());
      rest = rest.subspan(n);
    }
    return out;
  }

 private:
  int fd_ = -1, port_ = 0;
  std::mutex mu_;
  std::vector<uint8_t> bytes_;
  std::thread thread_;
};

}  // namespace inferscope_test
