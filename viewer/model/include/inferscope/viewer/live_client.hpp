// inferscope viewer: the live connection to a collector's viewer API.
//
// A background thread (asio) connects to host:port, sends one frame holding a
// Hello (service "inferscope-viewer", auth token if given), then decodes the
// collector's frames and hands (source_id, record) pairs to the UI thread
// through a bounded queue. When the queue is full the newest records are
// dropped and counted (the UI never blocks the socket thread, nor the other
// way round). On any error it reconnects with backoff. The collector replays
// every source's Hello and strings on connect, so a reconnect loses only what
// was sent while disconnected.
//
// fetch_range() asks the collector for stored history (docs/collector.md,
// "Viewer protocol"): the reply's records arrive through drain() like live ones
// (spans shorter than the resolution come merged, named "(merged spans)" with
// the count in an argument); range_state() says when the reply has ended.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "inferscope/wire/records.hpp"

namespace inferscope::viewer {

struct LiveOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 7433;
  std::string auth_token;
  size_t max_queued_records = 1'000'000;
  int reconnect_ms = 500;  // first retry; doubles up to max
  int max_reconnect_ms = 5000;
};

// Parses "host:port" (port required); false with error set on bad input.
bool parse_host_port(const std::string& text, std::string& host, uint16_t& port,
                     std::string& error);

class LiveClient {
 public:
  explicit LiveClient(LiveOptions options);
  ~LiveClient();
  LiveClient(const LiveClient&) = delete;
  LiveClient& operator=(const LiveClient&) = delete;

  void start();
  void stop();

  // Moves up to max queued records into out (appends). Called by the UI thread.
  size_t drain(std::vector<std::pair<uint32_t, wire::Record>>& out, size_t max);

  // Sends a RangeQuery for [from_ns, to_ns] with spans shorter than resolution_ns
  // merged per track. Returns its id, or 0 when not connected (nothing sent).
  uint64_t fetch_range(int64_t from_ns, int64_t to_ns, int64_t resolution_ns,
                       uint32_t max_records = 0);
  struct RangeState {
    uint64_t last_sent = 0;   // id of the newest query sent (0: none)
    bool in_flight = false;   // its RangeEnd has not arrived yet
    wire::RangeEnd last_end;  // the newest RangeEnd received
  };
  RangeState range_state() const;

  bool connected() const { return connected_.load(); }
  uint64_t frames() const { return frames_.load(); }
  uint64_t records() const { return records_.load(); }
  uint64_t dropped() const { return dropped_.load(); }
  uint64_t reconnects() const { return reconnects_.load(); }
  std::string last_error() const;
  std::string endpoint() const { return options_.host + ":" + std::to_string(options_.port); }

 private:
  void run();
  void set_error(std::string e);

  LiveOptions options_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> frames_{0}, records_{0}, dropped_{0}, reconnects_{0};
  mutable std::mutex mu_;
  std::deque<std::pair<uint32_t, wire::Record>> queue_;
  std::string error_;
  RangeState range_;  // guarded by mu_
  uint64_t next_query_id_ = 1;
};

}  // namespace inferscope::viewer
