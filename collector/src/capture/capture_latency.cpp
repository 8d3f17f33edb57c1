// Episode -> capture landed in the store (capture_latency.hpp says what each stage means).
#include "capture_latency.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>

namespace inferscope::collector::detail {

namespace {
// 1 ms to 60 s: an ack comes with the agent's next health report (~1 s), the
// store settles a block at --trace-block-age (1 s) after its first frame, and a
// capture runs up to the agent's INFERSCOPE_GPU_CAPTURE_MAX_MS (2 s).
const prometheus::Histogram::BucketBoundaries kBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60};

// The agent names the arg "capture" (agent/src/cupti/cupti_tracer.cpp).
constexpr const char* kCaptureArg = "capture";
}  // namespace

CaptureLatency::CaptureLatency(const CaptureLatencyOptions& options, prometheus::Registry& registry)
    : options_(options),
      // Forwarded frames passed the pipeline's size check already.
      decoder_(wire::DecoderOptions{UINT32_MAX}),
      latency_(prometheus::BuildHistogram()
                   .Name("inferscope_collector_capture_latency_seconds")
                   .Help("Per GPU capture sent to an agent: seconds from the episode's opening "
                         "(alert opened, or POST /capture) to the agent's start, its first "
                         "span ingested, and its spans stored (settled in the trace store)")
                   .Register(registry)),
      started_(latency_.Add({{"stage", "started"}}, kBuckets)),
      first_span_(latency_.Add({{"stage", "first_span"}}, kBuckets)),
      stored_(latency_.Add({{"stage", "stored"}}, kBuckets)),
      not_landed_(prometheus::BuildCounter()
                      .Name("inferscope_collector_capture_not_landed_total")
                      .Help("GPU captures sent to an agent that never landed in the trace store, "
                            "by reason (refused_busy, refused_cooldown, refused_off, no_ack, "
                            "no_spans, not_completed, not_stored, disconnected, evicted)")
                      .Register(registry)) {}

double CaptureLatency::seconds_since_open(const Pending& p, int64_t t) const {
  return static_cast<double>(std::max<int64_t>(t - p.opened_ns, 0)) / 1e9;
}

std::string CaptureLatency::describe(const Pending& p) const {
  char buf[128];
  std::snprintf(buf, sizeof buf, "capture %" PRIu64 " (%s, tag %" PRIu64 ") of source %u",
                p.capture_id, p.origin, p.tag, p.source);
  return buf;
}

void CaptureLatency::on_sent(const Source& source, uint64_t capture_id, uint64_t tag,
                             const char* origin, int64_t opened_ns,
                             const wire::AgentHealth::Gpu& before) {
  if (pending_.size() >= options_.max_pending) {
    not_landed(pending_.front(), "evicted", opened_ns);
    pending_.pop_front();
  }
  Pending p;
  p.source = source.id;
  p.capture_id = capture_id;
  p.tag = tag;
  p.origin = origin;
  p.opened_ns = opened_ns;
  p.before = before;
  pending_.push_back(p);
}

void CaptureLatency::mark_started(Pending& p, int64_t now_ns) {
  if (p.started_ns >= 0) return;
  p.started_ns = now_ns;
  started_.Observe(seconds_since_open(p, now_ns));
}

void CaptureLatency::on_health(const Source& source, const wire::AgentHealth::Gpu& gpu,
                               int64_t now_ns) {
  bool refused = false;
  for (Pending& p : pending_) {
    if (p.source != source.id) continue;
    if (p.started_ns < 0) {
      if (gpu.captures_started > p.before.captures_started) {
        mark_started(p, now_ns);
      } else if (gpu.captures_requested > p.before.captures_requested) {
        // It arrived and was not started: a refusal names why.
        const char* why = gpu.captures_refused_busy > p.before.captures_refused_busy
                              ? "refused_busy"
                          : gpu.captures_refused_cooldown > p.before.captures_refused_cooldown
                              ? "refused_cooldown"
                          : gpu.captures_refused_off > p.before.captures_refused_off ? "refused_off"
                                                                                     : nullptr;
        if (why) {
          not_landed(p, why, now_ns);
          p.source = 0;  // retired below
          refused = true;
          continue;
        }
      }
    }
    if (p.completed) {
      ++p.health_since_complete;
    } else if (p.started_ns >= 0 && gpu.captures_completed > p.before.captures_completed) {
      p.completed = true;
    }
  }
  if (refused) std::erase_if(pending_, [](const Pending& p) { return p.source == 0; });
  land(now_ns);
}

void CaptureLatency::scan_frame(SourceRegistry& sources, std::span<const uint8_t> frame,
                                uint64_t ticket, int64_t now_ns) {
  const auto header = wire::peek_frame_header(frame);
  if (!header || header->source_id == 0) return;  // the collector's own (alerts)
  const uint32_t id = header->source_id;
  const Source* source = sources.find(id);
  if (source == nullptr) return;
  // The capture arg's string id, looked up again only while it is unknown and the strings moved.
  bool any = false;
  for (Pending& p : pending_) {
    if (p.source != id) continue;
    if (p.capture_key == 0 && p.strings_version != source->strings_version) {
      p.strings_version = source->strings_version;
      for (const auto& [sid, value] : source->strings)
        if (value == kCaptureArg) p.capture_key = sid;
    }
    any |= p.capture_key != 0;
  }
  if (!any) return;
  if (!decoder_.open(frame).ok()) return;
  while (decoder_.next(record_)) {
    const auto* span = std::get_if<wire::Span>(&record_);
    if (span == nullptr) continue;
    for (uint8_t i = 0; i < span->num_args && i < wire::kMaxSpanArgs; ++i) {
      const wire::SpanArg& arg = span->args[i];
      for (Pending& p : pending_) {
        if (p.source != id || p.capture_key == 0 || arg.key_id != p.capture_key ||
            arg.value != static_cast<int64_t>(p.tag & INT64_MAX))
          continue;
        if (p.first_span_ns < 0) {
          mark_started(p, now_ns);  // the spans can overtake the health report
          p.first_span_ns = now_ns;
          first_span_.Observe(seconds_since_open(p, now_ns));
        }
        ++p.spans;
        p.last_ticket = ticket;
        p.settled_ns = -1;  // a newer frame of it has to settle now
      }
    }
  }
  land(now_ns);
}

void CaptureLatency::land(int64_t now_ns) {
  const uint64_t settled = settled_ ? settled_() : 0;
  std::erase_if(pending_, [&](Pending& p) {
    if (p.first_span_ns < 0) return false;
    if (settled_ && p.settled_ns < 0 && settled >= p.last_ticket) p.settled_ns = now_ns;
    if (!p.completed || p.health_since_complete < options_.health_after_complete) return false;
    return landed(p);
  });
}

bool CaptureLatency::landed(const Pending& p) {
  if (settled_ && p.settled_ns < 0) return false;
  char buf[200];
  if (settled_) {
    stored_.Observe(seconds_since_open(p, p.settled_ns));
    std::snprintf(buf, sizeof buf,
                  ": %" PRIu64
                  " spans stored; from the episode's opening: started %.3f s, "
                  "first span %.3f s, stored %.3f s",
                  p.spans, seconds_since_open(p, p.started_ns),
                  seconds_since_open(p, p.first_span_ns), seconds_since_open(p, p.settled_ns));
  } else {
    // No store: nothing to land in, and nothing missing either.
    std::snprintf(buf, sizeof buf,
                  ": %" PRIu64
                  " spans (no trace store); from the episode's opening: started "
                  "%.3f s, first span %.3f s",
                  p.spans, seconds_since_open(p, p.started_ns),
                  seconds_since_open(p, p.first_span_ns));
  }
  if (log_) log_(describe(p) + buf);
  return true;
}

void CaptureLatency::not_landed(const Pending& p, const char* reason, int64_t now_ns) {
  not_landed_.Add({{"reason", reason}}).Increment();
  if (log_) {
    char buf[96];
    std::snprintf(buf, sizeof buf, ": did not land (%s) %.3f s after the episode opened", reason,
                  seconds_since_open(p, now_ns));
    log_(describe(p) + buf);
  }
}

void CaptureLatency::tick(SourceRegistry& sources, int64_t now_ns) {
  if (pending_.empty()) return;
  land(now_ns);
  std::erase_if(pending_, [&](const Pending& p) {
    const Source* s = sources.find(p.source);
    if (s == nullptr || !s->connected) {
      // Nothing more comes from it: what arrived and settled is the capture.
      if (p.first_span_ns >= 0 && landed(p)) return true;
      not_landed(p, "disconnected", now_ns);
      return true;
    }
    if (now_ns - p.opened_ns < options_.timeout_ns) return false;
    not_landed(p,
               p.started_ns < 0      ? "no_ack"
               : p.first_span_ns < 0 ? "no_spans"
               : !p.completed        ? "not_completed"
                                     : "not_stored",
               now_ns);
    return true;
  });
}

}  // namespace inferscope::collector::detail
