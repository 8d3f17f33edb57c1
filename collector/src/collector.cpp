#include "inferscope/collector/collector.hpp"

#include <prometheus/exposer.h>

#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "capture/capture_http.hpp"
#include "inferscope/collector/capture.hpp"
#include "inferscope/collector/endpoint.hpp"
#include "inferscope/collector/ingest_server.hpp"
#include "inferscope/collector/trace_store.hpp"
#include "inferscope/collector/viewer_server.hpp"
#include "ingest/tcp_acceptor.hpp"

namespace inferscope::collector {

void log_line(const std::string& message) {
  static std::mutex mu;
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "%s inferscope-collector: %s\n", stamp, message.c_str());
}

namespace {
// How long a graceful stop waits for agents to close their side (docs/reliability.md).
constexpr auto kDrainDeadline = std::chrono::seconds(5);

// Every start() error names the flag and the address it came from:
// "--metrics 127.0.0.1:9464: cannot listen: Address already in use".
bool flag_error(std::string& error, const char* flag, const std::string& address) {
  error = std::string(flag) + " " + address + ": " + error;
  return false;
}

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

struct Collector::Impl {
  explicit Impl(CollectorOptions o)
      : options(std::move(o)),
        pipeline(options, metrics, log_line),
        ingest(io, options, pipeline, metrics, log_line),
        viewers(io, options, pipeline, metrics, log_line),
        captures(options.capture, pipeline.sources(), *metrics.registry),
        capture_http(io, captures, steady_ns),
        timer(io) {}

  CollectorOptions options;
  CollectorMetrics metrics;
  asio::io_context io;
  Pipeline pipeline;
  IngestServer ingest;
  ViewerServer viewers;
  CaptureCoordinator captures;       // GPU captures asked of agents (docs/gpu.md)
  detail::CaptureHttp capture_http;  // POST /capture, loopback only
  std::unique_ptr<TraceStore> store;
  std::unique_ptr<prometheus::Exposer> exposer;
  asio::steady_timer timer;
  std::vector<std::string> lines;
  bool stopped = false;
  bool draining = false;

  void schedule_tick() {
    if (options.tick.count() <= 0) return;
    timer.expires_after(options.tick);
    timer.async_wait([this](std::error_code ec) {
      if (ec) return;
      const int64_t now = steady_ns();
      pipeline.tick(now);
      captures.tick(now);  // captures land in the store, or time out
      viewers.flush_log();
      if (store) {
        store->tick(now);  // closes a block older than --trace-block-age; retention
        publish_store_metrics();
      }
      schedule_tick();
    });
  }

  // Counters follow the store's cumulative stats by their increase since the last tick.
  TraceStoreStats published;
  void publish_store_metrics() {
    const TraceStoreStats now = store->stats();
    auto add = [](prometheus::Counter& c, uint64_t cur, uint64_t prev) {
      if (cur > prev) c.Increment(static_cast<double>(cur - prev));
    };
    metrics.trace_bytes.Set(static_cast<double>(now.bytes));
    metrics.trace_segments.Set(static_cast<double>(now.segments));
    metrics.trace_oldest_timestamp.Set(static_cast<double>(now.oldest_ns) / 1e9);
    add(metrics.trace_write_errors, now.write_errors, published.write_errors);
    add(metrics.trace_blocks_written, now.blocks_written, published.blocks_written);
    add(metrics.trace_torn_tails_cut, now.torn_tails_cut, published.torn_tails_cut);
    add(metrics.trace_deleted_segments.Add({{"reason", "size"}}), now.deleted_by_size,
        published.deleted_by_size);
    add(metrics.trace_deleted_segments.Add({{"reason", "age"}}), now.deleted_by_age,
        published.deleted_by_age);
    published = now;
  }

  // SIGINT/SIGTERM: drain every agent connection (each agent closes its side
  // after its last whole frame), so that nothing it wrote is lost, then stop.
  void drain_then_shutdown() {
    if (stopped || draining) return;
    draining = true;
    ingest.drain(kDrainDeadline, [this] { shutdown(); });
  }

  void shutdown() {
    if (stopped) return;
    stopped = true;
    timer.cancel();
    ingest.stop();
    viewers.stop();
    capture_http.stop();
    if (store) store->close();
  }
};

Collector::Collector(CollectorOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
Collector::~Collector() {
  impl_->shutdown();
  impl_->io.stop();
}

CollectorMetrics& Collector::metrics() {
  return impl_->metrics;
}
Pipeline& Collector::pipeline() {
  return impl_->pipeline;
}
const std::vector<std::string>& Collector::listening_lines() const {
  return impl_->lines;
}

bool Collector::start(std::string& error) {
  Impl& s = *impl_;
  if (s.options.listen.empty()) s.options.listen.push_back("tcp://127.0.0.1:7431");
  if (!s.options.trace_dir.empty()) {
    TraceStoreOptions to;
    to.dir = s.options.trace_dir;
    to.max_bytes = s.options.trace_max_bytes;
    to.segment_bytes = s.options.trace_segment_bytes;
    to.max_age_ns = s.options.trace_max_age_ns;
    to.block_bytes = s.options.trace_block_bytes;
    to.block_age_ns = s.options.trace_block_age_ns;
    s.store = std::make_unique<TraceStore>(
        to, [&s](std::vector<std::vector<uint8_t>>& frames) { s.pipeline.replay(frames, false); },
        log_line);
    if (!s.store->open(error)) return false;
    s.metrics.trace_max_bytes.Set(static_cast<double>(to.max_bytes));
    s.metrics.trace_max_age.Set(static_cast<double>(to.max_age_ns) / 1e9);
    s.publish_store_metrics();
    s.viewers.set_store(s.store.get());
    s.ingest.set_store(s.store.get());
    s.captures.set_store([&s] { return s.store->settled_ticket(); });
    // The store merges its summaries from the records the pipeline decodes (no second decode).
    s.pipeline.set_record_tap(&s.store->record_tap());
    // Frames the previous collector on this directory stored are not applied again.
    for (const auto& [stream, seq] : s.store->recovered_sequences())
      s.pipeline.sequences().seed(stream, seq);
    if (!s.store->recovered_sequences().empty())
      log_line("trace store: resuming " + std::to_string(s.store->recovered_sequences().size()) +
               " agent stream(s) found in the newest segments");
  }
  s.captures.set_sender([&s](uint32_t source, std::vector<uint8_t> message) {
    return s.ingest.send_control(source, std::move(message));
  });
  s.pipeline.set_alert_listener(
      [&s](const wire::AlertEpisode& a) { s.captures.on_alert(a, steady_ns()); });
  s.pipeline.set_health_listener([&s](const Source& source, const wire::AgentHealth& h) {
    s.captures.on_health(source, h, steady_ns());
  });
  s.captures.set_log(log_line);
  s.pipeline.set_frame_sink([&s](const SharedFrame& frame) {
    const int64_t now = steady_ns();
    if (s.store) s.store->write(*frame, s.pipeline.sink_frame_summary(), now);
    s.captures.on_frame(*frame, s.store ? s.store->last_ticket() : 0, now);  // capture latency
    s.viewers.broadcast(frame);
  });
  for (const auto& text : s.options.listen) {
    auto ep = parse_endpoint(text, error);
    if (!ep) return flag_error(error, "--listen", text);
    Endpoint bound;
    if (!s.ingest.listen(*ep, bound, error)) return flag_error(error, "--listen", text);
    s.lines.push_back("listening ingest " + bound.to_string());
  }
  if (!s.options.metrics.empty()) {
    auto ep = parse_endpoint(s.options.metrics, error);
    if (!ep) return flag_error(error, "--metrics", s.options.metrics);
    // prometheus-cpp's CivetServer reports a port in use only as "null context
    // when constructing CivetServer"; binding it here first gets the OS's reason.
    {
      Endpoint probed;
      auto probe = detail::open_tcp_acceptor(s.io, *ep, probed, error);
      if (!probe) return flag_error(error, "--metrics", s.options.metrics);
      std::error_code ignored;
      probe->close(ignored);
    }
    try {
      const std::string host =
          ep->host.find(':') != std::string::npos ? "[" + ep->host + "]" : ep->host;
      s.exposer = std::make_unique<prometheus::Exposer>(host + ":" + std::to_string(ep->port), 2);
    } catch (const std::exception& e) {
      // Lost a race for the port since the probe, or a civetweb limit.
      error = std::string("cannot listen: ") + e.what();
      return flag_error(error, "--metrics", s.options.metrics);
    }
    s.exposer->RegisterCollectable(s.metrics.registry);
    auto ports = s.exposer->GetListeningPorts();
    s.lines.push_back("listening metrics " + ep->host + ":" +
                      std::to_string(ports.empty() ? ep->port : ports.front()));
  }
  if (!s.options.viewer.empty()) {
    auto ep = parse_endpoint(s.options.viewer, error);
    if (!ep) return flag_error(error, "--viewer", s.options.viewer);
    Endpoint bound;
    if (!s.viewers.listen(*ep, bound, error))
      return flag_error(error, "--viewer", s.options.viewer);
    s.lines.push_back("listening viewer " + bound.host + ":" + std::to_string(bound.port));
  }
  if (!s.options.capture.http.empty()) {
    auto ep = parse_endpoint(s.options.capture.http, error);
    if (!ep) return flag_error(error, "--capture-http", s.options.capture.http);
    Endpoint bound;
    if (!s.capture_http.listen(*ep, bound, error))
      return flag_error(error, "--capture-http", s.options.capture.http);
    s.lines.push_back("listening capture " + bound.host + ":" + std::to_string(bound.port));
  }
  return true;
}

void Collector::run(bool handle_signals) {
  Impl& s = *impl_;
  asio::signal_set signals(s.io);
  if (handle_signals) {
    signals.add(SIGINT);
    signals.add(SIGTERM);
    signals.async_wait([&s](std::error_code ec, int sig) {
      if (ec) return;
      log_line(std::string("shutting down on ") + (sig == SIGINT ? "SIGINT" : "SIGTERM"));
      s.drain_then_shutdown();
    });
  }
  s.schedule_tick();
  // The work guard keeps the loop alive while idle; stop() and the signals end it.
  auto guard = asio::make_work_guard(s.io);
  s.io.restart();
  while (!s.stopped) s.io.run_one();
  std::error_code ignored;
  signals.cancel(ignored);
  guard.reset();
  s.io.poll();  // let the closed sockets' handlers finish
}

void Collector::stop() {
  asio::post(impl_->io, [this] { impl_->shutdown(); });
}

}  // namespace inferscope::collector
