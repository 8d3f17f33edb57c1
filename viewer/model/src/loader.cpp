// Loading trace files, trace directories and Chrome JSON into the model.
#include "inferscope/viewer/loader.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "inferscope/wire/trace_file.hpp"

namespace inferscope::viewer {
namespace fs = std::filesystem;

std::string LoadResult::summary() const {
  std::ostringstream o;
  if (!ok) o << "error: " << error;
  else o << "loaded " << records << " records in " << frames << " frames from " << files << " file(s)";
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
  char magic[sizeof(wire::kTraceFileMagic)] = {};
  in.read(magic, sizeof(magic));
  return in.gcount() == sizeof(magic) && std::memcmp(magic, wire::kTraceFileMagic, sizeof(magic)) == 0;
}

char first_non_space(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char c = 0;
  while (in.get(c))
    if (!std::isspace(static_cast<unsigned char>(c))) return c;
  return 0;
}

}  // namespace

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
      r.error = "no trace segments (files starting with ISTRACE1) in directory " + path;
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
  if (doc.is_array()) events = &doc;
  else if (doc.is_object() && doc.contains("traceEvents") && doc["traceEvents"].is_array())
    events = &doc["traceEvents"];
  if (!events) {
    r.error = "JSON has no traceEvents array";
    return r;
  }
  r.files = 1;

  auto num = [](const json& e, const char* key, double fallback) {
    auto it = e.find(key);
    return it != e.end() && it->is_number() ? it->get<double>() : fallback;
  };
  auto str = [](const json& e, const char* key) {
    auto it = e.find(key);
    return it != e.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  // pid p becomes source p + 1 (source 0 is the collector's own).
  auto source_of = [](double pid) { return static_cast<uint32_t>(std::max(0.0, pid)) + 1; };

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
  uint64_t skipped = 0;

  for (const json& e : *events) {
    if (!e.is_object()) {
      ++skipped;
      continue;
    }
    std::string ph = str(e, "ph");
    double pid = num(e, "pid", 0), tid = num(e, "tid", 0);
    uint32_t source = source_of(pid);
    bool gpu = tid >= 1000000;
    uint32_t t = static_cast<uint32_t>(std::max(0.0, tid));
    uint32_t track_id = gpu ? (t - 1000000) / 1000 : t;
    uint32_t stream = gpu ? (t - 1000000) % 1000 : 0;
    if (ph == "X") {
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
          int64_t v = it.value().is_number_float() ? std::llround(it.value().get<double>())
                                                   : it.value().get<int64_t>();
          if (it.key() == "correlation_id" || it.key() == "correlation") p.span.correlation_id = static_cast<uint64_t>(v);
          else if (it.key() == "request_id") p.span.request_id = static_cast<uint64_t>(v);
          else if (p.args.size() <= wire::kMaxSpanArgs) p.args.emplace_back(it.key(), v);
        }
      }
      spans.push_back(std::move(p));
    } else if (ph == "M") {
      if (str(e, "name") == "process_name")
        if (auto a = e.find("args"); a != e.end() && a->is_object())
          process_names[source] = str(*a, "name");
    } else if (ph == "s" || ph == "f" || ph == "t") {
      auto idit = e.find("id");
      uint64_t id = 0;
      if (idit != e.end() && idit->is_number()) id = idit->get<uint64_t>();
      else if (idit != e.end() && idit->is_string()) id = std::strtoull(idit->get<std::string>().c_str(), nullptr, 0);
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
    by_track[{s.source, s.span.track_kind == wire::TrackKind::kGpuStream, s.span.track_id, s.span.stream}].push_back(i);
  }
  for (auto& [k, v] : by_track)
    std::sort(v.begin(), v.end(), [&](size_t a, size_t b) { return spans[a].span.start_ns < spans[b].span.start_ns; });
  for (const Flow& f : flows) {
    auto it = by_track.find({f.source, f.gpu, f.track_id, f.stream});
    if (it == by_track.end()) continue;
    const auto& v = it->second;
    auto ub = std::upper_bound(v.begin(), v.end(), f.ts, [&](int64_t t, size_t i) { return t < spans[i].span.start_ns; });
    size_t best = SIZE_MAX;
    int steps = 0;
    for (auto j = ub; j != v.begin() && steps < 64; ++steps) {
      --j;
      const auto& s = spans[*j].span;
      if (s.start_ns <= f.ts && f.ts <= s.end_ns &&
          (best == SIZE_MAX || s.end_ns - s.start_ns < spans[best].span.end_ns - spans[best].span.start_ns))
        best = *j;
    }
    if (best != SIZE_MAX && spans[best].span.correlation_id == 0) spans[best].span.correlation_id = f.id;
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
    h.rank = source - 1;
    auto pn = process_names.find(source);
    h.instance = pn != process_names.end() ? pn->second : "pid " + std::to_string(source - 1);
    model.add(source, h);
  };
  for (auto& p : spans) {
    ensure_hello(p.source);
    p.span.name_id = string_id(p.source, p.args[0].first);
    p.span.num_args = 0;
    for (size_t i = 1; i < p.args.size() && p.span.num_args < wire::kMaxSpanArgs; ++i)
      p.span.args[p.span.num_args++] = {string_id(p.source, p.args[i].first), p.args[i].second};
    model.add(p.source, p.span);
    ++r.records;
  }
  if (skipped) r.warnings.push_back(std::to_string(skipped) + " JSON events skipped (not X/M/s/f or malformed)");
  model.finalize();
  r.ok = true;
  return r;
}

}  // namespace inferscope::viewer
