// A small real collector for the agent's tests: an asio server on loopback
// (TCP port 0 or a Unix socket) that decodes every frame with the wire
// library's FrameDecoder and keeps the records, per connection, in order.
// Like the collector, it acknowledges the bytes of whole frames it has read
// (wire/ack.hpp) and skips a re-sent frame whose FrameSequence it has already
// applied; FrameSequence records themselves are not kept. It can also "stall":
// accept connections and never read from them (nor acknowledge).
#pragma once

#include <unistd.h>

#include <array>
#include <asio.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "inferscope/wire/ack.hpp"
#include "inferscope/wire/codec.hpp"

namespace inferscope::agent::testing {

class TestCollector {
 public:
  enum class Mode { kRead, kStall };

  // Binds 127.0.0.1:port (0 = any free port) or, with a path, a Unix socket.
  explicit TestCollector(Mode mode = Mode::kRead, uint16_t port = 0, std::string unix_path = "")
      : mode_(mode), unix_path_(std::move(unix_path)) {
    if (unix_path_.empty()) {
      tcp_ = std::make_unique<asio::ip::tcp::acceptor>(
          io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
      port_ = tcp_->local_endpoint().port();
      accept_tcp();
    } else {
      ::unlink(unix_path_.c_str());
      unix_ = std::make_unique<asio::local::stream_protocol::acceptor>(
          io_, asio::local::stream_protocol::endpoint(unix_path_));
      accept_unix();
    }
    thread_ = std::thread([this] { io_.run(); });
  }

  ~TestCollector() {
    asio::post(io_, [this] {
      asio::error_code ec;
      if (tcp_) tcp_->close(ec);
      if (unix_) unix_->close(ec);
      for (auto& c : conns_) c->close();
      io_.stop();
    });
    thread_.join();
    if (!unix_path_.empty()) ::unlink(unix_path_.c_str());
  }

  uint16_t port() const { return port_; }
  std::string address() const {
    return unix_path_.empty() ? "tcp://127.0.0.1:" + std::to_string(port_) : "unix://" + unix_path_;
  }

  // All records of all connections, in arrival order.
  // Re-sent frames it skipped (already applied for their stream).
  uint64_t duplicate_frames() const {
    std::lock_guard lock(mu_);
    return duplicate_frames_;
  }
  std::vector<wire::Record> records() const {
    std::lock_guard lock(mu_);
    return records_;
  }
  // Records of each connection separately.
  std::vector<std::vector<wire::Record>> by_connection() const {
    std::lock_guard lock(mu_);
    return by_conn_;
  }
  size_t connections() const {
    std::lock_guard lock(mu_);
    return by_conn_.size();
  }
  std::string error() const {
    std::lock_guard lock(mu_);
    return error_;
  }

  // Waits until pred(records) is true or the timeout passes; returns pred's last value.
  bool wait_for(const std::function<bool(const std::vector<wire::Record>&)>& pred,
                std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(records_); });
  }
  // Waits until the peer of connection i has closed it: everything it sent is here.
  bool wait_closed(size_t i, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return closed_.size() > i && closed_[i]; });
  }
  // Same, with the records of each connection.
  bool wait_for_connections(
      const std::function<bool(const std::vector<std::vector<wire::Record>>&)>& pred,
      std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(by_conn_); });
  }

 private:
  struct Conn : std::enable_shared_from_this<Conn> {
    TestCollector* owner;
    size_t index;
    std::function<void()> close;
    std::vector<uint8_t> buf;
    std::array<uint8_t, 65536> chunk{};
    wire::FrameDecoder decoder;
    uint64_t processed = 0;  // stream bytes of whole frames, for the acknowledgement
    wire::AckBytes ack{};
  };

  template <typename Socket>
  void serve(std::shared_ptr<Socket> sock) {
    auto c = std::make_shared<Conn>();
    c->owner = this;
    {
      std::lock_guard lock(mu_);
      c->index = by_conn_.size();
      by_conn_.emplace_back();
      closed_.push_back(false);
    }
    std::weak_ptr<Socket> weak = sock;
    c->close = [weak] {
      if (auto s = weak.lock()) {
        asio::error_code ec;
        s->close(ec);
      }
    };
    conns_.push_back(c);
    held_.push_back(sock);
    if (mode_ == Mode::kStall) return;  // never read: the agent's writes back up
    read(sock, c);
  }

  template <typename Socket>
  void read(std::shared_ptr<Socket> sock, std::shared_ptr<Conn> c) {
    sock->async_read_some(asio::buffer(c->chunk), [this, sock, c](asio::error_code ec, size_t n) {
      if (ec) {
        std::lock_guard lock(mu_);
        closed_[c->index] = true;
        cv_.notify_all();
        return;
      }
      c->buf.insert(c->buf.end(), c->chunk.begin(), c->chunk.begin() + n);
      const uint64_t before = c->processed;
      consume(*c);
      if (c->processed != before) {
        // Acknowledge like the collector does (wire/ack.hpp); 16 bytes on loopback.
        c->ack = wire::encode_ack(c->processed);
        asio::error_code wec;
        asio::write(*sock, asio::buffer(c->ack), wec);
      }
      read(sock, c);
    });
  }

  void consume(Conn& c) {
    size_t off = 0;
    std::vector<wire::Record> got;
    for (;;) {
      size_t frame = 0;
      std::span<const uint8_t> rest(c.buf.data() + off, c.buf.size() - off);
      auto st = c.decoder.frame_size(rest, frame);
      if (st.error == wire::DecodeError::kNeedMoreData) break;
      if (!st.ok()) {
        set_error(st.message);
        c.buf.clear();
        return;
      }
      std::vector<wire::Record> recs;
      auto ds = wire::decode_frame(rest.first(frame), recs);
      if (!ds.ok()) set_error(ds.message);
      off += frame;
      c.processed += frame;
      // A frame re-sent after a reconnect is skipped, as the collector does.
      if (!recs.empty()) {
        if (auto* seq = std::get_if<wire::FrameSequence>(&recs.front())) {
          std::lock_guard lock(mu_);
          uint64_t& last = last_seq_[seq->stream];
          if (seq->seq <= last) {
            ++duplicate_frames_;
            continue;
          }
          last = seq->seq;
          recs.erase(recs.begin());
        }
      }
      for (auto& r : recs) got.push_back(std::move(r));
    }
    c.buf.erase(c.buf.begin(), c.buf.begin() + static_cast<std::ptrdiff_t>(off));
    if (got.empty()) return;
    std::lock_guard lock(mu_);
    for (auto& r : got) {
      records_.push_back(r);
      by_conn_[c.index].push_back(std::move(r));
    }
    cv_.notify_all();
  }

  void set_error(const std::string& e) {
    std::lock_guard lock(mu_);
    if (error_.empty()) error_ = e;
  }

  void accept_tcp() {
    tcp_->async_accept([this](asio::error_code ec, asio::ip::tcp::socket s) {
      if (ec) return;
      serve(std::make_shared<asio::ip::tcp::socket>(std::move(s)));
      accept_tcp();
    });
  }
  void accept_unix() {
    unix_->async_accept([this](asio::error_code ec, asio::local::stream_protocol::socket s) {
      if (ec) return;
      serve(std::make_shared<asio::local::stream_protocol::socket>(std::move(s)));
      accept_unix();
    });
  }

  Mode mode_;
  std::map<uint64_t, uint64_t> last_seq_;  // stream -> last frame applied (mu_)
  uint64_t duplicate_frames_ = 0;          // mu_
  std::string unix_path_;
  uint16_t port_ = 0;
  asio::io_context io_;
  std::unique_ptr<asio::ip::tcp::acceptor> tcp_;
  std::unique_ptr<asio::local::stream_protocol::acceptor> unix_;
  std::vector<std::shared_ptr<Conn>> conns_;
  std::vector<std::shared_ptr<void>> held_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<wire::Record> records_;
  std::vector<std::vector<wire::Record>> by_conn_;
  std::vector<bool> closed_;  // the peer closed connection i (an agent that shut down)
  std::string error_;
  std::thread thread_;
};

// Records of one kind, in order.
template <typename T>
std::vector<T> only(const std::vector<wire::Record>& records) {
  std::vector<T> out;
  for (const auto& r : records)
    if (auto* p = std::get_if<T>(&r)) out.push_back(*p);
  return out;
}

}  // namespace inferscope::agent::testing
