#include "inferscope/collector/viewer_server.hpp"

#include "../ingest/tcp_acceptor.hpp"

#include <deque>

namespace inferscope::collector {

struct ViewerServer::Session : std::enable_shared_from_this<ViewerServer::Session> {
  Session(ViewerServer& server, asio::ip::tcp::socket socket)
      : server(server), socket(std::move(socket)), auth_timer(server.io_) {}

  ViewerServer& server;
  asio::ip::tcp::socket socket;
  asio::steady_timer auth_timer;
  std::vector<uint8_t> in;  // bytes from the viewer (only its hello matters)
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
      if (!self->streaming) {
        self->in.insert(self->in.end(), self->chunk.begin(), self->chunk.begin() + n);
        if (!self->check_hello()) return;
      }
      self->read();  // after the hello, anything the viewer sends is ignored
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
    in.clear();
    begin_stream();
    return true;
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
    if (!why.empty() && server.log_) server.log_("closing viewer: " + why);
    std::error_code ignored;
    auth_timer.cancel();
    socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    server.live_.erase(shared_from_this());
  }
};

ViewerServer::ViewerServer(asio::io_context& io, const CollectorOptions& options, Pipeline& pipeline,
                           CollectorMetrics& metrics, Log log)
    : io_(io), options_(options), pipeline_(pipeline), metrics_(metrics), log_(std::move(log)) {
  dropped_counter_ = &metrics_.viewer_dropped_frames.Add({{"reason", "queue_full"}});
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
        if (log_) log_("refusing a viewer: " + std::to_string(live_.size()) + " connected (limit)");
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

void ViewerServer::stop() {
  std::error_code ignored;
  if (acceptor_) acceptor_->close(ignored);
  auto live = live_;
  for (auto& s : live) s->close("");
}

}  // namespace inferscope::collector
