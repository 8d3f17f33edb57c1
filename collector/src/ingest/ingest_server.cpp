#include "inferscope/collector/ingest_server.hpp"

#include "tcp_acceptor.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace inferscope::collector {

namespace {
constexpr size_t kReadChunk = 64 * 1024;
}

// One agent connection. The socket is type-erased behind two std::functions so
// that TCP and Unix sockets share the framing code.
struct IngestServer::Connection : std::enable_shared_from_this<IngestServer::Connection> {
  Connection(IngestServer& server, std::string peer)
      : server(server), session(server.options_.limits) {
    session.peer = std::move(peer);
    buffer.resize(kReadChunk);
  }

  IngestServer& server;
  Session session;
  std::chrono::steady_clock::time_point connected_at = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point partial_since{};  // when unconsumed bytes appeared
  std::vector<uint8_t> buffer;
  size_t begin = 0, end = 0;  // unconsumed bytes are buffer[begin, end)
  bool closed = false;
  std::function<void(asio::mutable_buffer, std::function<void(std::error_code, size_t)>)> read_some;
  std::function<void()> close_socket;

  void start() { read(); }

  void read() {
    if (closed) return;
    // Room for the next chunk; compact first so the buffer stays bounded.
    if (begin > 0) {
      std::memmove(buffer.data(), buffer.data() + begin, end - begin);
      end -= begin;
      begin = 0;
    }
    if (buffer.size() - end < kReadChunk / 4) buffer.resize(std::max(buffer.size(), end + kReadChunk));
    auto self = shared_from_this();
    read_some(asio::buffer(buffer.data() + end, buffer.size() - end),
              [self](std::error_code ec, size_t n) { self->on_read(ec, n); });
  }

  void on_read(std::error_code ec, size_t n) {
    if (closed) return;
    if (ec) {
      if (end > begin) {
        // The peer went away inside a frame (it died mid-write): count the torn frame.
        server.metrics_.rejected("truncated").Increment();
        if (server.log_)
          server.log_("connection " + session.peer + " closed inside a frame (" +
                      std::to_string(end - begin) + " bytes of it received)");
      }
      shutdown();
      return;
    }
    if (end == begin) partial_since = std::chrono::steady_clock::now();
    end += n;
    server.metrics_.bytes_received.Increment(static_cast<double>(n));
    bool completed = false;
    while (true) {
      std::span<const uint8_t> avail(buffer.data() + begin, end - begin);
      size_t frame_bytes = 0;
      auto st = session.decoder.frame_size(avail, frame_bytes);
      if (st.error == wire::DecodeError::kNeedMoreData) {
        // Grow to hold the whole frame once its header says how big it is
        // (frame_size already checked it against the limit).
        if (avail.size() >= wire::kFrameHeaderBytes) {
          uint32_t payload = 0;
          std::memcpy(&payload, avail.data() + 8, 4);  // little-endian hosts only (x86, arm64)
          const size_t need = wire::kFrameHeaderBytes + payload;
          if (begin + need > buffer.size()) {
            if (begin > 0) {
              std::memmove(buffer.data(), buffer.data() + begin, end - begin);
              end -= begin;
              begin = 0;
            }
            if (need > buffer.size()) buffer.resize(need);
          }
        }
        break;
      }
      if (!st.ok()) {
        Rejection why;
        server.metrics_.rejected(rejection_reason(st.error)).Increment();
        if (server.log_) server.log_("closing " + session.peer + ": " + st.message);
        shutdown();
        return;
      }
      Rejection why;
      if (!server.pipeline_.on_frame(session, avail.first(frame_bytes), why)) {
        shutdown();
        return;
      }
      begin += frame_bytes;
      completed = true;
      if (begin == end) begin = end = 0;
    }
    // Shrink a buffer grown for one large frame once it is consumed.
    if (begin == end && buffer.size() > 4 * kReadChunk) {
      buffer.resize(kReadChunk);
      buffer.shrink_to_fit();
      begin = end = 0;
    }
    if (completed && end > begin) partial_since = std::chrono::steady_clock::now();  // a new frame started
    read();
  }

  // The reason to close it now, or nullptr.
  const char* overdue(std::chrono::steady_clock::time_point now) const {
    const auto& limits = server.options_.limits;
    if (session.source_id == 0 && now - connected_at > limits.hello_timeout) return "no hello in time";
    if (end > begin && now - partial_since > limits.frame_timeout) return "frame not completed in time";
    return nullptr;
  }

  void shutdown() {
    if (closed) return;
    closed = true;
    server.pipeline_.on_close(session);
    close_socket();
    server.live_.erase(shared_from_this());
  }
};

IngestServer::IngestServer(asio::io_context& io, const CollectorOptions& options,
                           Pipeline& pipeline, CollectorMetrics& metrics, Log log)
    : io_(io),
      options_(options),
      pipeline_(pipeline),
      metrics_(metrics),
      log_(std::move(log)),
      sweep_timer_(io) {}

void IngestServer::sweep() {
  sweep_timer_.expires_after(std::chrono::seconds(1));
  sweep_timer_.async_wait([this](std::error_code ec) {
    if (ec) return;
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<Connection>> late;
    for (const auto& c : live_)
      if (c->overdue(now)) late.push_back(c);
    for (auto& c : late) {
      metrics_.rejected("timeout").Increment();
      if (log_) log_("closing " + c->session.peer + ": " + c->overdue(now));
      c->shutdown();
    }
    sweep();
  });
}

IngestServer::~IngestServer() {
  for (const auto& p : unix_paths_) ::unlink(p.c_str());
}

template <typename Protocol>
void IngestServer::accept(std::shared_ptr<typename Protocol::acceptor> acceptor) {
  auto socket = std::make_shared<typename Protocol::socket>(io_);
  acceptor->async_accept(*socket, [this, acceptor, socket](std::error_code ec) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    if (!ec) {
      if (live_.size() >= options_.max_connections) {
        metrics_.rejected("connection_limit").Increment();
        if (log_) log_("refusing a connection: " + std::to_string(live_.size()) + " agents connected (limit)");
        std::error_code ignored;
        socket->close(ignored);
      } else {
        std::string peer;
        if constexpr (std::is_same_v<Protocol, asio::ip::tcp>) {
          std::error_code pe;
          auto ep = socket->remote_endpoint(pe);
          peer = pe ? "tcp" : "tcp " + ep.address().to_string() + ":" + std::to_string(ep.port());
        } else {
          peer = "unix";
        }
        metrics_.connections_total.Increment();
        auto conn = std::make_shared<Connection>(*this, peer);
        conn->read_some = [socket](asio::mutable_buffer b, std::function<void(std::error_code, size_t)> h) {
          socket->async_read_some(b, std::move(h));
        };
        conn->close_socket = [socket]() {
          std::error_code ignored;
          socket->shutdown(Protocol::socket::shutdown_both, ignored);
          socket->close(ignored);
        };
        live_.insert(conn);
        conn->start();
      }
    }
    accept<Protocol>(acceptor);
  });
}

bool IngestServer::listen(const Endpoint& endpoint, Endpoint& bound, std::string& error) {
  if (!sweeping_) {
    sweeping_ = true;
    sweep();
  }
  if (endpoint.kind == Endpoint::Kind::kUnix) {
    std::error_code ec;
    // A stale socket file from a crashed run would make bind fail; only remove sockets.
    struct stat st {};
    if (::lstat(endpoint.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(endpoint.path.c_str());
    auto acc = std::make_shared<asio::local::stream_protocol::acceptor>(io_);
    asio::local::stream_protocol::endpoint ep(endpoint.path);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      error = "cannot listen on " + endpoint.to_string() + ": " + ec.message();
      return false;
    }
    unix_paths_.push_back(endpoint.path);
    unix_acceptors_.push_back(acc);
    bound = endpoint;
    accept<asio::local::stream_protocol>(acc);
    return true;
  }
  auto acc = detail::open_tcp_acceptor(io_, endpoint, bound, error);
  if (!acc) return false;
  tcp_acceptors_.push_back(acc);
  accept<asio::ip::tcp>(acc);
  return true;
}

void IngestServer::stop() {
  sweep_timer_.cancel();
  std::error_code ignored;
  for (auto& a : tcp_acceptors_) a->close(ignored);
  for (auto& a : unix_acceptors_) a->close(ignored);
  auto live = live_;  // shutdown() erases from live_
  for (auto& c : live) c->shutdown();
}

}  // namespace inferscope::collector
