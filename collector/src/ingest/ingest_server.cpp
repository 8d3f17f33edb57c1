#include "inferscope/collector/ingest_server.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <deque>

#include "inferscope/wire/ack.hpp"
#include "tcp_acceptor.hpp"

namespace inferscope::collector {

namespace {
// Each connection's buffer: this much always (bounded by --max-connections);
// more only for a frame that needs it, charged to the FrameBudget.
constexpr size_t kReadChunk = 64 * 1024;
// Acknowledgements (wire/ack.hpp): at least every 100 ms while frames arrive,
// and at once after each MiB, so an agent's unconfirmed window stays small.
constexpr auto kAckInterval = std::chrono::milliseconds(100);
constexpr uint64_t kAckEveryBytes = 1u << 20;
// Bound on a connection's frames waiting for the trace store (at the block age,
// default 1 s, this holds far more than one block's worth of small frames).
constexpr size_t kMaxUnsettled = 1u << 16;
}  // namespace

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
  FrameBudget::Share share;  // the buffer beyond kReadChunk
  // [SECTION] acknowledgements and drain
  uint64_t processed_bytes = 0;  // whole frames handed to the pipeline, cumulative
  uint64_t acked_bytes = 0;      // the last acknowledgement written
  // With a trace store: (stream end, store ticket) of frames not yet settled,
  // oldest first; frames with the same ticket share one entry.
  std::deque<std::pair<uint64_t, uint64_t>> unsettled;
  uint64_t settled_bytes = 0;  // processed and persisted: what may be acknowledged
  bool ack_in_flight = false;
  bool send_closed = false;      // half-closed for the drain: nothing more is written
  bool drain_requested = false;  // half_close() waits for the ack in flight
  wire::AckBytes ack_buffer{};
  // Control messages to the agent (wire/capture.hpp), written between
  // acknowledgements on the same one-write-at-a-time path; a few at most.
  std::deque<std::vector<uint8_t>> control_out;
  std::vector<uint8_t> control_buffer;
  std::function<void(asio::mutable_buffer, std::function<void(std::error_code, size_t)>)> read_some;
  std::function<void(asio::const_buffer, std::function<void(std::error_code, size_t)>)> write;
  std::function<void()> shutdown_send;
  std::function<void()> close_socket;

  void start() { read(); }

  void compact() {
    if (begin == 0) return;
    std::memmove(buffer.data(), buffer.data() + begin, end - begin);
    end -= begin;
    begin = 0;
  }

  // Resizes the buffer to n bytes, charging what lies beyond kReadChunk to the
  // server's FrameBudget (the before-hello share while there is no hello).
  // False, and nothing changed, when the budget cannot cover it.
  bool resize_buffer(size_t n) {
    if (!server.budget_.set(share, n > kReadChunk ? n - kReadChunk : 0, session.source_id == 0))
      return false;
    if (n > buffer.size()) {
      buffer.reserve(n);  // exactly n: what is charged is what is allocated
      buffer.resize(n);
    } else {
      buffer.resize(n);
      buffer.shrink_to_fit();
    }
    return true;
  }

  // Makes room for a whole frame of `need` bytes at begin. False: over budget.
  bool make_room(size_t need) {
    if (begin + need <= buffer.size()) return true;
    compact();
    return need <= buffer.size() || resize_buffer(need);
  }

  // Closes the connection, counted by reason; the log line is rate-limited per reason.
  void reject(const char* reason, const std::string& message) {
    server.metrics_.rejected(reason).Increment();
    server.log_limited_.write(reason, "closing " + session.peer + ": " + message);
    shutdown();
  }

  void read() {
    if (closed) return;
    // There is always room here: on_read made room for the frame in hand, and
    // with no frame in hand the whole buffer is free.
    compact();
    auto self = shared_from_this();
    read_some(asio::buffer(buffer.data() + end, buffer.size() - end),
              [self](std::error_code ec, size_t n) { self->on_read(ec, n); });
  }

  void on_read(std::error_code ec, size_t n) {
    if (closed) return;
    if (ec) {
      if (end > begin) {
        // The peer went away inside a frame (it died mid-write): count the torn frame.
        reject("truncated", "it closed inside a frame (" + std::to_string(end - begin) +
                                " bytes of it received)");
        return;
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
      const bool need_more = st.error == wire::DecodeError::kNeedMoreData;
      if (!st.ok() && !need_more) {
        reject(rejection_reason(st.error), st.message);
        return;
      }
      // frame_bytes is the announced size once the header is in (already
      // checked against max_frame_bytes). Before a hello only small frames:
      // a peer that has proven nothing may not make us hold megabytes.
      const auto& limits = server.options_.limits;
      if (session.source_id == 0 && frame_bytes > limits.max_frame_bytes_before_hello) {
        reject("frame_too_large_before_hello",
               "a frame of " + std::to_string(frame_bytes) + " bytes before its hello (limit " +
                   std::to_string(limits.max_frame_bytes_before_hello) + ")");
        return;
      }
      if (need_more) {
        // Room for the whole frame once its header says how big it is.
        if (frame_bytes > 0 && !make_room(frame_bytes)) {
          reject("memory_budget", "a frame of " + std::to_string(frame_bytes) +
                                      " bytes does not fit the collector's frame buffer budget (" +
                                      std::to_string(server.budget_.used()) + " bytes held)");
          return;
        }
        break;
      }
      Rejection why;
      if (!server.pipeline_.on_frame(session, avail.first(frame_bytes), why)) {
        shutdown();
        return;
      }
      begin += frame_bytes;
      processed_bytes += frame_bytes;
      if (server.store_) track_durability();
      completed = true;
      if (begin == end) begin = end = 0;
    }
    // Shrink a buffer grown for one large frame once it is consumed.
    if (begin == end && buffer.size() > 4 * kReadChunk) {
      resize_buffer(kReadChunk);  // shrinking always fits the budget
      begin = end = 0;
    }
    if (completed && end > begin)
      partial_since = std::chrono::steady_clock::now();  // a new frame started
    if (processed_bytes - acked_bytes >= kAckEveryBytes) acknowledge();
    read();
  }

  // The frame just processed waits for the store's ticket of the last frame
  // stored by then (a skipped or unforwarded frame needs nothing newer).
  void track_durability() {
    const uint64_t ticket = server.store_->last_ticket();
    if (!unsettled.empty() && unsettled.back().second == ticket) {
      unsettled.back().first = processed_bytes;
    } else {
      unsettled.emplace_back(processed_bytes, ticket);
      if (unsettled.size() > kMaxUnsettled)
        unsettled.pop_front();  // acknowledges later, never earlier
    }
  }

  // What may be acknowledged: everything processed, or with a trace store
  // only what it has settled (so a kill -9 loses nothing acknowledged).
  uint64_t acknowledgeable() {
    if (!server.store_) return processed_bytes;
    const uint64_t settled = server.store_->settled_ticket();
    while (!unsettled.empty() && unsettled.front().second <= settled) {
      settled_bytes = unsettled.front().first;
      unsettled.pop_front();
    }
    return settled_bytes;
  }

  // Tells the agent how much of its stream is processed. One small write at a
  // time: a peer that never reads fills its socket buffer, never our memory.
  void acknowledge() {
    if (closed || send_closed || ack_in_flight) return;
    if (!control_out.empty()) {
      send_control();
      return;
    }
    const uint64_t bytes = acknowledgeable();
    if (bytes == acked_bytes) return;
    ack_buffer = wire::encode_ack(bytes);
    ack_in_flight = true;
    auto self = shared_from_this();
    write(asio::buffer(ack_buffer), [self, bytes](std::error_code ec, size_t) {
      self->ack_in_flight = false;
      if (!ec) self->acked_bytes = bytes;
      // A failed write needs nothing here: the read side sees the same broken connection.
      if (self->drain_requested)
        self->half_close();
      else if (!ec && !self->control_out.empty())
        self->send_control();
    });
  }

  // Queues a control message (false when the connection cannot take one) and
  // writes it as soon as no other write is in flight.
  bool queue_control(std::vector<uint8_t> message) {
    constexpr size_t kMaxQueued = 4;
    if (closed || send_closed || drain_requested || control_out.size() >= kMaxQueued) return false;
    control_out.push_back(std::move(message));
    if (!ack_in_flight) send_control();
    return true;
  }

  void send_control() {
    if (closed || send_closed || ack_in_flight || control_out.empty()) return;
    control_buffer = std::move(control_out.front());
    control_out.pop_front();
    ack_in_flight = true;
    auto self = shared_from_this();
    write(asio::buffer(control_buffer), [self](std::error_code ec, size_t) {
      self->ack_in_flight = false;
      if (self->drain_requested)
        self->half_close();
      else if (!ec)
        self->acknowledge();  // the next control message, or an acknowledgement due
    });
  }

  // Graceful drain: the agent reads EOF, finishes the frame it is writing,
  // closes its side; this connection reads everything up to that EOF.
  // The draining ack tells the agent this EOF is a drain, not a death (a
  // killed collector's sockets send EOF too).
  void half_close() {
    drain_requested = true;
    if (closed || send_closed || ack_in_flight) return;
    send_closed = true;
    ack_buffer = wire::encode_ack(processed_bytes, wire::kAckDraining);
    auto self = shared_from_this();
    write(asio::buffer(ack_buffer), [self](std::error_code, size_t) {
      if (!self->closed) self->shutdown_send();
    });
  }

  // The reason to close it now, or nullptr.
  const char* overdue(std::chrono::steady_clock::time_point now) const {
    const auto& limits = server.options_.limits;
    if (session.source_id == 0 && now - connected_at > limits.hello_timeout)
      return "no hello in time";
    if (end > begin && now - partial_since > limits.frame_timeout)
      return "frame not completed in time";
    return nullptr;
  }

  void shutdown() {
    if (closed) return;
    closed = true;
    server.budget_.release(share);  // the buffer itself goes with the last handler
    server.pipeline_.on_close(session);
    close_socket();
    server.live_.erase(shared_from_this());
    if (server.draining_) server.check_drained();
  }
};

IngestServer::IngestServer(asio::io_context& io, const CollectorOptions& options,
                           Pipeline& pipeline, CollectorMetrics& metrics, Log log)
    : io_(io),
      options_(options),
      pipeline_(pipeline),
      metrics_(metrics),
      log_(std::move(log)),
      log_limited_(log_),
      budget_(options.limits.max_buffered_bytes, options.limits.max_buffered_bytes_before_hello),
      sweep_timer_(io),
      ack_timer_(io),
      drain_timer_(io) {}

bool IngestServer::send_control(uint32_t source_id, std::vector<uint8_t> message) {
  if (source_id == 0 || draining_) return false;
  for (const auto& c : live_)
    if (c->session.source_id == source_id) return c->queue_control(std::move(message));
  return false;
}

void IngestServer::acknowledge_all() {
  ack_timer_.expires_after(kAckInterval);
  ack_timer_.async_wait([this](std::error_code ec) {
    if (ec || draining_) return;
    for (const auto& c : live_) c->acknowledge();
    acknowledge_all();
  });
}

void IngestServer::sweep() {
  sweep_timer_.expires_after(std::chrono::seconds(1));
  sweep_timer_.async_wait([this](std::error_code ec) {
    if (ec) return;
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<Connection>> late;
    for (const auto& c : live_)
      if (c->overdue(now)) late.push_back(c);
    for (auto& c : late) c->reject("timeout", c->overdue(now));
    log_limited_.flush_due();
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
        log_limited_.write("connection_limit",
                           "refusing a connection: " + std::to_string(live_.size()) +
                               " agents connected (--max-connections)");
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
        conn->read_some = [socket](asio::mutable_buffer b,
                                   std::function<void(std::error_code, size_t)> h) {
          socket->async_read_some(b, std::move(h));
        };
        conn->write = [socket](asio::const_buffer b,
                               std::function<void(std::error_code, size_t)> h) {
          asio::async_write(*socket, b, std::move(h));
        };
        conn->shutdown_send = [socket]() {
          std::error_code ignored;
          socket->shutdown(Protocol::socket::shutdown_send, ignored);
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
    acknowledge_all();
  }
  if (endpoint.kind == Endpoint::Kind::kUnix) {
    std::error_code ec;
    // A stale socket file from a crashed run would make bind fail; only remove sockets.
    struct stat st {};
    if (::lstat(endpoint.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
      ::unlink(endpoint.path.c_str());
    auto acc = std::make_shared<asio::local::stream_protocol::acceptor>(io_);
    asio::local::stream_protocol::endpoint ep(endpoint.path);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      error = "cannot listen: " + ec.message();
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

void IngestServer::close_acceptors() {
  std::error_code ignored;
  for (auto& a : tcp_acceptors_) a->close(ignored);
  for (auto& a : unix_acceptors_) a->close(ignored);
}

void IngestServer::stop() {
  sweep_timer_.cancel();
  ack_timer_.cancel();
  drain_timer_.cancel();
  drain_done_ = nullptr;
  close_acceptors();
  auto live = live_;  // shutdown() erases from live_
  for (auto& c : live) c->shutdown();
  log_limited_.flush_all();  // the suppressed counts of the last interval too
}

void IngestServer::drain(std::chrono::milliseconds deadline, std::function<void()> done) {
  if (draining_) return;
  draining_ = true;
  drain_done_ = std::move(done);
  sweep_timer_.cancel();  // the drain deadline replaces the per-connection ones
  ack_timer_.cancel();
  close_acceptors();
  for (const auto& c : live_) c->half_close();
  if (log_ && !live_.empty())
    log_("draining " + std::to_string(live_.size()) + " agent connection(s), at most " +
         std::to_string(deadline.count()) + " ms");
  drain_timer_.expires_after(deadline);
  drain_timer_.async_wait([this](std::error_code ec) {
    if (ec) return;
    auto late = live_;
    for (auto& c : late)
      c->reject("drain_deadline", "it did not close its side within the drain deadline");

    check_drained();
  });
  check_drained();
}

void IngestServer::check_drained() {
  if (!live_.empty() || !drain_done_) return;
  drain_timer_.cancel();
  // Posted: this may run inside a connection's handler that still touches it.
  asio::post(io_, [done = std::move(drain_done_)] { done(); });
  drain_done_ = nullptr;
}

}  // namespace inferscope::collector
