// The shipper: one background thread that drains the thread rings, encodes
// frames and writes them to the collector over TCP or a Unix socket (asio).
//
// Per connection it sends, in order: a Hello, StringDefs for every interned id
// (re-sent after each reconnect), an AgentHealth, then the data frames. While
// the collector is away or slow, encoded frames wait in a queue of at most
// config.max_pending_bytes; records that do not fit are dropped and counted per
// kind. Reconnects back off exponentially up to config.reconnect_max_backoff.
//
// Delivery (docs/reliability.md): every data frame starts with a FrameSequence
// record (this agent's random stream id, frame number from 1). A written frame
// is kept until the collector acknowledges it (wire/ack.hpp: processed, and
// persisted where the collector has a trace store); kept frames are bounded by
// config.max_pending_bytes, the oldest given up as records_unconfirmed beyond it.
// Three ways a connection ends:
//  - graceful: the collector sends a draining ack, then half-closes (EOF on our
//    read; an EOF without that ack is a dead collector). The shipper takes no
//    new frames for it, finishes the write in flight (whole frames), shuts its
//    send side and reconnects; the collector reads everything up to that EOF,
//    so every record written is delivered and the queue waits for the next one.
//  - broken (reset, kill -9, write error): the kept frames go back to the front
//    of the queue and are written again on the next connection; the collector
//    skips the ones it had already applied (same stream and number), so a
//    record is counted once, and nothing is in doubt unless the bound overflowed.
//  - not a collector: no valid acknowledgement within config.ack_timeout, or
//    bytes that are not one. Said once on stderr, counted in protocol_errors;
//    the next attempt waits config.protocol_error_backoff.
// Everything runs on the shipper's io_context, so its state needs no locks;
// the host talks to it only through atomics and posted handlers.
#pragma once

#include <array>
#include <asio.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "agent_impl.hpp"
#include "inferscope/wire/codec.hpp"
#include "ring_records.hpp"

namespace inferscope::agent::detail {

class Shipper {
 public:
  explicit Shipper(Agent::Impl& impl);
  ~Shipper();  // stop(): final drain and flush within config.shutdown_timeout
  Shipper(const Shipper&) = delete;
  Shipper& operator=(const Shipper&) = delete;

  bool flush(std::chrono::milliseconds timeout);
  void model_changed();
  void stop();  // idempotent; the counters stay readable afterwards

  // Read by Agent::stats() from any thread.
  std::atomic<uint64_t> records_sent{0};
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> reconnects{0};
  std::atomic<uint64_t> records_delivered{0};
  std::atomic<uint64_t> records_unconfirmed{0};  // see Stats
  std::atomic<uint64_t> records_undelivered{0};  // set when the shipper stops
  std::atomic<uint64_t> protocol_errors{0};
  std::atomic<uint64_t> captures_received{0};  // capture requests read from the collector
  std::atomic<uint64_t> kept_bytes{0};
  std::atomic<bool> connected{false};
  std::atomic<uint64_t> pending_bytes{0};
  std::atomic<uint64_t> pending_high_water{0};
  std::array<std::atomic<uint64_t>, kKinds> pending_dropped{};  // over max_pending_bytes

  // Sum of drops of every origin, by kind (rings, thread overflow, queue).
  std::array<uint64_t, kKinds> dropped_by_kind() const;
  uint64_t high_water() const;

 private:
  struct Frame {
    std::vector<uint8_t> bytes;
    uint32_t records = 0;
    bool written = false;  // went out whole at least once (counted in records_sent)
    uint64_t end = 0;      // kept: stream offset just past it on the current connection
  };
  enum class State { kDisconnected, kConnecting, kConnected };

  void run();
  void schedule_tick();
  void drain();
  void seal_frame();
  void check_flush();
  void connect();
  void on_connected();
  void disconnect();
  void start_read();
  void on_ack_bytes(const uint8_t* data, size_t n);
  void on_control_message();
  void on_peer_draining();
  void close_gracefully();
  void connection_broken();
  void start_write();
  void maybe_finish();
  void finish();
  void add_health(wire::FrameEncoder& enc);
  void keep(Frame&& f);
  void retire_acknowledged();
  void requeue_kept();
  uint64_t release_kept();
  void not_a_collector(const std::string& why);

  Agent::Impl& impl_;
  asio::io_context io_;
  asio::generic::stream_protocol::socket socket_;
  asio::steady_timer tick_timer_;
  asio::steady_timer reconnect_timer_;
  asio::steady_timer connect_timer_;
  asio::steady_timer shutdown_timer_;
  asio::steady_timer ack_deadline_timer_;

  // [SECTION] encoding (shipper thread only)
  wire::FrameEncoder encoder_;
  uint32_t encoder_records_ = 0;
  std::deque<Frame> pending_;
  size_t pending_bytes_ = 0;
  wire::ExpertLoad scratch_load_;
  const uint64_t stream_id_;  // FrameSequence::stream: random, drawn once
  uint64_t next_seq_ = 0;

  // [SECTION] connection (shipper thread only)
  State state_ = State::kDisconnected;
  uint64_t epoch_ = 0;  // bumps on every disconnect; stale handlers compare it
  bool ever_connected_ = false;
  std::chrono::milliseconds backoff_{0};
  bool hello_sent_ = false;
  bool model_dirty_ = false;
  uint32_t strings_sent_ = 0;
  bool health_due_ = false;
  std::chrono::steady_clock::time_point last_health_{};
  bool writing_ = false;
  std::vector<uint8_t> control_;
  std::vector<asio::const_buffer> write_buffers_;
  size_t frames_in_flight_ = 0;
  bool final_health_in_flight_ = false;
  std::array<uint8_t, 256> read_buffer_{};

  // [SECTION] confirmation (per connection, shipper thread only)
  bool peer_draining_ = false;    // the collector half-closed: finish and close
  bool drain_announced_ = false;  // it sent a draining ack: its EOF is a drain, not a death
  uint64_t stream_bytes_ = 0;     // bytes written on this connection
  uint64_t acked_bytes_ = 0;      // the collector's latest acknowledgement
  bool valid_ack_seen_ = false;   // this peer has acknowledged in the protocol at least once
  bool ack_deadline_armed_ = false;
  std::deque<Frame> kept_;  // data frames written, not yet acknowledged (oldest first)
  size_t kept_bytes_ = 0;
  uint64_t kept_records_ = 0;
  std::array<uint8_t, 16> ack_partial_{};  // wire::kAckBytes
  size_t ack_have_ = 0;
  std::vector<uint8_t> control_in_;  // a control message being read (wire/capture.hpp)
  size_t control_need_ = 0;          // its length; 0: none in progress
  bool protocol_error_ = false;      // the next reconnect waits protocol_error_backoff
  bool protocol_error_said_ = false;
  bool peer_not_collector_ = false;  // the last peer failed the protocol: no last attempt at stop
  bool unreachable_said_ = false;

  // [SECTION] shutdown and flush
  bool stopping_ = false;
  bool final_health_sent_ = false;
  bool finished_ = false;
  bool lingering_ = false;  // stopping: our side is shut, waiting for the collector's EOF
  std::mutex flush_mu_;
  std::condition_variable flush_cv_;
  std::atomic<uint64_t> flush_requested_{0};
  uint64_t drained_generation_ = 0;  // flush_requested_ as seen before the last drain
  uint64_t flush_done_ = 0;          // guarded by flush_mu_
  bool stopped_ = false;             // guarded by flush_mu_

  std::thread thread_;
};

}  // namespace inferscope::agent::detail
