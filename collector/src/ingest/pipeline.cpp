#include "inferscope/collector/pipeline.hpp"

#include <chrono>
#include <cstring>
#include <utility>

namespace inferscope::collector {

const char* rejection_reason(wire::DecodeError error) {
  switch (error) {
    case wire::DecodeError::kBadMagic:
      return "bad_magic";
    case wire::DecodeError::kUnsupportedVersion:
      return "unsupported_version";
    case wire::DecodeError::kFrameTooLarge:
      return "frame_too_large";
    case wire::DecodeError::kChecksumMismatch:
      return "checksum";
    case wire::DecodeError::kDecompressFailed:
      return "decompress";
    case wire::DecodeError::kTruncatedRecord:
      return "truncated_record";
    case wire::DecodeError::kMalformedRecord:
      return "malformed_record";
    case wire::DecodeError::kRecordCountMismatch:
      return "record_count";
    default:
      return "other";
  }
}

bool tokens_equal(const std::string& a, const std::string& b) {
  // Compares over the longer length so neither the position of the first
  // difference nor (beyond the length check) the content leaks through timing.
  const size_t n = std::max(a.size(), b.size());
  volatile uint8_t diff = static_cast<uint8_t>(a.size() != b.size());
  for (size_t i = 0; i < n; ++i) {
    const uint8_t x = i < a.size() ? static_cast<uint8_t>(a[i]) : 0;
    const uint8_t y = i < b.size() ? static_cast<uint8_t>(b[i]) : 0;
    diff = diff | static_cast<uint8_t>(x ^ y);
  }
  return diff == 0;
}

Pipeline::Pipeline(const CollectorOptions& options, CollectorMetrics& metrics, Log log)
    : options_(options),
      metrics_(metrics),
      log_(std::move(log)),
      connection_log_(log_),
      aggregator_(options.aggregation, metrics) {
  aggregator_.set_alert_sink([this](const wire::AlertEpisode& a) { on_alert(a); });
  for (uint8_t k = 0; k < wire::kRecordKindCount; ++k)
    record_counters_[k] =
        &metrics_.records.Add({{"kind", wire::to_string(static_cast<wire::RecordKind>(k))}});
}

bool Pipeline::reject(Session& session, Rejection& why, std::string reason, std::string message) {
  why.reason = std::move(reason);
  why.message = (session.peer.empty() ? std::string("connection") : session.peer) + ": " + message;
  metrics_.rejected(why.reason).Increment();
  connection_log_.write(why.reason, "closing " + why.message);
  return false;
}

bool Pipeline::on_frame(Session& session, std::span<const uint8_t> frame, Rejection& why) {
  wire::FrameDecoder& dec = session.decoder;
  auto st = dec.open(frame);
  if (!st.ok()) return reject(session, why, rejection_reason(st.error), st.message);
  aggregator_.note_arrival(std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::steady_clock::now().time_since_epoch())
                               .count());

  // One pass: each record is checked and applied as it is decoded (no copy of
  // the frame's records). A frame that fails part-way has had its earlier
  // records counted in the aggregates, but it is never forwarded, and the
  // connection is closed.
  //
  // The record tap sees each record once it is applied; a frame that is not
  // forwarded after all is aborted there (by the guard, on every early return).
  struct TapGuard {
    RecordTap* tap;
    ~TapGuard() {
      if (tap) tap->abort_frame();
    }
  } tap{sink_ ? tap_ : nullptr};
  // The aggregator's batched counters get this frame's records however the frame ends
  // (applied whole, rejected part-way, skipped as a duplicate).
  struct FlushGuard {
    Aggregator& aggregator;
    ~FlushGuard() { aggregator.flush_metrics(); }
  } flush{aggregator_};
  if (tap.tap) {
    tap.tap->begin_frame();
    dec.fuse_columns(tap.tap->columns());  // the store's column split, as records decode
  }
  Source* source = sources_.find(session.source_id);
  bool has_hello = false;
  std::array<uint32_t, wire::kRecordKindCount> per_kind{};
  std::string problem;
  wire::Record& rec = scratch_;
  wire::FrameSummary summary;
  bool first = true;
  while (dec.next(rec)) {
    const auto kind = wire::kind_of(rec);
    const bool was_first = std::exchange(first, false);
    wire::summarize_record(rec, summary);
    if (kind != wire::RecordKind::kFrameSequence) ++per_kind[static_cast<size_t>(kind)];
    switch (kind) {
      case wire::RecordKind::kFrameSequence: {
        // A data frame's place in its agent's stream: one the agent wrote again
        // after a reconnect, and already applied here, is skipped whole.
        if (!was_first)
          return reject(session, why, "malformed_record",
                        "a frame sequence record must come first in its frame");
        const auto& fs = std::get<wire::FrameSequence>(rec);
        if (!sequences_.admit(fs.stream, fs.seq)) {
          metrics_.duplicate_frames.Increment();
          return true;
        }
        break;
      }
      case wire::RecordKind::kHello: {
        auto& h = std::get<wire::Hello>(rec);
        if (h.protocol_version != wire::kProtocolVersion)
          return reject(session, why, "protocol_version",
                        "hello says protocol version " + std::to_string(h.protocol_version) +
                            ", this collector speaks " + std::to_string(wire::kProtocolVersion));
        if (!options_.auth_token.empty() && !tokens_equal(h.auth_token, options_.auth_token))
          return reject(session, why, "auth", "hello has a missing or wrong auth token");
        h.auth_token.clear();
        has_hello = true;
        dec.stop_columns();  // the frame is stored re-encoded (below): split whole then
        if (source == nullptr) {
          // Records before this one were tapped without the source id the frame
          // gets now: this frame (once per connection) is left to the sink to decode.
          if (tap.tap) std::exchange(tap.tap, nullptr)->abort_frame();
          source = &sources_.add(h);
          session.source_id = source->id;
          metrics_.connections.Increment();
          connection_log_.write("source", "source " + std::to_string(source->id) + " (" +
                                              session.peer + "): " + h.service + " " + h.instance +
                                              " model " + source->model + " rank " + source->rank);
        } else {
          // A re-sent hello (the agent's set_model) replaces the description.
          aggregator_.on_disconnect(*source);
          source->hello = h;
          source->model = h.model.name.empty() ? "unknown" : h.model.name.substr(0, 128);
          source->rank = std::to_string(h.rank);
        }
        aggregator_.on_connect(*source);
        break;
      }
      case wire::RecordKind::kStringDef: {
        if (source == nullptr)
          return reject(session, why, "no_hello", "first record is a string, expected hello");
        auto& d = std::get<wire::StringDef>(rec);
        auto [it, inserted] = source->strings.try_emplace(d.id);
        if (inserted && source->strings.size() > options_.limits.max_strings) {
          source->strings.erase(it);
          return reject(
              session, why, "string_limit",
              "more than " + std::to_string(options_.limits.max_strings) + " interned strings");
        }
        const size_t bytes = source->string_bytes - it->second.size() + d.value.size();
        if (bytes > options_.limits.max_string_bytes)
          return reject(session, why, "string_limit",
                        "more than " + std::to_string(options_.limits.max_string_bytes) +
                            " bytes of strings");
        source->string_bytes = bytes;
        it->second = d.value;  // copied: the record tap sees it after this
        ++source->strings_version;
        break;
      }
      case wire::RecordKind::kAlert:
        return reject(session, why, "malformed_record", "agents may not send alert records");
      case wire::RecordKind::kRangeQuery:
      case wire::RecordKind::kRangeEnd:
        return reject(session, why, "malformed_record",
                      "range records belong to the viewer API, not ingest");
      default:
        if (source == nullptr)
          return reject(
              session, why, "no_hello",
              std::string("first record is ") + wire::to_string(kind) + ", expected hello");
        if (Aggregator::takes(rec) && !aggregator_.on_record(*source, rec, problem))
          return reject(session, why, "schema", problem);
        if (kind == wire::RecordKind::kAgentHealth && health_listener_)
          health_listener_(*source, std::get<wire::AgentHealth>(rec));
        break;
    }
    if (tap.tap) tap.tap->record(session.source_id, rec);
  }
  if (!dec.status().ok())
    return reject(session, why, rejection_reason(dec.status().error), dec.status().message);
  if (source == nullptr)
    return reject(session, why, "no_hello", "empty first frame, expected hello");

  metrics_.frames.Increment();
  for (uint8_t k = 0; k < wire::kRecordKindCount; ++k)
    if (per_kind[k]) record_counters_[k]->Increment(per_kind[k]);

  // Forward.
  if (!sink_) return true;
  auto out = std::make_shared<std::vector<uint8_t>>();
  if (has_hello) {
    // Rare: re-encode the frame without the auth token.
    wire::EncoderOptions eo;
    eo.source_id = session.source_id;
    eo.max_frame_bytes = UINT32_MAX;  // the input already fit the limit
    wire::FrameEncoder enc(eo);
    wire::FrameDecoder again;
    again.open(frame);
    while (again.next(rec)) {
      if (auto* h = std::get_if<wire::Hello>(&rec)) h->auth_token.clear();
      enc.add(rec);
    }
    enc.finish(*out);
  } else {
    out->assign(frame.begin(), frame.end());
    wire::restamp_source_id(*out, session.source_id);
  }
  sink_summary_ = summary;
  if (tap.tap) std::exchange(tap.tap, nullptr)->end_frame();
  sink_(out);
  return true;
}

void Pipeline::on_close(Session& session) {
  if (session.source_id == 0) return;
  if (Source* s = sources_.find(session.source_id)) {
    aggregator_.on_disconnect(*s);
    metrics_.connections.Decrement();
  }
  sources_.close(session.source_id);
  session.source_id = 0;
}

void Pipeline::tick(int64_t steady_now_ns) {
  connection_log_.flush_due();
  if (auto now = aggregator_.estimated_now(steady_now_ns)) {
    // A grace of half a window lets agents' last flush of a window arrive first.
    aggregator_.advance(*now - options_.aggregation.window_ns / 2);
  }
}

void Pipeline::on_alert(const wire::AlertEpisode& a) {
  if (log_) {
    char buf[320];
    if (a.kind == wire::AlertKind::kDropBurst)
      std::snprintf(buf, sizeof buf, "%s %s: model %s rank %u layer %u peak dropped/routed %.3f",
                    wire::to_string(a.kind), a.end_ns == 0 ? "opened" : "closed", a.model.c_str(),
                    a.rank, a.layer, a.peak_share);
    else
      std::snprintf(buf, sizeof buf,
                    "%s %s: model %s rank %u layer %u expert %u peak utilization %.2f share %.3f",
                    wire::to_string(a.kind), a.end_ns == 0 ? "opened" : "closed", a.model.c_str(),
                    a.rank, a.layer, a.expert, a.peak_utilization, a.peak_share);
    log_(buf);
  }
  if (alert_listener_) alert_listener_(a);
  if (!sink_) return;
  wire::EncoderOptions eo;
  eo.source_id = wire::kCollectorSource;
  wire::FrameEncoder enc(eo);
  enc.add(wire::Record{a});
  auto out = std::make_shared<std::vector<uint8_t>>();
  enc.finish(*out);
  sink_summary_ = {};
  wire::summarize_record(wire::Record{a}, sink_summary_);
  sink_(out);
}

void Pipeline::replay(std::vector<std::vector<uint8_t>>& frames, bool with_alerts) const {
  sources_.replay(frames);
  if (!with_alerts || aggregator_.recent_alerts().empty()) return;
  wire::EncoderOptions eo;
  eo.source_id = wire::kCollectorSource;
  wire::FrameEncoder enc(eo);
  std::vector<uint8_t> frame;
  for (const auto& a : aggregator_.recent_alerts()) enc.add(wire::Record{a});
  enc.finish(frame);
  frames.push_back(std::move(frame));
}

}  // namespace inferscope::collector
