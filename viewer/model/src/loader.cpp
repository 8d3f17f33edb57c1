// Loading trace files, trace directories and Chrome JSON into the model.
#include "inferscope/viewer/loader.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "inferscope/wire/names.hpp"
#include "inferscope/wire/trace_file.hpp"

namespace inferscope::viewer {
namespace fs = std::filesystem;

// [SECTION] Load results

std::string LoadResult::summary() const {
  std::ostringstream o;
  if (!ok)
    o << "error: " << error;
  else
    o << "loaded " << records << " records in " << frames << " frames from " << files << " file(s)";
  for (const auto& w : warnings) o << "; " << w;
  return o.str();
}

bool ingest_frame(std::span<const uint8_t> frame, wire::FrameDecoder& decoder, TraceModel& model,
                  uint64_t& records, std::string& message) {
  wire::DecodeStatus st = decoder.open(frame);
  if (!st.ok()) {
    message = st.message;
    return false;
  }
  uint32_t source = decoder.header().source_id;
  wire::Record rec;
  while (decoder.next(rec)) {
    model.add(source, rec);
    ++records;
  }
  if (!decoder.status().ok()) {
    message = decoder.status().message;
    return false;
  }
  return true;
}

namespace {

void read_frames(wire::TraceFileReader& reader, const std::string& what, TraceModel& model,
                 LoadResult& r) {
  wire::FrameDecoder decoder;
  std::span<const uint8_t> frame;
  while (reader.next_frame(frame)) {
    ++r.frames;
    std::string message;
    if (!ingest_frame(frame, decoder, model, r.records, message)) {
      ++r.bad_frames;
      if (r.bad_frames <= 5) r.warnings.push_back(what + ": bad frame: " + message);
    }
  }
  std::string damage = reader.damage_report();
  if (!damage.empty()) r.warnings.push_back(what + ": " + damage);
}

bool starts_with_trace_magic(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  uint8_t magic[sizeof(wire::kTraceFileMagic)] = {};
  in.read(reinterpret_cast<char*>(magic), sizeof(magic));
  return in.gcount() == sizeof(magic) &&
         wire::trace_file_format(magic) != 0;  // v1 or v2 (the store's)
}

char first_non_space(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char c = 0;
  while (in.get(c))
    if (!std::isspace(static_cast<unsigned char>(c))) return c;
  return 0;
}

}  // namespace

// [SECTION] Trace files (inferscope's own frames)

LoadResult load_trace_file(const std::string& path, TraceModel& model) {
  LoadResult r;
  wire::TraceFileReader reader;
  if (!reader.open(path)) {
    r.error = reader.error();
    return r;
  }
  r.files = 1;
  read_frames(reader, path, model, r);
  model.finalize();
  r.ok = true;
  return r;
}

LoadResult load_trace_bytes(std::vector<uint8_t> bytes, TraceModel& model) {
  LoadResult r;
  wire::TraceFileReader reader;
  if (!reader.open_bytes(std::move(bytes))) {
    r.error = reader.error();
    return r;
  }
  r.files = 1;
  read_frames(reader, "trace", model, r);
  model.finalize();
  r.ok = true;
  return r;
}

LoadResult load_path(const std::string& path, TraceModel& model) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    LoadResult r;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(path, ec))
      if (e.is_regular_file() && starts_with_trace_magic(e.path())) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      r.error = "no trace segments (files starting with ISTRACE1 or ISTRACE2) in directory " + path;
      return r;
    }
    for (const auto& f : files) {
      wire::TraceFileReader reader;
      if (!reader.open(f.string())) {
        r.warnings.push_back(reader.error());
        continue;
      }
      ++r.files;
      read_frames(reader, f.filename().string(), model, r);
    }
    model.finalize();
    r.ok = r.files > 0;
    if (!r.ok) r.error = "no readable trace segment in " + path;
    return r;
  }
  if (!fs::exists(path, ec)) {
    LoadResult r;
    r.error = "no such file or directory: " + path;
    return r;
  }
  char c = first_non_space(path);
  if (c == '{' || c == '[') return load_chrome_json(path, model);
  return load_trace_file(path, model);
}

// [SECTION] Chrome / Perfetto JSON (as inferscope-export writes it)

LoadResult load_chrome_json(const std::string& path, TraceModel& model) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    LoadResult r;
    r.error = "cannot open " + path + ": " + std::strerror(errno);
    return r;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  LoadResult r = load_chrome_json_text(ss.str(), model);
  if (!r.ok) r.error = path + ": " + r.error;
  return r;
}

LoadResult load_chrome_json_text(const std::string& text, TraceModel& model) {
  using nlohmann::json;
  LoadResult r;
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    r.error = "not valid JSON (Chrome trace expected)";
    return r;
  }
  const json* events = nullptr;
  if (doc.is_array())
    events = &doc;
  else if (doc.is_object() && doc.contains("traceEvents") && doc["traceEvents"].is_array())
    events = &doc["traceEvents"];
  if (!events) {
    r.error = "JSON has no traceEvents array";
    return r;
  }
  r.files = 1;

  // Numbers from a file are untrusted: non-finite ones fall back, and every
  // value is clamped to +-1e15 (microseconds -> nanoseconds then still fits an
  // int64 with room for a sum) before any conversion to an integer.
  auto num = [](const json& e, const char* key, double fallback) {
    auto it = e.find(key);
    if (it == e.end() || !it->is_number()) return fallback;
    double v = it->get<double>();
    return std::isfinite(v) ? std::clamp(v, -1e15, 1e15) : fallback;
  };
  auto to_u32 = [](double v) { return static_cast<uint32_t>(std::clamp(v, 0.0, 4294967295.0)); };
  auto str = [](const json& e, const char* key) {
    auto it = e.find(key);
    return it != e.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  // pid p is source p, as inferscope-export writes it (pid 0: the collector's alerts).
  auto source_of = [](double pid) { return static_cast<uint32_t>(std::clamp(pid, 0.0, 4e9)); };

  struct Pending {
    uint32_t source;
    wire::Span span;
    std::vector<std::pair<std::string, int64_t>> args;
  };
  std::vector<Pending> spans;
  struct Flow {
    uint32_t source, track_id, stream;
    bool gpu;
    int64_t ts;
    uint64_t id;
  };
  std::vector<Flow> flows;
  std::map<uint32_t, std::string> process_names;
  std::map<uint32_t, uint32_t> ranks;                     // from process_sort_index
  std::vector<std::pair<uint32_t, wire::Record>> others;  // requests, stages, memory, alerts
  struct Begin {
    int64_t ts;
    const json* event;
  };
  std::map<std::tuple<uint32_t, std::string, std::string, uint64_t>, Begin> open_async;
  uint64_t skipped = 0;
  auto arg_num = [&num](const json& e, const char* key, double fallback) {
    auto a = e.find("args");
    return a != e.end() && a->is_object() ? num(*a, key, fallback) : fallback;
  };
  auto event_id = [](const json& e) -> uint64_t {
    auto idit = e.find("id");
    if (idit != e.end() && idit->is_number_unsigned()) return idit->get<uint64_t>();
    if (idit != e.end() && idit->is_number_integer())
      return static_cast<uint64_t>(idit->get<int64_t>());
    if (idit != e.end() && idit->is_string())
      return std::strtoull(idit->get<std::string>().c_str(), nullptr, 0);
    return 0;
  };
  // inferscope-export writes the collector's episodes as X (closed) or i (open)
  // events with category "alert" and the episode's fields as args. False (the
  // event is counted as skipped) when the name starts with no alert kind.
  auto alert_of = [&](const json& e, int64_t start, int64_t end) -> bool {
    wire::AlertEpisode a;
    // The name's first word is the kind (wire/names.hpp, as the exporter wrote it).
    const auto kind = wire::alert_kind_of_event_name(str(e, "name"));
    if (!kind) return false;
    a.kind = *kind;
    a.rank = to_u32(arg_num(e, "rank", 0));
    a.layer = to_u32(arg_num(e, "layer", 0));
    a.expert = to_u32(arg_num(e, "expert", 0));
    a.peak_share = static_cast<float>(arg_num(e, "peak_share", 0));
    a.peak_utilization = static_cast<float>(arg_num(e, "peak_utilization", 0));
    if (auto ar = e.find("args"); ar != e.end() && ar->is_object()) a.model = str(*ar, "model");
    a.start_ns = start;
    a.end_ns = end;
    others.emplace_back(wire::kCollectorSource, a);
    return true;
  };

  // [SECTION] One pass over the events

  for (const json& e : *events) {
    if (!e.is_object()) {
      ++skipped;
      continue;
    }
    std::string ph = str(e, "ph");
    double pid = num(e, "pid", 0), tid = num(e, "tid", 0);
    uint32_t source = source_of(pid);
    bool gpu = tid >= 1000000;
    uint32_t t = to_u32(tid);
    uint32_t track_id = gpu ? (t - 1000000) / 1000 : t;
    uint32_t stream = gpu ? (t - 1000000) % 1000 : 0;
    if ((ph == "X" || ph == "i" || ph == "I") && str(e, "cat") == "alert") {
      double ts = num(e, "ts", NAN), dur = num(e, "dur", 0);
      if (std::isnan(ts)) {
        ++skipped;
        continue;
      }
      int64_t a = std::llround(ts * 1000.0);
      if (!alert_of(e, a, ph == "X" ? a + std::llround(std::max(0.0, dur) * 1000.0) : 0)) ++skipped;
    } else if (ph == "b" || ph == "e") {
      // Async request / stage events, paired by (pid, cat, name, id).
      double ts = num(e, "ts", NAN);
      if (std::isnan(ts)) {
        ++skipped;
        continue;
      }
      auto key = std::make_tuple(source, str(e, "cat"), str(e, "name"), event_id(e));
      int64_t t_ns = std::llround(ts * 1000.0);
      if (ph == "b") {
        open_async[key] = {t_ns, &e};
        continue;
      }
      auto it = open_async.find(key);
      if (it == open_async.end()) {
        ++skipped;
        continue;
      }
      const json& b = *it->second.event;
      int64_t start = it->second.ts;
      open_async.erase(it);
      const std::string& cat = std::get<1>(key);
      if (cat == "request") {
        wire::RequestEvent q;
        q.request_id = std::get<3>(key);
        q.arrival_ns = start;
        q.finish_ns = std::max(start, t_ns);
        double ttft = arg_num(b, "ttft_ms", NAN);
        if (!std::isnan(ttft))
          q.first_token_ns = start + std::llround(std::clamp(ttft, 0.0, 1e9) * 1e6);
        q.prompt_tokens = to_u32(arg_num(b, "prompt_tokens", 0));
        q.output_tokens = to_u32(arg_num(b, "output_tokens", 0));
        q.image_tokens = to_u32(arg_num(b, "image_tokens", 0));
        q.cached_tokens = to_u32(arg_num(b, "cached_tokens", 0));
        q.status = static_cast<wire::RequestStatus>(std::clamp(arg_num(b, "status", 0), 0.0, 3.0));
        others.emplace_back(source, q);
      } else if (cat == "stage") {
        wire::StageTiming st;
        st.request_id = std::get<3>(key);
        for (uint8_t k = 0; k < wire::kStageCount; ++k)
          if (std::get<2>(key) == wire::to_string(static_cast<wire::Stage>(k)))
            st.stage = static_cast<wire::Stage>(k);
        st.start_ns = start;
        st.end_ns = std::max(start, t_ns);
        st.gpu_ns = std::llround(arg_num(b, "gpu_ms", 0) * 1e6);
        if (auto a = b.find("args"); a != b.end() && a->is_object() && str(*a, "device") == "gpu")
          st.device = wire::Device::kGpu;
        others.emplace_back(source, st);
      } else {
        ++skipped;
      }
    } else if (ph == "C") {
      // "memory <kind>" counters carry used and capacity bytes.
      std::string n = str(e, "name");
      double ts = num(e, "ts", NAN);
      if (n.rfind("memory ", 0) != 0 || std::isnan(ts)) {
        ++skipped;
        continue;
      }
      wire::MemorySample m;
      m.timestamp_ns = std::llround(ts * 1000.0);
      bool known = false;
      for (uint8_t k = 0; k < wire::kMemoryKindCount; ++k)
        if (n.substr(7) == wire::to_string(static_cast<wire::MemoryKind>(k))) {
          m.kind = static_cast<wire::MemoryKind>(k);
          known = true;
        }
      if (!known) {
        ++skipped;
        continue;
      }
      m.used_bytes = static_cast<uint64_t>(std::max(0.0, arg_num(e, "used_bytes", 0)));
      m.capacity_bytes = static_cast<uint64_t>(std::max(0.0, arg_num(e, "capacity_bytes", 0)));
      others.emplace_back(source, m);  // rank filled in below
    } else if (ph == "X") {
      Pending p;
      p.source = source;
      p.span.track_kind = gpu ? wire::TrackKind::kGpuStream : wire::TrackKind::kCpuThread;
      p.span.track_id = track_id;
      p.span.stream = stream;
      double ts = num(e, "ts", NAN), dur = num(e, "dur", 0);
      if (std::isnan(ts) || !std::isfinite(dur)) {
        ++skipped;
        continue;
      }
      p.span.start_ns = std::llround(ts * 1000.0);
      p.span.end_ns = p.span.start_ns + std::llround(std::max(0.0, dur) * 1000.0);
      std::string cat = str(e, "cat");
      for (uint8_t c = 0; c <= static_cast<uint8_t>(wire::SpanCategory::kRuntime); ++c)
        if (cat == wire::to_string(static_cast<wire::SpanCategory>(c)))
          p.span.category = static_cast<wire::SpanCategory>(c);
      if (cat.empty() && gpu) p.span.category = wire::SpanCategory::kKernel;
      p.args.emplace_back(str(e, "name"), 0);  // name travels as args[0].first
      if (auto a = e.find("args"); a != e.end() && a->is_object()) {
        for (auto it = a->begin(); it != a->end(); ++it) {
          if (!it.value().is_number()) continue;
          int64_t v = it.value().is_number_float()
                          ? std::llround(std::clamp(it.value().get<double>(), -9e18, 9e18))
                          : it.value().get<int64_t>();
          if (it.key() == "correlation_id" || it.key() == "correlation")
            p.span.correlation_id = static_cast<uint64_t>(v);
          else if (it.key() == "request_id")
            p.span.request_id = static_cast<uint64_t>(v);
          else if (p.args.size() <= wire::kMaxSpanArgs)
            p.args.emplace_back(it.key(), v);
        }
      }
      spans.push_back(std::move(p));
    } else if (ph == "M") {
      auto a = e.find("args");
      if (a == e.end() || !a->is_object()) continue;
      if (str(e, "name") == "process_name") process_names[source] = str(*a, "name");
      if (str(e, "name") == "process_sort_index") ranks[source] = to_u32(num(*a, "sort_index", 0));
    } else if (ph == "s" || ph == "f" || ph == "t") {
      uint64_t id = event_id(e);
      double ts = num(e, "ts", NAN);
      if (id == 0 || std::isnan(ts)) continue;
      flows.push_back({source, track_id, stream, gpu, std::llround(ts * 1000.0), id});
    } else {
      ++skipped;
    }
  }

  // Flow events name a point on a thread; the span there gets the flow id as
  // its correlation id, so the timeline draws the same arrows as for live data.
  std::map<std::tuple<uint32_t, bool, uint32_t, uint32_t>, std::vector<size_t>> by_track;
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto& s = spans[i];
    by_track[{s.source, s.span.track_kind == wire::TrackKind::kGpuStream, s.span.track_id,
              s.span.stream}]
        .push_back(i);
  }
  for (auto& [k, v] : by_track)
    std::sort(v.begin(), v.end(),
              [&](size_t a, size_t b) { return spans[a].span.start_ns < spans[b].span.start_ns; });
  for (const Flow& f : flows) {
    auto it = by_track.find({f.source, f.gpu, f.track_id, f.stream});
    if (it == by_track.end()) continue;
    const auto& v = it->second;
    auto ub = std::upper_bound(v.begin(), v.end(), f.ts,
                               [&](int64_t t, size_t i) { return t < spans[i].span.start_ns; });
    size_t best = SIZE_MAX;
    int steps = 0;
    for (auto j = ub; j != v.begin() && steps < 64; ++steps) {
      --j;
      const auto& s = spans[*j].span;
      if (s.start_ns <= f.ts && f.ts <= s.end_ns &&
          (best == SIZE_MAX ||
           s.end_ns - s.start_ns < spans[best].span.end_ns - spans[best].span.start_ns))
        best = *j;
    }
    if (best != SIZE_MAX && spans[best].span.correlation_id == 0)
      spans[best].span.correlation_id = f.id;
  }

  // Each pid becomes a source with a synthetic hello and its own string table.
  std::map<uint32_t, std::map<std::string, uint32_t>> strings;
  auto string_id = [&](uint32_t source, const std::string& s) -> uint32_t {
    if (s.empty()) return 0;
    auto& table = strings[source];
    auto [it, inserted] = table.try_emplace(s, static_cast<uint32_t>(table.size() + 1));
    if (inserted) model.add(source, wire::StringDef{it->second, s});
    return it->second;
  };
  std::map<uint32_t, bool> hello_sent;
  auto ensure_hello = [&](uint32_t source) {
    if (hello_sent[source]) return;
    hello_sent[source] = true;
    wire::Hello h;
    h.service = "chrome-json";
    auto rk = ranks.find(source);
    h.rank = rk != ranks.end() ? rk->second : source;
    auto pn = process_names.find(source);
    h.instance = pn != process_names.end() ? pn->second : "pid " + std::to_string(source);
    model.add(source, h);
  };
  for (auto& [source, rec] : others) {
    if (source != wire::kCollectorSource) ensure_hello(source);
    if (auto* m = std::get_if<wire::MemorySample>(&rec)) m->rank = model.rank_of(source);
    model.add(source, rec);
    ++r.records;
  }
  for (auto& p : spans) {
    ensure_hello(p.source);
    p.span.name_id = string_id(p.source, p.args[0].first);
    p.span.num_args = 0;
    for (size_t i = 1; i < p.args.size() && p.span.num_args < wire::kMaxSpanArgs; ++i)
      p.span.args[p.span.num_args++] = {string_id(p.source, p.args[i].first), p.args[i].second};
    model.add(p.source, p.span);
    ++r.records;
  }
  if (skipped)
    r.warnings.push_back(std::to_string(skipped) +
                         " JSON events skipped (not X/M/s/f or malformed)");
  model.finalize();
  r.ok = true;
  return r;
}

}  // namespace inferscope::viewer
