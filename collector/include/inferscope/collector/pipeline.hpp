// inferscope collector: what happens to one frame from an agent.
//
// Transport-independent (the socket code hands it whole frames), so tests can
// drive it directly and the benchmark can measure it without sockets.
//
//   1. decode and validate each record (the wire decoder's checks, then the
//      protocol's: the first record is a hello of protocol version 1 with the
//      right token, string-table limits, records consistent with the hello)
//      and apply it at once to the source table and the aggregator;
//      A data frame opens with a FrameSequence: one already applied for its
//      agent stream (re-sent after a reconnect) is skipped whole and counted in
//      inferscope_collector_duplicate_frames_total;
//   2. when the whole frame was good, forward it, stamped with the source id, to the trace store
//   and
//      the viewers. A frame holding a hello is re-encoded without the token;
//      any other frame only has its source id and CRC rewritten.
// A rejected frame is not forwarded and the connection must be closed; records
// before the bad one in that frame have been aggregated.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "inferscope/collector/aggregator.hpp"
#include "inferscope/collector/metrics.hpp"
#include "inferscope/collector/options.hpp"
#include "inferscope/collector/rate_limited_log.hpp"
#include "inferscope/collector/record_tap.hpp"
#include "inferscope/collector/sources.hpp"
#include "inferscope/collector/stream_sequences.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::collector {

// Per-connection protocol state.
struct Session {
  explicit Session(const ConnectionLimits& limits)
      : decoder(wire::DecoderOptions{limits.max_frame_bytes}) {}
  uint32_t source_id = 0;  // 0 until the hello arrived
  std::string peer;
  wire::FrameDecoder decoder;
};

struct Rejection {
  std::string reason;   // the metric label: bad_magic, checksum, no_hello, auth, ...
  std::string message;  // for the log
};

// Label value for a decoder error.
const char* rejection_reason(wire::DecodeError error);

// Frames shared by every consumer (trace store, each viewer) without copying.
using SharedFrame = std::shared_ptr<const std::vector<uint8_t>>;

class Pipeline {
 public:
  using FrameSink = std::function<void(const SharedFrame&)>;
  using Log = std::function<void(const std::string&)>;

  Pipeline(const CollectorOptions& options, CollectorMetrics& metrics, Log log);

  // Decodes, aggregates and forwards one whole frame. False: rejected (counted in
  // inferscope_collector_rejected_frames_total{reason}); close the connection.
  bool on_frame(Session& session, std::span<const uint8_t> frame, Rejection& why);
  void on_close(Session& session);
  void tick(int64_t steady_now_ns);  // closes windows by the estimated agent clock; flushes the log

  // Extra listeners (the capture coordinator): every alert episode as it opens
  // or closes, and every AgentHealth record with its source.
  using AlertListener = std::function<void(const wire::AlertEpisode&)>;
  using HealthListener = std::function<void(const Source&, const wire::AgentHealth&)>;
  void set_alert_listener(AlertListener l) { alert_listener_ = std::move(l); }
  void set_health_listener(HealthListener l) { health_listener_ = std::move(l); }

  // Where forwarded frames and alert frames go (the collector wires store and viewers here).
  void set_frame_sink(FrameSink sink) { sink_ = std::move(sink); }
  // Sees the records of each frame forwarded to the sink as they are decoded
  // (record_tap.hpp; the trace store's TraceStore::record_tap()). Not owned.
  void set_record_tap(RecordTap* tap) { tap_ = tap; }
  // Times and record count of the frame being handed to the sink (valid during the call),
  // summarized while decoding, so the trace store indexes it without decoding again.
  const wire::FrameSummary& sink_frame_summary() const { return sink_summary_; }

  // Hello + strings of every source, then the recent alerts: what a viewer gets first.
  void replay(std::vector<std::vector<uint8_t>>& frames, bool with_alerts) const;

  Aggregator& aggregator() { return aggregator_; }
  SourceRegistry& sources() { return sources_; }
  // Per agent stream, the last frame applied (re-sent frames are skipped).
  StreamSequences& sequences() { return sequences_; }

 private:
  bool reject(Session& session, Rejection& why, std::string reason, std::string message);
  void on_alert(const wire::AlertEpisode& alert);

  const CollectorOptions& options_;
  CollectorMetrics& metrics_;
  Log log_;
  // Rejections and new sources, keyed by reason: a flood writes few lines.
  RateLimitedLog connection_log_;
  SourceRegistry sources_;
  StreamSequences sequences_;
  Aggregator aggregator_;
  FrameSink sink_;
  RecordTap* tap_ = nullptr;
  AlertListener alert_listener_;
  HealthListener health_listener_;
  wire::FrameSummary sink_summary_;
  wire::Record scratch_;  // the record being decoded
  std::array<prometheus::Counter*, wire::kRecordKindCount> record_counters_{};
};

// Constant-time comparison (the time does not depend on where the strings differ).
bool tokens_equal(const std::string& a, const std::string& b);

}  // namespace inferscope::collector
