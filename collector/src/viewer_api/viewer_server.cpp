#include "inferscope/collector/viewer_server.hpp"

#include <deque>

#include "../ingest/tcp_acceptor.hpp"
#include "inferscope/collector/range_query.hpp"

namespace inferscope::collector {

struct ViewerServer::Session : std::enable_shared_from_this<ViewerServer::Session> {
  Session(ViewerServer& server, asio::ip::tcp::socket socket)
      : server(server), socket(std::move(socket)), auth_timer(server.io_) {}

  ViewerServer& server;
  asio::ip::tcp::socket socket;
  asio::steady_timer auth_timer;
  std::vector<uint8_t> in;  // bytes from the viewer: its hello, then range queries
  std::array<uint8_t, 4096> chunk{};
  std::deque<SharedFrame> queue;
  size_t queued_bytes = 0;
  bool writing = false;
  bool streaming = false;
  bool closed = false;

  void start() {
    if (server.options_.auth_token.empty()) {
      begin_stream();
    } else {
      auto self = shared_from_this();
      auth_timer.expires_after(std::chrono::seconds(5));
      auth_timer.async_wait([self](std::error_code ec) {
        if (!ec && !self->streaming) self->close("no hello with a valid token within 5 s");
      });
    }
    read();
  }

  void begin_stream() {
    streaming = true;
    auth_timer.cancel();
    std::vector<std::vector<uint8_t>> frames;
    server.pipeline_.replay(frames, true);
    // The replay is queued whatever its size: without it nothing after makes sense.
    for (auto& f : frames) {
      queued_bytes += f.size();
      queue.push_back(std::make_shared<const std::vector<uint8_t>>(std::move(f)));
    }
    write();
  }

  void read() {
    auto self = shared_from_this();
    socket.async_read_some(asio::buffer(chunk), [self](std::error_code ec, size_t n) {
      if (self->closed) return;
      if (ec) {
        self->close("");
        return;
      }
      self->in.insert(self->in.end(), self->chunk.begin(), self->chunk.begin() + n);
      if (!self->streaming && !self->check_hello()) return;
      if (self->streaming && !self->check_requests()) return;
      self->read();
    });
  }

  // False when the session was closed.
  bool check_hello() {
    wire::FrameDecoder dec(wire::DecoderOptions{64 * 1024});
    size_t n = 0;
    auto st = dec.frame_size(in, n);
    if (st.error == wire::DecodeError::kNeedMoreData) return true;
    if (!st.ok() || !dec.open(std::span<const uint8_t>(in).first(n)).ok()) {
      close("bad hello frame: " + st.message);
      return false;
    }
    wire::Record r;
    if (!dec.next(r) || wire::kind_of(r) != wire::RecordKind::kHello) {
      close("first record is not a hello");
      return false;
    }
    if (!tokens_equal(std::get<wire::Hello>(r).auth_token, server.options_.auth_token)) {
      server.metrics_.rejected("auth").Increment();
      close("viewer hello has a missing or wrong auth token");
      return false;
    }
    in.erase(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(n));
    begin_stream();
    return true;
  }

  // Frames after the hello: range queries are answered; other records are ignored.
  // False when the session was closed.
  bool check_requests() {
    wire::FrameDecoder dec(wire::DecoderOptions{64 * 1024});
    size_t used = 0;
    while (used < in.size()) {
      size_t n = 0;
      std::span<const uint8_t> rest(in.data() + used, in.size() - used);
      auto st = dec.frame_size(rest, n);
      if (st.error == wire::DecodeError::kNeedMoreData) break;
      if (st.ok()) st = dec.open(rest.first(n));
      if (!st.ok()) {
        close("bad frame from the viewer: " + st.message);
        return false;
      }
      used += n;
      wire::Record r;
      while (dec.next(r))
        if (auto* q = std::get_if<wire::RangeQuery>(&r))
          server.submit_query(shared_from_this(), *q);
      if (!dec.status().ok()) {
        close("bad record from the viewer: " + dec.status().message);
        return false;
      }
    }
    in.erase(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(used));
    return true;
  }

  // A range reply goes out whole, after what is queued: it is bounded by the
  // query's record cap rather than the live queue's byte bound.
  void push_reply(std::vector<std::vector<uint8_t>>& frames) {
    if (closed) return;
    for (auto& f : frames) {
      queued_bytes += f.size();
      queue.push_back(std::make_shared<const std::vector<uint8_t>>(std::move(f)));
    }
    write();
  }

  void push(const SharedFrame& f) {
    if (!streaming || closed) return;
    if (queued_bytes + f->size() > server.options_.viewer_queue_bytes) {
      ++server.dropped_;
      server.dropped_counter_->Increment();
      return;
    }
    queued_bytes += f->size();
    queue.push_back(f);
    write();
  }

  void write() {
    if (writing || queue.empty() || closed) return;
    writing = true;
    auto self = shared_from_this();
    asio::async_write(socket, asio::buffer(*queue.front()), [self](std::error_code ec, size_t) {
      self->writing = false;
      if (self->closed) return;
      if (ec) {
        self->close("");
        return;
      }
      self->queued_bytes -= self->queue.front()->size();
      self->queue.pop_front();
      self->write();
    });
  }

  void close(const std::string& why) {
    if (closed) return;
    closed = true;
    if (!why.empty()) server.log_limited_.write("viewer", "closing viewer: " + why);
    std::error_code ignored;
    auth_timer.cancel();
    socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    server.live_.erase(shared_from_this());
  }
};

ViewerServer::ViewerServer(asio::io_context& io, const CollectorOptions& options,
                           Pipeline& pipeline, CollectorMetrics& metrics, Log log)
    : io_(io),
      options_(options),
      pipeline_(pipeline),
      metrics_(metrics),
      log_(std::move(log)),
      log_limited_(log_) {
  dropped_counter_ = &metrics_.viewer_dropped_frames.Add({{"reason", "queue_full"}});
}

ViewerServer::~ViewerServer() {
  {
    std::lock_guard<std::mutex> lock(query_mu_);
    query_stop_ = true;
  }
  query_cv_.notify_all();
  if (query_thread_.joinable()) query_thread_.join();
}

bool ViewerServer::listen(const Endpoint& endpoint, Endpoint& bound, std::string& error) {
  if (endpoint.kind != Endpoint::Kind::kTcp) {
    error = "the viewer API listens on TCP only";
    return false;
  }
  acceptor_ = detail::open_tcp_acceptor(io_, endpoint, bound, error);
  if (!acceptor_) return false;
  accept();
  return true;
}

void ViewerServer::accept() {
  auto acceptor = acceptor_;
  acceptor->async_accept([this, acceptor](std::error_code ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    if (!ec) {
      if (live_.size() >= options_.max_viewers) {
        log_limited_.write("viewer_limit", "refusing a viewer: " + std::to_string(live_.size()) +
                                               " connected (limit)");
        std::error_code ignored;
        socket.close(ignored);
      } else {
        socket.set_option(asio::ip::tcp::no_delay(true), ec);
        auto s = std::make_shared<Session>(*this, std::move(socket));
        live_.insert(s);
        s->start();
      }
    }
    accept();
  });
}

void ViewerServer::broadcast(const SharedFrame& frame) {
  for (const auto& s : live_) s->push(frame);
}

void ViewerServer::submit_query(const std::shared_ptr<Session>& session,
                                const wire::RangeQuery& query) {
  {
    std::lock_guard<std::mutex> lock(query_mu_);
    if (queries_.size() < kMaxPendingQueries && !query_stop_) {
      queries_.push_back({session, query});
      if (!query_thread_.joinable()) query_thread_ = std::thread([this] { run_queries(); });
      query_cv_.notify_one();
      return;
    }
  }
  RangeReply busy;
  busy.end.query_id = query.query_id;
  busy.end.status = wire::RangeStatus::kBusy;
  busy.end.message = "too many range queries waiting; try again";
  wire::EncoderOptions eo;
  eo.source_id = wire::kCollectorSource;
  wire::FrameEncoder enc(eo);
  enc.add(wire::Record{query});
  enc.add(wire::Record{busy.end});
  busy.frames.emplace_back();
  enc.finish(busy.frames.back());
  session->push_reply(busy.frames);
}

// Queries decompress blocks: they run here, one at a time, never on the io thread.
void ViewerServer::run_queries() {
  std::unique_lock<std::mutex> lock(query_mu_);
  while (true) {
    query_cv_.wait(lock, [&] { return query_stop_ || !queries_.empty(); });
    if (query_stop_) return;
    PendingQuery p = std::move(queries_.front());
    queries_.pop_front();
    lock.unlock();
    auto reply = std::make_shared<RangeReply>();
    answer_range(store_, p.query, *reply);
    if (reply->end.status != wire::RangeStatus::kOk)
      log_limited_.write("range_query", "range query " + std::to_string(p.query.query_id) + ": " +
                                            reply->end.message);
    asio::post(io_, [weak = p.session, reply] {
      if (auto s = weak.lock()) s->push_reply(reply->frames);
    });
    lock.lock();
  }
}

void ViewerServer::stop() {
  {
    std::lock_guard<std::mutex> lock(query_mu_);
    query_stop_ = true;
    queries_.clear();
  }
  query_cv_.notify_all();
  if (query_thread_.joinable()) query_thread_.join();
  std::error_code ignored;
  if (acceptor_) acceptor_->close(ignored);
  auto live = live_;
  for (auto& s : live) s->close("");
  log_limited_.flush_all();
}

}  // namespace inferscope::collector
