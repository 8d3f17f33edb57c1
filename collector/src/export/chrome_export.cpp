#include "inferscope/collector/chrome_export.hpp"

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/names.hpp"
#include "inferscope/wire/trace_file.hpp"

namespace inferscope::collector {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> trace_inputs(const std::string& path, std::string& error) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    auto files = TraceStore::list_segments(path);
    if (files.empty()) error = path + ": no trace-<n>.istrace segments in this directory";
    return files;
  }
  if (!fs::is_regular_file(path, ec)) {
    error = path + ": no such trace file or directory";
    return {};
  }
  return {path};
}

namespace {

constexpr int64_t kGpuTidBase = 1000000;
constexpr int64_t kAlertPid = 0;

class Exporter {
 public:
  Exporter(std::ostream& out, const ExportOptions& options, ExportStats& stats)
      : out_(out), options_(options), stats_(stats) {}

  void begin() { out_ << "{\"traceEvents\":[\n"; }
  void end() { out_ << "\n],\"displayTimeUnit\":\"ns\"}\n"; }

  void frame(uint32_t source_id, std::span<const uint8_t> bytes) {
    wire::FrameDecoder dec;
    if (!dec.open(bytes).ok()) return;  // the reader already checked the CRC
    ++stats_.frames;
    wire::Record r;
    while (dec.next(r)) {
      ++stats_.records;
      record(source_id, r);
    }
  }

 private:
  struct SourceState {
    int64_t pid = 0;
    std::unordered_map<uint32_t, std::string> strings;
    std::set<int64_t> named_tids;
    std::unordered_map<uint32_t, double> counter_totals;
  };

  static double us(int64_t ns) { return static_cast<double>(ns) / 1000.0; }
  bool in_range(int64_t start, int64_t end) const {
    return end >= options_.start_ns && start <= options_.end_ns;
  }

  void emit(const json& event) {
    if (stats_.events++ > 0) out_ << ",\n";
    out_ << event.dump(-1, ' ', false, json::error_handler_t::replace);
  }

  // An async slice as a "b" / "e" pair on the process's async track 0 (stages, requests): the
  // args ride on the begin event, which is where the trace viewers read them.
  void emit_async(const char* cat, const std::string& name, uint64_t id, int64_t pid,
                  int64_t start_ns, int64_t end_ns, json args) {
    emit({{"ph", "b"},
          {"cat", cat},
          {"name", name},
          {"id", id},
          {"pid", pid},
          {"tid", 0},
          {"ts", us(start_ns)},
          {"args", std::move(args)}});
    emit({{"ph", "e"},
          {"cat", cat},
          {"name", name},
          {"id", id},
          {"pid", pid},
          {"tid", 0},
          {"ts", us(end_ns)}});
  }

  SourceState& source(uint32_t id) {
    auto it = sources_.find(id);
    if (it != sources_.end()) return it->second;
    SourceState& s = sources_[id];
    s.pid = id;
    return s;
  }

  const std::string& name(SourceState& s, uint32_t id) {
    static const std::string unnamed = "?";
    auto it = s.strings.find(id);
    return it == s.strings.end() ? unnamed : it->second;
  }

  void thread_name(SourceState& s, int64_t tid, const std::string& label) {
    if (!s.named_tids.insert(tid).second) return;
    emit({{"ph", "M"},
          {"name", "thread_name"},
          {"pid", s.pid},
          {"tid", tid},
          {"args", {{"name", label}}}});
  }

  void record(uint32_t source_id, const wire::Record& r) {
    switch (wire::kind_of(r)) {
      case wire::RecordKind::kHello: {
        const auto& h = std::get<wire::Hello>(r);
        SourceState& s = source(source_id);
        const std::string label = (h.model.name.empty() ? h.service : h.model.name) + " rank " +
                                  std::to_string(h.rank) + " (" + h.instance + ")";
        // Segments repeat the hello; a different process under a reused id (a
        // collector restart) gets a fresh pid.
        auto& seen = hello_seen_[source_id];
        if (!seen.empty() && seen != h.instance) {
          s = SourceState{};
          s.pid = next_extra_pid_++;
        }
        if (seen == h.instance) return;
        seen = h.instance;
        emit({{"ph", "M"}, {"name", "process_name"}, {"pid", s.pid}, {"args", {{"name", label}}}});
        emit({{"ph", "M"},
              {"name", "process_sort_index"},
              {"pid", s.pid},
              {"args", {{"sort_index", h.rank}}}});
        break;
      }
      case wire::RecordKind::kStringDef: {
        const auto& d = std::get<wire::StringDef>(r);
        source(source_id).strings[d.id] = d.value;
        break;
      }
      case wire::RecordKind::kSpan:
        span(source(source_id), std::get<wire::Span>(r));
        break;
      case wire::RecordKind::kMemory: {
        const auto& m = std::get<wire::MemorySample>(r);
        if (!in_range(m.timestamp_ns, m.timestamp_ns)) break;
        SourceState& s = source(source_id);
        emit({{"ph", "C"},
              {"name", std::string("memory ") + wire::to_string(m.kind)},
              {"pid", s.pid},
              {"ts", us(m.timestamp_ns)},
              {"args", {{"used_bytes", m.used_bytes}, {"capacity_bytes", m.capacity_bytes}}}});
        break;
      }
      case wire::RecordKind::kCounter: {
        const auto& c = std::get<wire::CounterSample>(r);
        SourceState& s = source(source_id);
        double& total = s.counter_totals[c.name_id];
        total = c.is_gauge ? c.value : total + c.value;
        if (!in_range(c.timestamp_ns, c.timestamp_ns)) break;
        emit({{"ph", "C"},
              {"name", name(s, c.name_id)},
              {"pid", s.pid},
              {"ts", us(c.timestamp_ns)},
              {"args", {{"value", total}}}});
        break;
      }
      case wire::RecordKind::kStage: {
        const auto& st = std::get<wire::StageTiming>(r);
        if (!in_range(st.start_ns, st.end_ns)) break;
        SourceState& s = source(source_id);
        const std::string n = wire::to_string(st.stage);
        json args = {{"request_id", st.request_id},
                     {"device", st.device == wire::Device::kGpu ? "gpu" : "cpu"},
                     {"gpu_ms", static_cast<double>(st.gpu_ns) / 1e6}};
        emit_async("stage", n, st.request_id, s.pid, st.start_ns, st.end_ns, std::move(args));
        break;
      }
      case wire::RecordKind::kRequest: {
        const auto& q = std::get<wire::RequestEvent>(r);
        if (!in_range(q.arrival_ns, q.finish_ns)) break;
        SourceState& s = source(source_id);
        json args = {{"request_id", q.request_id},       {"prompt_tokens", q.prompt_tokens},
                     {"output_tokens", q.output_tokens}, {"image_tokens", q.image_tokens},
                     {"cached_tokens", q.cached_tokens}, {"status", static_cast<int>(q.status)}};
        if (q.first_token_ns != 0)
          args["ttft_ms"] = static_cast<double>(q.first_token_ns - q.arrival_ns) / 1e6;
        emit_async("request", "request", q.request_id, s.pid, q.arrival_ns, q.finish_ns,
                   std::move(args));
        break;
      }
      case wire::RecordKind::kAlert:
        alert(std::get<wire::AlertEpisode>(r));
        break;
      default:
        break;  // expert loads, agent health: aggregated by the collector, not drawn
    }
  }

  void span(SourceState& s, const wire::Span& sp) {
    if (!in_range(sp.start_ns, sp.end_ns)) return;
    const bool gpu = sp.track_kind == wire::TrackKind::kGpuStream;
    const int64_t tid = gpu ? kGpuTidBase + static_cast<int64_t>(sp.track_id) * 1000 + sp.stream
                            : static_cast<int64_t>(sp.track_id);
    thread_name(s, tid,
                gpu ? "gpu " + std::to_string(sp.track_id) + " stream " + std::to_string(sp.stream)
                    : "thread " + std::to_string(sp.track_id));
    json args = json::object();
    if (sp.request_id) args["request_id"] = sp.request_id;
    if (sp.correlation_id) args["correlation_id"] = sp.correlation_id;
    for (uint8_t i = 0; i < sp.num_args && i < wire::kMaxSpanArgs; ++i) {
      const std::string& key = name(s, sp.args[i].key_id);
      // "range" args name an interned string (the enclosing range): show the name.
      if (key == "range")
        args[key] = name(s, static_cast<uint32_t>(sp.args[i].value));
      else
        args[key] = sp.args[i].value;
    }
    emit({{"ph", "X"},
          {"name", name(s, sp.name_id)},
          {"cat", wire::to_string(sp.category)},
          {"pid", s.pid},
          {"tid", tid},
          {"ts", us(sp.start_ns)},
          {"dur", us(sp.end_ns - sp.start_ns)},
          {"args", args}});
    if (sp.correlation_id == 0) return;
    // Flow ids are global in the format: fold the pid in so that processes do not collide.
    const uint64_t flow_id = (static_cast<uint64_t>(s.pid) << 40) ^ sp.correlation_id;
    if (!gpu && sp.category == wire::SpanCategory::kRuntime) {
      emit({{"ph", "s"},
            {"name", "launch"},
            {"cat", "launch"},
            {"id", flow_id},
            {"pid", s.pid},
            {"tid", tid},
            {"ts", us(sp.start_ns)}});
    } else if (gpu) {
      emit({{"ph", "f"},
            {"bp", "e"},
            {"name", "launch"},
            {"cat", "launch"},
            {"id", flow_id},
            {"pid", s.pid},
            {"tid", tid},
            {"ts", us(sp.start_ns)}});
    }
  }

  void alert(const wire::AlertEpisode& a) {
    const int64_t end = a.end_ns == 0 ? a.start_ns : a.end_ns;
    if (!in_range(a.start_ns, end)) return;
    if (!alerts_named_) {
      alerts_named_ = true;
      emit({{"ph", "M"},
            {"name", "process_name"},
            {"pid", kAlertPid},
            {"args", {{"name", "inferscope-collector alerts"}}}});
    }
    const std::string n = wire::alert_event_name(a);
    json args = {{"model", a.model},           {"rank", a.rank},
                 {"layer", a.layer},           {"expert", a.expert},
                 {"peak_share", a.peak_share}, {"peak_utilization", a.peak_utilization}};
    const int64_t tid = static_cast<int64_t>(a.kind);
    if (a.end_ns == 0) {
      emit({{"ph", "i"},
            {"s", "p"},
            {"name", n + " opened"},
            {"cat", "alert"},
            {"pid", kAlertPid},
            {"tid", tid},
            {"ts", us(a.start_ns)},
            {"args", args}});
    } else {
      emit({{"ph", "X"},
            {"name", n},
            {"cat", "alert"},
            {"pid", kAlertPid},
            {"tid", tid},
            {"ts", us(a.start_ns)},
            {"dur", us(a.end_ns - a.start_ns)},
            {"args", args}});
    }
  }

  std::ostream& out_;
  const ExportOptions& options_;
  ExportStats& stats_;
  std::map<uint32_t, SourceState> sources_;
  std::map<uint32_t, std::string> hello_seen_;
  int64_t next_extra_pid_ = 1 << 20;
  bool alerts_named_ = false;
};

}  // namespace

bool export_chrome_trace(const std::vector<std::string>& files, std::ostream& out,
                         const ExportOptions& options, ExportStats& stats, std::string& error) {
  Exporter ex(out, options, stats);
  ex.begin();
  for (const auto& path : files) {
    wire::TraceFileReader reader;
    if (!reader.open(path)) {
      error = reader.error();
      return false;
    }
    ++stats.files;
    std::span<const uint8_t> frame;
    while (reader.next_frame(frame)) {
      // next_frame yields whole frames, so the header is always there.
      ex.frame(wire::peek_frame_header(frame)->source_id, frame);
    }
    stats.corrupt_frames += reader.stats().corrupt_frames;
    if (!reader.damage_report().empty())
      stats.damage.push_back(path + ": " + reader.damage_report());
  }
  ex.end();
  if (!out) {
    error = "write failed";
    return false;
  }
  return true;
}

}  // namespace inferscope::collector
