// inferscope collector: the live viewer API (docs/collector.md, "Viewer protocol").
//
// A viewer connects over TCP and may first send one frame holding a hello
// (service "inferscope-viewer"; auth_token when the collector requires one: then
// it must, within 5 s). The collector replays every known source's hello and
// string definitions and the recent alert episodes, then streams every frame it
// forwards (the same frames the trace store writes). Each viewer has a bounded
// send queue: when a slow viewer's queue is full, frames for it are dropped and
// counted, and ingest never waits.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <asio.hpp>

#include "inferscope/collector/endpoint.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/pipeline.hpp"

namespace inferscope::collector {

class ViewerServer {
 public:
  using Log = std::function<void(const std::string&)>;

  ViewerServer(asio::io_context& io, const CollectorOptions& options, Pipeline& pipeline,
               CollectorMetrics& metrics, Log log);

  bool listen(const Endpoint& endpoint, Endpoint& bound, std::string& error);
  // Queues a frame for every streaming viewer (call on the io thread).
  void broadcast(const SharedFrame& frame);
  void stop();
  size_t viewers() const { return live_.size(); }
  uint64_t dropped_frames() const { return dropped_; }

  struct Session;

 private:
  void accept();
  friend struct Session;

  asio::io_context& io_;
  const CollectorOptions& options_;
  Pipeline& pipeline_;
  CollectorMetrics& metrics_;
  Log log_;
  std::shared_ptr<asio::ip::tcp::acceptor> acceptor_;
  std::set<std::shared_ptr<Session>> live_;
  prometheus::Counter* dropped_counter_ = nullptr;
  uint64_t dropped_ = 0;
};

}  // namespace inferscope::collector
