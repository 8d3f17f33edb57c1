#include "shipper.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

#include "clock/tick_clock.hpp"
#include "cupti/cupti_tracer.hpp"
#include "gpu_trace/gpu_trace_controller.hpp"
#include "inferscope/wire/ack.hpp"
#include "inferscope/wire/capture.hpp"
#include "intern.hpp"

namespace inferscope::agent::detail {
namespace {

constexpr uint32_t kFrameBudget = 256u << 10;  // bytes per data frame
constexpr size_t kWriteBatchBytes = 1u << 20;  // bytes per async_write
constexpr auto kHealthInterval = std::chrono::seconds(1);
constexpr auto kFirstBackoff = std::chrono::milliseconds(50);

// A random stream id: a restarted process (same host, maybe the same pid)
// must never continue an old stream's frame numbers.
uint64_t random_stream_id() {
  std::random_device rd;
  const uint64_t hi = rd(), lo = rd();
  const uint64_t t =
      static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  const uint64_t id = (hi << 32 | lo) ^ (t * 0x9e3779b97f4a7c15ull);
  return id == 0 ? 1 : id;
}

// The first bytes of something that is not an acknowledgement, printable.
std::string printable_prefix(const uint8_t* data, size_t n) {
  std::string out;
  for (size_t i = 0; i < n && out.size() < 24; ++i) {
    const char c = static_cast<char>(data[i]);
    if (c == '\r' || c == '\n') break;
    out += (c >= 32 && c < 127) ? c : '.';
  }
  return out;
}

wire::EncoderOptions encoder_options(const Config& c) {
  wire::EncoderOptions o;
  o.max_frame_bytes = kFrameBudget;
  o.compress = c.compress;
  return o;
}

}  // namespace

Shipper::Shipper(Agent::Impl& impl)
    : impl_(impl),
      socket_(io_),
      tick_timer_(io_),
      reconnect_timer_(io_),
      connect_timer_(io_),
      shutdown_timer_(io_),
      ack_deadline_timer_(io_),
      encoder_(encoder_options(impl.config)),
      stream_id_(random_stream_id()) {
  thread_ = std::thread([this] { run(); });
}

Shipper::~Shipper() {
  stop();
}

void Shipper::run() {
  try {
    asio::post(io_, [this] {
      connect();
      schedule_tick();
    });
    io_.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "inferscope agent: shipper stopped: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "inferscope agent: shipper stopped by an unknown error\n");
  }
  std::lock_guard lock(flush_mu_);
  stopped_ = true;
  flush_cv_.notify_all();
}

void Shipper::stop() {
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    if (stopping_) return;
    stopping_ = true;
    tick_timer_.cancel();
    drain();
    shutdown_timer_.expires_after(impl_.config.shutdown_timeout);
    shutdown_timer_.async_wait([this](const asio::error_code& ec) {
      if (!ec) finish();
    });
    if (state_ == State::kDisconnected) {
      // One last immediate attempt (unless the peer there is known not to be a
      // collector); if it fails there is nobody to flush to.
      reconnect_timer_.cancel();
      if (peer_not_collector_)
        finish();
      else
        connect();
    } else {
      start_write();
      maybe_finish();
    }
  });
  thread_.join();
}

void Shipper::finish() {
  if (finished_) return;
  finished_ = true;
  asio::error_code ignored;
  socket_.close(ignored);
  connected.store(false);
  // The books close: kept frames were written but never acknowledged (in
  // doubt); queued frames were written before (in doubt) or never (undelivered).
  uint64_t unconfirmed = release_kept(), undelivered = 0;
  for (const Frame& f : pending_) (f.written ? unconfirmed : undelivered) += f.records;
  undelivered += encoder_records_;
  records_unconfirmed.fetch_add(unconfirmed, std::memory_order_relaxed);
  records_undelivered.fetch_add(undelivered, std::memory_order_relaxed);
  io_.stop();
}

void Shipper::schedule_tick() {
  tick_timer_.expires_after(impl_.config.flush_interval);
  tick_timer_.async_wait([this](const asio::error_code& ec) {
    if (ec || stopping_) return;
    drain();
    const auto now = std::chrono::steady_clock::now();
    if (now - last_health_ >= kHealthInterval) {
      health_due_ = true;
      last_health_ = now;
    }
    start_write();
    check_flush();
    schedule_tick();
  });
}

// [SECTION] draining and encoding

void Shipper::seal_frame() {
  if (encoder_.empty()) return;
  Frame f;
  f.records = encoder_records_;
  encoder_.finish(f.bytes);
  pending_bytes_ += f.bytes.size();
  pending_.push_back(std::move(f));
  pending_bytes.store(pending_bytes_, std::memory_order_relaxed);
  if (pending_bytes_ > pending_high_water.load(std::memory_order_relaxed))
    pending_high_water.store(pending_bytes_, std::memory_order_relaxed);
  encoder_records_ = 0;
}

void Shipper::drain() {
  drained_generation_ = flush_requested_.load(std::memory_order_acquire);
  const size_t max_pending = impl_.config.max_pending_bytes;
  const size_t n = impl_.slot_count.load(std::memory_order_acquire);
  // Ranges carry clock ticks: one map (refreshed off the host threads, here)
  // converts this whole drain to CLOCK_MONOTONIC ns before anything is encoded.
  TickMap ticks;
  if (impl_.gate && impl_.gate->tsc) {
    TickClock& clock = TickClock::instance();
    clock.recalibrate();
    ticks = clock.map();
  }
  for (size_t i = 0; i < n; ++i) {
    ThreadRing* tr = impl_.slots[i].get();
    // Stable while this drain runs: a ring is handed to another thread only
    // once its old thread exited and it is empty (drained).
    const uint32_t tid = tr->tid.load(std::memory_order_acquire);
    tr->ring.drain([&](const RingHeader& h, const uint8_t* p) {
      const auto kind = static_cast<wire::RecordKind>(h.kind);
      if (pending_bytes_ + encoder_.payload_bytes() >= max_pending) {
        auto& c = pending_dropped[h.kind & (kKinds - 1)];
        c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        return;
      }
      // Every data frame opens with its place in this agent's stream (records.hpp).
      if (encoder_.empty())
        encoder_.add(wire::Record{wire::FrameSequence{stream_id_, ++next_seq_}});
      switch (kind) {
        case wire::RecordKind::kSpan: {
          wire::Span s;
          if (h.sub == kSubTicks || h.sub == kSubTicksRequest) {
            hot::TickRangeRequest c{};  // TickRange is its prefix
            std::memcpy(&c, p, h.sub == kSubTicks ? sizeof(hot::TickRange) : sizeof c);
            s.track_kind = wire::TrackKind::kCpuThread;
            s.track_id = tid;
            s.name_id = c.name_id;
            s.category = wire::SpanCategory::kCpuRange;
            s.depth = h.count;
            s.start_ns = ticks.to_ns(c.start);
            s.end_ns = ticks.to_ns(c.end);
            s.request_id = c.request_id;
          } else if (h.sub == kSubFull) {
            std::memcpy(&s, p, sizeof s);
          } else {
            CpuSpanSlot c;
            std::memcpy(&c, p, sizeof c);
            s.track_kind = wire::TrackKind::kCpuThread;
            s.track_id = c.tid;
            s.name_id = c.name_id;
            s.category = static_cast<wire::SpanCategory>(c.category);
            s.depth = c.depth;
            s.start_ns = c.start_ns;
            s.end_ns = c.end_ns;
            s.request_id = c.request_id;
          }
          // A range whose name stands for a model layer (intern_layer) says
          // which, as a number: consumers need not parse the name. (Full spans
          // are CUPTI's: the tracer adds the arg itself.)
          if (h.sub != kSubFull && s.category == wire::SpanCategory::kCpuRange &&
              s.num_args < wire::kMaxSpanArgs) {
            if (const int32_t layer = layer_of(s.name_id); layer >= 0)
              s.args[s.num_args++] = {layer_key(), layer};
          }
          encoder_.add(s);
          break;
        }
        case wire::RecordKind::kExpertLoad: {
          ExpertLoadSlot c;
          std::memcpy(&c, p, sizeof c);
          auto& l = scratch_load_;
          l.step = c.step;
          l.layer = c.layer;
          l.timestamp_ns = c.timestamp_ns;
          l.tokens = c.tokens;
          l.dropped = c.dropped;
          l.rerouted = c.rerouted;
          l.routed.resize(h.count);
          if (h.count) std::memcpy(l.routed.data(), p + sizeof c, h.count * sizeof(uint32_t));
          encoder_.add(l);
          break;
        }
        case wire::RecordKind::kMemory: {
          wire::MemorySample m;
          std::memcpy(&m, p, sizeof m);
          encoder_.add(wire::Record{m});
          break;
        }
        case wire::RecordKind::kPrefixCache: {
          wire::PrefixCacheSample m;
          std::memcpy(&m, p, sizeof m);
          encoder_.add(wire::Record{m});
          break;
        }
        case wire::RecordKind::kStage: {
          wire::StageTiming m;
          std::memcpy(&m, p, sizeof m);
          encoder_.add(wire::Record{m});
          break;
        }
        case wire::RecordKind::kRequest: {
          wire::RequestEvent m;
          std::memcpy(&m, p, sizeof m);
          encoder_.add(wire::Record{m});
          break;
        }
        case wire::RecordKind::kCounter: {
          wire::CounterSample m;
          std::memcpy(&m, p, sizeof m);
          encoder_.add(wire::Record{m});
          break;
        }
        case wire::RecordKind::kExpertParallel: {
          EpStepSlot c;
          std::memcpy(&c, p, sizeof c);
          wire::ExpertParallelStep m;
          m.step = c.step;
          m.layer = c.layer;
          m.timestamp_ns = c.timestamp_ns;
          m.dispatch_ns = c.dispatch_ns;
          m.compute_ns = c.compute_ns;
          m.combine_ns = c.combine_ns;
          m.rows_sent = c.rows_sent;
          m.rows_computed = c.rows_computed;
          m.row_bytes = c.row_bytes;
          m.rows_to_rank.resize(h.count);
          if (h.count) std::memcpy(m.rows_to_rank.data(), p + sizeof c, h.count * sizeof(uint32_t));
          encoder_.add(wire::Record{std::move(m)});
          break;
        }
        default:
          return;  // not produced by the hot path
      }
      ++encoder_records_;
      if (encoder_.full()) seal_frame();
    });
  }
  seal_frame();
}

// [SECTION] connection

void Shipper::connect() {
  if (state_ != State::kDisconnected || finished_) return;
  state_ = State::kConnecting;
  const uint64_t epoch = epoch_;
  asio::error_code ec;
  asio::generic::stream_protocol::endpoint ep;
  const Endpoint& e = impl_.endpoint;
  if (e.kind == Endpoint::Kind::kUnix) {
    ep = asio::local::stream_protocol::endpoint(e.path);
  } else {
    auto addr = asio::ip::make_address(e.host, ec);
    if (ec) {
      // A host name: resolve it here (blocks only this thread, never the host).
      asio::ip::tcp::resolver resolver(io_);
      auto results = resolver.resolve(e.host, std::to_string(e.port), ec);
      if (ec || results.empty()) {
        state_ = State::kDisconnected;
        disconnect();
        return;
      }
      ep = results.begin()->endpoint();
    } else {
      ep = asio::ip::tcp::endpoint(addr, e.port);
    }
  }
  socket_.async_connect(ep, [this, epoch](const asio::error_code& cec) {
    connect_timer_.cancel();
    if (epoch != epoch_ || state_ != State::kConnecting) return;
    if (cec) {
      if (!ever_connected_ && !unreachable_said_ && !stopping_) {
        unreachable_said_ = true;  // once: the engine's exit line gives the final count
        std::fprintf(
            stderr,
            "inferscope agent: cannot reach the collector at %s (%s); retrying in the background\n",
            impl_.config.collector.c_str(), cec.message().c_str());
      }
      disconnect();
      return;
    }
    on_connected();
  });
  // A collector on another host may not answer at all: bound the attempt.
  connect_timer_.expires_after(
      std::max(impl_.config.reconnect_max_backoff, std::chrono::milliseconds(1000)));
  connect_timer_.async_wait([this, epoch](const asio::error_code& tec) {
    if (!tec && epoch == epoch_ && state_ == State::kConnecting) disconnect();
  });
}

void Shipper::on_connected() {
  state_ = State::kConnected;
  connected.store(true);
  if (ever_connected_) reconnects.fetch_add(1, std::memory_order_relaxed);
  ever_connected_ = true;
  backoff_ = std::chrono::milliseconds(0);
  hello_sent_ = false;
  strings_sent_ = 0;
  health_due_ = true;  // drop counts ship as soon as the connection is back
  last_health_ = std::chrono::steady_clock::now();
  start_read();
  start_write();
}

void Shipper::disconnect() {
  ++epoch_;
  asio::error_code ignored;
  socket_.close(ignored);
  state_ = State::kDisconnected;
  connected.store(false);
  writing_ = false;
  frames_in_flight_ = 0;
  final_health_in_flight_ = false;
  peer_draining_ = false;
  drain_announced_ = false;
  stream_bytes_ = acked_bytes_ = 0;
  requeue_kept();  // written again on the next connection; the collector skips what it has
  ack_have_ = 0;
  control_in_.clear();
  control_need_ = 0;
  valid_ack_seen_ = false;
  ack_deadline_armed_ = false;
  ack_deadline_timer_.cancel();
  connect_timer_.cancel();
  if (stopping_) {
    finish();  // nobody to flush to; do not hold the host's shutdown
    return;
  }
  if (protocol_error_) {
    protocol_error_ = false;
    peer_not_collector_ = true;  // until a peer acknowledges
    backoff_ = impl_.config.protocol_error_backoff;
  } else {
    backoff_ = backoff_.count() == 0 ? kFirstBackoff
                                     : std::min(backoff_ * 2, impl_.config.reconnect_max_backoff);
  }
  reconnect_timer_.expires_after(backoff_);
  reconnect_timer_.async_wait([this](const asio::error_code& ec) {
    if (!ec) connect();
  });
}

void Shipper::start_read() {
  // The collector sends only acknowledgements; reading also notices a closed
  // or draining peer while there is nothing to write.
  const uint64_t epoch = epoch_;
  socket_.async_read_some(
      asio::buffer(read_buffer_), [this, epoch](const asio::error_code& ec, size_t n) {
        if (epoch != epoch_) return;
        if (lingering_ && ec) {
          // A collector (it has acknowledged before) closed after
          // reading to our EOF: all delivered.
          if (ec == asio::error::eof && valid_ack_seen_)
            records_delivered.fetch_add(release_kept(), std::memory_order_relaxed);
          finish();
          return;
        }
        if (ec == asio::error::eof && drain_announced_) {
          on_peer_draining();
          return;
        }
        if (ec) {
          connection_broken();
          return;
        }
        on_ack_bytes(read_buffer_.data(), n);
        if (epoch != epoch_) return;  // the bytes ended this connection
        start_read();
      });
}

// The collector -> agent stream: 16-byte acknowledgements, and control
// messages (wire/capture.hpp) that start with an 8-byte header giving their
// length; a control message of a type this agent does not know is skipped.
void Shipper::on_ack_bytes(const uint8_t* data, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (control_need_ > 0) {
      control_in_.push_back(data[i]);
      if (control_in_.size() == control_need_) on_control_message();
      continue;
    }
    ack_partial_[ack_have_++] = data[i];
    if (ack_have_ < wire::kAckBytes) continue;
    ack_have_ = 0;
    uint32_t magic = 0;
    std::memcpy(&magic, ack_partial_.data(), 4);
    if (magic != wire::kAckMagic) {
      if (auto h = wire::decode_control_header(ack_partial_)) {
        control_in_.assign(ack_partial_.begin(), ack_partial_.end());
        control_need_ = h->length;
        if (control_in_.size() == control_need_) on_control_message();
        continue;
      }
    }
    const auto bytes = wire::decode_ack(std::span<const uint8_t, wire::kAckBytes>(ack_partial_));
    if (!bytes) {
      not_a_collector("it answered \"" +
                      printable_prefix(ack_partial_.data(), ack_partial_.size()) +
                      "\", not an inferscope acknowledgement");
      return;
    }
    valid_ack_seen_ = true;
    peer_not_collector_ = false;
    ack_deadline_timer_.cancel();
    acked_bytes_ = std::max(acked_bytes_, bytes->bytes_processed);
    if (bytes->draining) drain_announced_ = true;
    retire_acknowledged();
  }
}

void Shipper::on_control_message() {
  if (auto r = wire::decode_capture_request(control_in_)) {
    captures_received.fetch_add(1, std::memory_order_relaxed);
    // Counted (started / refused) by the GPU-trace scheduler; the answer
    // travels in the next AgentHealth.
    if (GpuTraceController* gpu = impl_.gpu_live.load(std::memory_order_acquire))
      gpu->request_capture(r->steps, std::chrono::milliseconds(r->duration_ms), r->tag());
  }
  control_in_.clear();
  control_need_ = 0;
}

// Kept frames the collector's latest acknowledgement covers are delivered. Also
// run after a write: an acknowledgement can overtake the write's completion.
void Shipper::retire_acknowledged() {
  uint64_t delivered = 0;
  while (!kept_.empty() && kept_.front().end <= acked_bytes_) {
    delivered += kept_.front().records;
    kept_bytes_ -= kept_.front().bytes.size();
    kept_.pop_front();
  }
  kept_records_ -= delivered;
  kept_bytes.store(kept_bytes_, std::memory_order_relaxed);
  records_delivered.fetch_add(delivered, std::memory_order_relaxed);
}

// A written frame waits here for its acknowledgement. The copies are bounded
// like the queue: beyond max_pending_bytes the oldest is given up (in doubt).
void Shipper::keep(Frame&& f) {
  kept_bytes_ += f.bytes.size();
  kept_records_ += f.records;
  kept_.push_back(std::move(f));
  while (kept_bytes_ > impl_.config.max_pending_bytes && kept_.size() > 1) {
    records_unconfirmed.fetch_add(kept_.front().records, std::memory_order_relaxed);
    kept_records_ -= kept_.front().records;
    kept_bytes_ -= kept_.front().bytes.size();
    kept_.pop_front();
  }
  kept_bytes.store(kept_bytes_, std::memory_order_relaxed);
}

// Empties the kept list and returns its records, for the caller to book.
uint64_t Shipper::release_kept() {
  const uint64_t records = kept_records_;
  kept_.clear();
  kept_bytes_ = 0;
  kept_records_ = 0;
  kept_bytes.store(0, std::memory_order_relaxed);
  return records;
}

// The connection is gone without a drain: what it did not acknowledge goes
// back to the front of the queue, in order, to be written again.
void Shipper::requeue_kept() {
  if (kept_.empty()) return;
  for (auto it = kept_.rbegin(); it != kept_.rend(); ++it) {
    pending_bytes_ += it->bytes.size();
    pending_.push_front(std::move(*it));
  }
  release_kept();  // its records are in the queue now
  pending_bytes.store(pending_bytes_, std::memory_order_relaxed);
}

// The peer accepted the connection but does not speak the protocol (a web
// server, a proxy, an old service on a reused port). Say so once, count it,
// and come back only every protocol_error_backoff.
void Shipper::not_a_collector(const std::string& why) {
  protocol_errors.fetch_add(1, std::memory_order_relaxed);
  if (!protocol_error_said_) {
    protocol_error_said_ = true;
    std::fprintf(stderr,
                 "inferscope agent: the peer at %s is not an inferscope collector: %s; "
                 "retrying every %lld ms (records wait in the bounded queue)\n",
                 impl_.config.collector.c_str(), why.c_str(),
                 static_cast<long long>(impl_.config.protocol_error_backoff.count()));
  }
  protocol_error_ = true;
  if (writing_) {
    asio::error_code ignored;
    socket_.cancel(ignored);  // the write's handler sees the error and disconnects
    return;
  }
  disconnect();
}

// The collector half-closed: it reads everything up to our EOF. Finish the
// write in flight (asio writes whole buffers, so whole frames), then close.
void Shipper::on_peer_draining() {
  peer_draining_ = true;
  if (!writing_) close_gracefully();
}

void Shipper::close_gracefully() {
  asio::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_send, ignored);
  // Delivered: the collector reads to this EOF before it exits (or counts the
  // connection under rejected_frames_total{reason="drain_deadline"}).
  records_delivered.fetch_add(release_kept(), std::memory_order_relaxed);
  disconnect();  // reconnects after the first backoff; the queue waits for the next collector
}

// Reset, kill -9, write error: whatever was written and not acknowledged may or
// may not have been processed; disconnect() queues it to be written again, and
// the collector's sequence check keeps it from being counted twice.
void Shipper::connection_broken() {
  if (writing_) {
    // Let the write's handler see the error and how far it got: it retires the
    // frames that went out whole before the connection is dropped.
    asio::error_code ignored;
    socket_.cancel(ignored);
    return;
  }
  disconnect();
}

// [SECTION] writing

void Shipper::add_health(wire::FrameEncoder& enc) {
  wire::AgentHealth h;
  h.timestamp_ns = now_ns();
  h.records_sent = records_sent.load(std::memory_order_relaxed);
  auto by_kind = dropped_by_kind();
  for (size_t k = 0; k < kKinds; ++k) {
    h.dropped_by_kind[k] = by_kind[k];
    h.records_dropped += by_kind[k];
  }
  h.buffer_high_water_bytes = high_water();
  h.reconnects = reconnects.load(std::memory_order_relaxed);
  h.bytes_sent = bytes_sent.load(std::memory_order_relaxed);
  h.records_unconfirmed = records_unconfirmed.load(std::memory_order_relaxed);
  if (GpuTraceController* gpu = impl_.gpu_live.load(std::memory_order_acquire)) {
    const GpuTraceStats g = gpu->stats();
    h.gpu.mode = static_cast<uint8_t>(g.mode);
    h.gpu.bursts_started = g.bursts_started;
    h.gpu.bursts_finished = g.bursts_finished;
    h.gpu.captures_requested = g.captures_requested;
    h.gpu.captures_started = g.captures_started;
    h.gpu.captures_refused_busy = g.captures_refused_busy;
    h.gpu.captures_refused_cooldown = g.captures_refused_cooldown;
    h.gpu.captures_refused_off = g.captures_refused_off;
    h.gpu.captures_completed = g.captures_completed;
    h.gpu.kernels_captured = g.kernels_captured;
    h.gpu.kernels_attributed = g.kernels_attributed;
    h.gpu.records_dropped = g.records_dropped;
    h.gpu.cupti_detaches = g.cupti_detaches;
    h.gpu.cupti_reattaches = g.cupti_reattaches;
    h.gpu.cupti_detach_errors = g.cupti_detach_errors;
  }
  enc.add(wire::Record{h});
}

void Shipper::start_write() {
  if (state_ != State::kConnected || writing_ || peer_draining_) return;
  control_.clear();
  write_buffers_.clear();
  wire::FrameEncoder enc(encoder_options(impl_.config));
  if (!hello_sent_ || model_dirty_) {
    enc.add(wire::Record{impl_.hello()});
    model_dirty_ = false;
  }
  const uint32_t names = interned_count();
  if (names > strings_sent_) {
    std::vector<wire::StringDef> defs;
    interned_strings(strings_sent_ + 1, names, defs);
    for (const auto& d : defs) {
      enc.add(d);
      if (enc.full()) enc.finish(control_);
    }
  }
  const bool final_health = stopping_ && pending_.empty() && !final_health_sent_;
  if (health_due_ || final_health) add_health(enc);
  if (!enc.empty()) enc.finish(control_);
  if (!control_.empty()) write_buffers_.push_back(asio::buffer(control_));

  size_t batch = control_.size();
  frames_in_flight_ = 0;
  for (const auto& f : pending_) {
    if (frames_in_flight_ > 0 && batch + f.bytes.size() > kWriteBatchBytes) break;
    write_buffers_.push_back(asio::buffer(f.bytes));
    batch += f.bytes.size();
    ++frames_in_flight_;
  }
  if (write_buffers_.empty()) return;

  writing_ = true;
  final_health_in_flight_ = final_health;
  const uint64_t epoch = epoch_;
  asio::async_write(socket_, write_buffers_,
                    [this, epoch, names](const asio::error_code& ec, size_t written) {
                      if (epoch != epoch_) return;
                      writing_ = false;
                      // Retire the frames this write transferred whole (all of them
                      // unless it failed part-way); a torn frame and the rest stay queued.
                      uint64_t records = 0;
                      uint64_t offset = stream_bytes_ + control_.size();
                      const uint64_t written_end = stream_bytes_ + written;
                      for (size_t i = 0; i < frames_in_flight_; ++i) {
                        Frame& f = pending_.front();
                        if (offset + f.bytes.size() > written_end) break;
                        offset += f.bytes.size();
                        if (!f.written) records += f.records;  // a re-sent frame counts once
                        f.written = true;
                        f.end = offset;
                        pending_bytes_ -= f.bytes.size();
                        if (f.records > 0) keep(std::move(f));
                        pending_.pop_front();
                      }
                      stream_bytes_ = written_end;
                      retire_acknowledged();
                      frames_in_flight_ = 0;
                      pending_bytes.store(pending_bytes_, std::memory_order_relaxed);
                      records_sent.fetch_add(records, std::memory_order_relaxed);
                      bytes_sent.fetch_add(written, std::memory_order_relaxed);
                      if (ec) {
                        final_health_in_flight_ = false;
                        disconnect();
                        return;
                      }
                      // The first write of a connection starts the clock on its
                      // first acknowledgement: a peer that never gives one is not a collector.
                      if (!valid_ack_seen_ && !ack_deadline_armed_) {
                        ack_deadline_armed_ = true;
                        ack_deadline_timer_.expires_after(impl_.config.ack_timeout);
                        ack_deadline_timer_.async_wait([this, epoch](const asio::error_code& tec) {
                          if (tec || epoch != epoch_ || valid_ack_seen_ || lingering_) return;
                          not_a_collector("no acknowledgement within " +
                                          std::to_string(impl_.config.ack_timeout.count()) + " ms");
                        });
                      }
                      hello_sent_ = true;
                      strings_sent_ = std::max(strings_sent_, names);
                      health_due_ = false;
                      if (final_health_in_flight_) final_health_sent_ = true;
                      if (peer_draining_) {
                        close_gracefully();
                        check_flush();
                        maybe_finish();
                        return;
                      }
                      check_flush();
                      start_write();
                      maybe_finish();
                    });
}

void Shipper::maybe_finish() {
  if (!stopping_ || writing_ || !pending_.empty() || !final_health_sent_ || lingering_) return;
  if (state_ != State::kConnected) {
    finish();
    return;
  }
  // Closing a socket with an unread acknowledgement in it sends a reset, and a
  // reset makes the collector discard what it has not read yet. So: shut our
  // side, keep reading until the collector has read everything and closed
  // (EOF), then close; shutdown_timeout still bounds the wait.
  lingering_ = true;
  asio::error_code ignored;
  socket_.shutdown(asio::socket_base::shutdown_send, ignored);
}

// [SECTION] flush

void Shipper::check_flush() {
  if (writing_ || !pending_.empty() || !encoder_.empty())
    return;  // written; acknowledgement not awaited
  std::lock_guard lock(flush_mu_);
  if (drained_generation_ > flush_done_) {
    flush_done_ = drained_generation_;
    flush_cv_.notify_all();
  }
}

bool Shipper::flush(std::chrono::milliseconds timeout) {
  const uint64_t gen = flush_requested_.fetch_add(1, std::memory_order_acq_rel) + 1;
  asio::post(io_, [this] {
    if (stopping_) return;
    drain();
    start_write();
    check_flush();
  });
  std::unique_lock lock(flush_mu_);
  return flush_cv_.wait_for(lock, timeout, [&] { return flush_done_ >= gen || stopped_; }) &&
         flush_done_ >= gen;
}

void Shipper::model_changed() {
  asio::post(io_, [this] {
    model_dirty_ = true;
    start_write();
  });
}

// [SECTION] accounting

std::array<uint64_t, kKinds> Shipper::dropped_by_kind() const {
  std::array<uint64_t, kKinds> out{};
  const size_t n = impl_.slot_count.load(std::memory_order_acquire);
  for (size_t i = 0; i < n; ++i)
    for (size_t k = 0; k < kKinds; ++k)
      out[k] += impl_.slots[i]->dropped[k].load(std::memory_order_relaxed);
  for (size_t k = 0; k < kKinds; ++k) {
    out[k] += impl_.overflow_dropped[k].load(std::memory_order_relaxed);
    out[k] += pending_dropped[k].load(std::memory_order_relaxed);
  }
  // GPU activity CUPTI had no buffer for: spans that never reached a ring.
  if (CuptiTracer* t = impl_.tracer.load())
    out[static_cast<size_t>(wire::RecordKind::kSpan)] += t->dropped_records();
  return out;
}

uint64_t Shipper::high_water() const {
  uint64_t hw = 0;
  const size_t n = impl_.slot_count.load(std::memory_order_acquire);
  for (size_t i = 0; i < n; ++i) hw = std::max(hw, impl_.slots[i]->ring.high_water());
  return hw;
}

}  // namespace inferscope::agent::detail
