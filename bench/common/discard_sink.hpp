// A collector stand-in for the agent benchmarks: accepts loopback connections and reads and
// discards what arrives (acknowledging it), so shipping costs what a real socket costs without a
// decoder in the measurement. One io thread; bytes() counts what was read.
#pragma once

#include <array>
#include <asio.hpp>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "inferscope/wire/ack.hpp"

namespace inferscope::bench {

class DiscardSink {
 public:
  DiscardSink() : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~DiscardSink() {
    asio::post(io_, [this] { io_.stop(); });
    thread_.join();
  }
  DiscardSink(const DiscardSink&) = delete;
  DiscardSink& operator=(const DiscardSink&) = delete;

  std::string address() const {
    return "tcp://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }
  uint64_t bytes() const { return bytes_; }

 private:
  struct Conn {
    explicit Conn(asio::ip::tcp::socket s) : socket(std::move(s)) {}
    asio::ip::tcp::socket socket;
    std::array<uint8_t, 1 << 16> buf{};
    uint64_t read_total = 0;
  };
  void accept() {
    acceptor_.async_accept([this](asio::error_code ec, asio::ip::tcp::socket s) {
      if (ec) return;
      auto c = std::make_shared<Conn>(std::move(s));
      read(c);
      accept();
    });
  }
  void read(std::shared_ptr<Conn> c) {
    c->socket.async_read_some(asio::buffer(c->buf), [this, c](asio::error_code ec, size_t n) {
      if (ec) return;
      bytes_ += n;
      // Acknowledged like a collector (an agent that hears nothing for 10 s disconnects from a
      // peer it takes for something else). The count may end inside a frame: the agent then
      // confirms only the frames before it.
      c->read_total += n;
      const wire::AckBytes ack = wire::encode_ack(c->read_total);
      asio::write(c->socket, asio::buffer(ack), ec);
      read(c);
    });
  }
  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  std::atomic<uint64_t> bytes_{0};
  std::thread thread_;
};

}  // namespace inferscope::bench
