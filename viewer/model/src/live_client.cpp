// Live client: blocking asio socket on its own thread, bounded hand-off queue.
#include "inferscope/viewer/live_client.hpp"

#include <sys/socket.h>

#include <asio.hpp>
#include <charconv>
#include <chrono>

#include "inferscope/wire/codec.hpp"

namespace inferscope::viewer {

bool parse_host_port(const std::string& text, std::string& host, uint16_t& port,
                     std::string& error) {
  std::string t = text;
  if (t.rfind("tcp://", 0) == 0) t = t.substr(6);
  auto colon = t.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= t.size()) {
    error = "expected host:port, got '" + text + "'";
    return false;
  }
  host = t.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  unsigned v = 0;
  auto [p, ec] = std::from_chars(t.data() + colon + 1, t.data() + t.size(), v);
  if (ec != std::errc() || p != t.data() + t.size() || v == 0 || v > 65535) {
    error = "bad port in '" + text + "'";
    return false;
  }
  port = static_cast<uint16_t>(v);
  return true;
}

struct LiveClient::Impl {
  asio::io_context io;
  std::unique_ptr<asio::ip::tcp::socket> socket;
  std::mutex mu;  // guards socket for stop()
};

LiveClient::LiveClient(LiveOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {}

LiveClient::~LiveClient() {
  stop();
}

void LiveClient::start() {
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { run(); });
}

void LiveClient::stop() {
  stop_ = true;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->socket) {
      asio::error_code ec;
      impl_->socket->shutdown(asio::ip::tcp::socket::shutdown_both, ec);
      impl_->socket->close(ec);
    }
  }
  if (thread_.joinable()) thread_.join();
}

std::string LiveClient::last_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void LiveClient::set_error(std::string e) {
  std::lock_guard<std::mutex> lock(mu_);
  error_ = std::move(e);
}

size_t LiveClient::drain(std::vector<std::pair<uint32_t, wire::Record>>& out, size_t max) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = std::min(max, queue_.size());
  for (size_t i = 0; i < n; ++i) {
    out.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  return n;
}

uint64_t LiveClient::fetch_range(int64_t from_ns, int64_t to_ns, int64_t resolution_ns,
                                 uint32_t max_records) {
  wire::RangeQuery q;
  q.from_ns = from_ns;
  q.to_ns = to_ns;
  q.resolution_ns = std::max<int64_t>(0, resolution_ns);
  q.max_records = max_records;
  {
    std::lock_guard<std::mutex> lock(mu_);
    q.query_id = next_query_id_++;
  }
  wire::FrameEncoder enc;
  enc.add(wire::Record(q));
  std::vector<uint8_t> bytes;
  enc.finish(bytes);
  // The socket thread blocks in a read; a send(2) on the same descriptor from
  // this thread is safe (full duplex), and impl_->mu keeps the socket alive.
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!impl_->socket || !connected_) return 0;
  const int fd = impl_->socket->native_handle();
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return 0;  // the socket thread sees the error and reconnects
    sent += static_cast<size_t>(n);
  }
  std::lock_guard<std::mutex> state_lock(mu_);
  range_.last_sent = q.query_id;
  range_.in_flight = true;
  return q.query_id;
}

LiveClient::RangeState LiveClient::range_state() const {
  std::lock_guard<std::mutex> lock(mu_);
  return range_;
}

void LiveClient::run() {
  using asio::ip::tcp;
  int backoff = options_.reconnect_ms;
  bool first = true;
  while (!stop_) {
    if (!first) {
      ++reconnects_;
      for (int waited = 0; waited < backoff && !stop_; waited += 50)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      backoff = std::min(backoff * 2, options_.max_reconnect_ms);
      if (stop_) break;
    }
    first = false;
    try {
      tcp::resolver resolver(impl_->io);
      auto endpoints = resolver.resolve(options_.host, std::to_string(options_.port));
      auto sock = std::make_unique<tcp::socket>(impl_->io);
      asio::connect(*sock, endpoints);
      {
        std::lock_guard<std::mutex> lock(impl_->mu);
        if (stop_) break;
        impl_->socket = std::move(sock);
      }
      tcp::socket& s = *impl_->socket;
      // Introduce ourselves (the collector may require the auth token).
      wire::Hello hello;
      hello.service = "inferscope-viewer";
      hello.instance = "inferscope-viewer";
      hello.auth_token = options_.auth_token;
      wire::FrameEncoder enc;
      enc.add(wire::Record(hello));
      std::vector<uint8_t> out;
      enc.finish(out);
      asio::write(s, asio::buffer(out));
      connected_ = true;  // last_error() keeps the previous failure for the UI
      backoff = options_.reconnect_ms;

      wire::FrameDecoder decoder;
      std::vector<uint8_t> buf;
      size_t begin = 0;
      std::vector<std::pair<uint32_t, wire::Record>> batch;
      std::array<uint8_t, 64 * 1024> chunk;
      while (!stop_) {
        size_t n = s.read_some(asio::buffer(chunk));
        buf.insert(buf.end(), chunk.begin(), chunk.begin() + static_cast<long>(n));
        while (true) {
          size_t frame_bytes = 0;
          std::span<const uint8_t> avail(buf.data() + begin, buf.size() - begin);
          wire::DecodeStatus st = decoder.frame_size(avail, frame_bytes);
          if (st.error == wire::DecodeError::kNeedMoreData) break;
          if (!st.ok()) throw std::runtime_error("bad stream from collector: " + st.message);
          st = decoder.open(avail.first(frame_bytes));
          begin += frame_bytes;
          ++frames_;
          if (!st.ok()) {
            set_error("skipped a bad frame: " + st.message);
            continue;
          }
          uint32_t source = decoder.header().source_id;
          wire::Record rec;
          while (decoder.next(rec)) batch.emplace_back(source, std::move(rec));
          if (!decoder.status().ok()) set_error("bad record: " + decoder.status().message);
        }
        if (begin > 0 && begin * 2 >= buf.size()) {
          buf.erase(buf.begin(), buf.begin() + static_cast<long>(begin));
          begin = 0;
        }
        if (!batch.empty()) {
          std::lock_guard<std::mutex> lock(mu_);
          for (auto& r : batch) {
            if (auto* end = std::get_if<wire::RangeEnd>(&r.second)) {
              range_.last_end = *end;
              if (end->query_id == range_.last_sent) range_.in_flight = false;
            }
            // Hellos and strings are always kept: without them later records are unreadable.
            auto kind = wire::kind_of(r.second);
            bool essential =
                kind == wire::RecordKind::kHello || kind == wire::RecordKind::kStringDef;
            if (queue_.size() >= options_.max_queued_records && !essential) {
              ++dropped_;
              continue;
            }
            queue_.push_back(std::move(r));
            ++records_;
          }
          batch.clear();
        }
      }
    } catch (const std::exception& e) {
      if (!stop_) set_error(std::string("collector ") + endpoint() + ": " + e.what());
    }
    connected_ = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      range_.in_flight = false;  // a reply still owed is lost with the connection
    }
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->socket.reset();
  }
  connected_ = false;
}

}  // namespace inferscope::viewer
