// inferscope collector: the live viewer API (docs/collector.md, "Viewer protocol").
//
// A viewer connects over TCP and may first send one frame holding a hello
// (service "inferscope-viewer"; auth_token when the collector requires one: then
// it must, within 5 s). The collector replays every known source's hello and
// string definitions and the recent alert episodes, then streams every frame it
// forwards (the same frames the trace store writes). Each viewer has a bounded
// send queue: when a slow viewer's queue is full, frames for it are dropped and
// counted, and ingest never waits.
//
// A viewer may also send RangeQuery records at any time after its hello: they
// are answered from the trace store on a query thread (range_query.hpp), the
// reply queued whole between live frames: the echoed query, the records, a
// RangeEnd. At most kMaxPendingQueries wait; beyond that the answer is kBusy.
#pragma once

#include <asio.hpp>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "inferscope/collector/endpoint.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/pipeline.hpp"
#include "inferscope/collector/rate_limited_log.hpp"
#include "inferscope/collector/trace_store.hpp"

namespace inferscope::collector {

class ViewerServer {
 public:
  using Log = std::function<void(const std::string&)>;

  ViewerServer(asio::io_context& io, const CollectorOptions& options, Pipeline& pipeline,
               CollectorMetrics& metrics, Log log);
  ~ViewerServer();  // joins the query thread

  static constexpr size_t kMaxPendingQueries = 16;

  bool listen(const Endpoint& endpoint, Endpoint& bound, std::string& error);
  // Where range queries are answered from (nullptr: they get kNoStore). Set before listen().
  void set_store(const TraceStore* store) { store_ = store; }
  // Queues a frame for every streaming viewer (call on the io thread).
  void broadcast(const SharedFrame& frame);
  void stop();
  // Writes the suppressed-line counts that are due (the collector's tick calls it).
  void flush_log() { log_limited_.flush_due(); }
  size_t viewers() const { return live_.size(); }
  uint64_t dropped_frames() const { return dropped_; }

  struct Session;

 private:
  void accept();
  void submit_query(const std::shared_ptr<Session>& session, const wire::RangeQuery& query);
  void run_queries();
  friend struct Session;

  struct PendingQuery {
    std::weak_ptr<Session> session;
    wire::RangeQuery query;
  };
  const TraceStore* store_ = nullptr;
  std::mutex query_mu_;
  std::condition_variable query_cv_;
  std::deque<PendingQuery> queries_;
  bool query_stop_ = false;
  std::thread query_thread_;

  asio::io_context& io_;
  const CollectorOptions& options_;
  Pipeline& pipeline_;
  CollectorMetrics& metrics_;
  Log log_;
  RateLimitedLog log_limited_;  // lines about single viewers and queries: a flood writes few
  std::shared_ptr<asio::ip::tcp::acceptor> acceptor_;
  std::set<std::shared_ptr<Session>> live_;
  prometheus::Counter* dropped_counter_ = nullptr;
  uint64_t dropped_ = 0;
};

}  // namespace inferscope::collector
