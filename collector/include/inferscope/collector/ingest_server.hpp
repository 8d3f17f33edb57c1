// inferscope collector: agent listeners (TCP and Unix sockets) on one asio io_context.
//
// Each connection reads bytes, cuts them into whole frames with the wire
// decoder's frame_size() (growing its buffer only as far as the frame in hand
// needs, never past the frame limit) and hands each frame to the Pipeline. A
// frame the pipeline rejects closes that connection only. Beyond
// max_connections a new connection is closed at once and counted
// (rejected_frames_total{reason="connection_limit"}). A peer that does not send
// its hello within limits.hello_timeout, or leaves a frame unfinished for
// limits.frame_timeout, is closed (reason "timeout"); one that disconnects in the
// middle of a frame is counted too (reason "truncated").
//
// Memory (docs/security.md): each connection holds a 64 KiB read buffer; a
// larger frame grows it only when its header arrives, and that growth is
// charged to one FrameBudget for all connections (limits.max_buffered_bytes,
// a smaller share for connections without a hello). A connection whose frame
// does not fit is closed (reason "memory_budget"); before its hello a
// connection may not send a frame over limits.max_frame_bytes_before_hello
// (reason "frame_too_large_before_hello"). Log lines about single connections
// are rate-limited per reason (RateLimitedLog).
//
// Every 100 ms (and after each MiB) a connection writes the agent an
// acknowledgement of the bytes it has processed (wire/ack.hpp). drain() is the
// graceful stop: no new connections, each connection half-closed (the agent
// sees EOF, finishes the frame it is writing and closes its side), everything
// up to the agent's EOF read and processed; connections still open at the
// deadline are closed and counted (reason "drain_deadline").
#pragma once

#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "inferscope/collector/endpoint.hpp"
#include "inferscope/collector/frame_budget.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/pipeline.hpp"
#include "inferscope/collector/rate_limited_log.hpp"
#include "inferscope/collector/trace_store.hpp"

namespace inferscope::collector {

class IngestServer {
 public:
  using Log = std::function<void(const std::string&)>;

  IngestServer(asio::io_context& io, const CollectorOptions& options, Pipeline& pipeline,
               CollectorMetrics& metrics, Log log);
  ~IngestServer();

  // Binds and starts accepting; returns the bound endpoint (a real port for port 0).
  bool listen(const Endpoint& endpoint, Endpoint& bound, std::string& error);
  void stop();  // closes listeners and every connection (on the io thread)
  // Graceful stop (on the io thread): done() runs once every connection has closed
  // (or the deadline closed it); stop() still has to be called after.
  void drain(std::chrono::milliseconds deadline, std::function<void()> done);
  size_t connections() const { return live_.size(); }
  // With a trace store, an acknowledgement covers only frames the store has
  // settled (written to its file, or lost there and counted), so an agent
  // keeps and re-sends what a kill -9 of this collector would lose.
  void set_store(const TraceStore* store) { store_ = store; }
  size_t buffered_bytes() const { return budget_.used(); }  // charged to the FrameBudget now
  // Writes a control message (wire/capture.hpp) to the connection of this
  // source, between acknowledgements (on the io thread). False when the source
  // has no open connection or already has a few messages queued.
  bool send_control(uint32_t source_id, std::vector<uint8_t> message);

  struct Connection;  // in ingest_server.cpp

 private:
  void sweep();            // once a second: closes connections past their deadline
  void acknowledge_all();  // every 100 ms: acknowledgements to every connection
  void close_acceptors();
  void check_drained();
  template <typename Protocol>
  void accept(std::shared_ptr<typename Protocol::acceptor> acceptor);
  friend struct Connection;

  asio::io_context& io_;
  const CollectorOptions& options_;
  Pipeline& pipeline_;
  CollectorMetrics& metrics_;
  Log log_;
  const TraceStore* store_ = nullptr;
  RateLimitedLog log_limited_;  // lines about single connections, keyed by reason
  FrameBudget budget_;
  std::vector<std::shared_ptr<asio::ip::tcp::acceptor>> tcp_acceptors_;
  std::vector<std::shared_ptr<asio::local::stream_protocol::acceptor>> unix_acceptors_;
  std::vector<std::string> unix_paths_;
  std::set<std::shared_ptr<Connection>> live_;
  asio::steady_timer sweep_timer_;
  asio::steady_timer ack_timer_;
  asio::steady_timer drain_timer_;
  bool sweeping_ = false;
  bool draining_ = false;
  std::function<void()> drain_done_;
};

}  // namespace inferscope::collector
