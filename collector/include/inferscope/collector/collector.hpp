// inferscope collector: the daemon, assembled.
//
//   CollectorOptions o;  o.listen = {"tcp://127.0.0.1:0"};  o.metrics = "127.0.0.1:0";
//   Collector c(o);
//   std::string error;
//   if (!c.start(error)) die(error);
//   for (auto& line : c.listening_lines()) puts(line);   // "listening ingest
//   tcp://127.0.0.1:40123" c.run();                                             // until stop() or
//   SIGINT/SIGTERM
//
// One I/O thread runs ingest, aggregation, the trace store and the viewer API
// (so none of them needs a lock); prometheus-cpp's exposer serves /metrics from
// its own threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/pipeline.hpp"

namespace inferscope::collector {

class Collector {
 public:
  explicit Collector(CollectorOptions options);
  ~Collector();
  Collector(const Collector&) = delete;
  Collector& operator=(const Collector&) = delete;

  // Binds every listener, opens the trace store, starts the exposer.
  bool start(std::string& error);
  // "listening ingest tcp://127.0.0.1:PORT", "listening metrics 127.0.0.1:PORT", ...
  const std::vector<std::string>& listening_lines() const;
  // Runs the I/O loop until stop(); handle_signals: SIGINT/SIGTERM stop it too.
  void run(bool handle_signals = false);
  // Thread-safe. The trace store is flushed and closed before run() returns.
  void stop();

  CollectorMetrics& metrics();
  // Only from the I/O thread, or while run() is not running (tests).
  Pipeline& pipeline();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Log lines go to stderr with a time stamp; stdout is for the listening lines.
void log_line(const std::string& message);

}  // namespace inferscope::collector
