// How long a GPU capture takes to land (issue 19 part 6): per capture request
// sent to an agent, the time from the episode's opening (the alert opening at
// the collector, or the POST /capture arriving) to
//
//   started     the agent acknowledged the capture: its AgentHealth counts one
//               more capture started than before the send, or (when spans beat
//               the health report) the capture's first span arrived;
//   first_span  the first span tagged with the capture (arg "capture" = the tag)
//               was ingested;
//   stored      the agent reported the window complete (captures_completed went
//               up), and every frame holding the capture's spans was settled by
//               the trace store (TraceStore::settled_ticket: in its segment
//               file, so the viewer and `inferscope-export --episode` read it).
//
// so started <= first_span <= stored for each capture. Exported as
// inferscope_collector_capture_latency_seconds{stage} (a histogram, 1 ms to
// 60 s); captures that never land are counted in
// inferscope_collector_capture_not_landed_total{reason}:
//   refused_busy | refused_cooldown | refused_off  the agent said no (health)
//   no_ack         no start reported within the timeout
//   no_spans       started, but no span of it within the timeout (no CUPTI)
//   not_completed  spans, but the agent never reported the window complete
//   not_stored     complete, but its frames were not settled by the store
//   disconnected   the agent's connection closed before it landed
//   evicted        the table of pending captures was full (the oldest goes)
//
// Why "complete" waits for one more health report: the agent counts a window
// complete before it flushes CUPTI's last records, so the report that says
// complete can overtake the last spans. A health report ~1 s later follows
// them (the agent drains its rings before it writes a report). The stored time
// itself is when the last span frame seen was settled, not when the later
// report came, so the wait does not inflate the figure. Spans that arrive even
// later are not waited for.
//
// Attribution of health counters: they are cumulative per agent, not per
// capture, so each pending capture compares them with the agent's counts when
// it was sent. The collector sends an agent a new capture no sooner than
// CaptureOptions::busy_ns after the last (2 s; an ms= capture's length when
// shorter), and the agent reports every second, so a report's new counts
// belong to one capture: exact unless the busy time is below the report
// interval or the host asks the agent for captures of its own at the same
// time. Spans are matched exactly by tag.
//
// Without a trace store (no --trace-dir) there is nothing to land in: a
// capture leaves the table once complete, with started and first_span
// observed and no stored.
//
// Bounded: at most max_pending captures tracked (about one per agent, given
// the collector's cooldown); frames are decoded only while their agent has a
// capture pending. Single-threaded: the collector's io thread.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <string>

#include "inferscope/collector/sources.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::collector::detail {

struct CaptureLatencyOptions {
  size_t max_pending = 256;             // agent captures tracked at once
  int64_t timeout_ns = 60'000'000'000;  // not stored by then: counted as not landed
  uint32_t health_after_complete = 1;   // reports awaited after the one saying complete
};

class CaptureLatency {
 public:
  using Log = std::function<void(const std::string&)>;
  // Store tickets (TraceStore::last_ticket / settled_ticket); empty when there is no store.
  using Settled = std::function<uint64_t()>;

  CaptureLatency(const CaptureLatencyOptions& options, prometheus::Registry& registry);
  void set_log(Log log) { log_ = std::move(log); }
  void set_settled(Settled settled) { settled_ = std::move(settled); }

  // A capture request written to an agent's connection at opened_ns (the
  // episode's opening); origin: "episode" or "user" (a static string, for the
  // log); before: the agent's last reported GPU counts (zeros when it has not
  // reported yet).
  void on_sent(const Source& source, uint64_t capture_id, uint64_t tag, const char* origin,
               int64_t opened_ns, const wire::AgentHealth::Gpu& before);
  void on_health(const Source& source, const wire::AgentHealth::Gpu& gpu, int64_t now_ns);
  // A frame the pipeline forwarded; ticket: the store's ticket for it (0: no store).
  void on_frame(SourceRegistry& sources, std::span<const uint8_t> frame, uint64_t ticket,
                int64_t now_ns) {
    if (!pending_.empty()) scan_frame(sources, frame, ticket, now_ns);
  }
  // Periodically: stored captures land, late ones time out, gone agents' are dropped.
  void tick(SourceRegistry& sources, int64_t now_ns);

  size_t pending() const { return pending_.size(); }

 private:
  struct Pending {
    uint32_t source = 0;
    uint64_t capture_id = 0;
    uint64_t tag = 0;
    const char* origin = "";
    int64_t opened_ns = 0;
    wire::AgentHealth::Gpu before;
    int64_t started_ns = -1;
    int64_t first_span_ns = -1;
    bool completed = false;
    uint32_t health_since_complete = 0;
    uint64_t spans = 0;
    uint64_t last_ticket = 0;  // store ticket of the newest frame holding its spans
    int64_t settled_ns = -1;   // when last_ticket was seen settled (-1: not yet)
    uint32_t capture_key = 0;  // the source's string id of "capture" (0: not found yet)
    uint64_t strings_version = UINT64_MAX;  // of the last lookup of capture_key
  };

  void scan_frame(SourceRegistry& sources, std::span<const uint8_t> frame, uint64_t ticket,
                  int64_t now_ns);
  void mark_started(Pending& p, int64_t now_ns);
  // Retires the captures that have landed (observing stored).
  void land(int64_t now_ns);
  // Observes stored and logs when p's frames are settled (or there is no store); false if not.
  bool landed(const Pending& p);
  void not_landed(const Pending& p, const char* reason, int64_t now_ns);
  std::string describe(const Pending& p) const;
  double seconds_since_open(const Pending& p, int64_t t) const;

  CaptureLatencyOptions options_;
  Log log_;
  Settled settled_;
  std::deque<Pending> pending_;  // oldest first
  wire::FrameDecoder decoder_;
  wire::Record record_;
  prometheus::Family<prometheus::Histogram>& latency_;  // one family, a series per stage
  prometheus::Histogram& started_;
  prometheus::Histogram& first_span_;
  prometheus::Histogram& stored_;
  prometheus::Family<prometheus::Counter>& not_landed_;
};

}  // namespace inferscope::collector::detail
