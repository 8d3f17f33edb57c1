#include "inferscope/collector/trace_store.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <system_error>

namespace inferscope::collector {

namespace fs = std::filesystem;

namespace {

// "trace-000123.istrace" -> 123; 0 for anything else.
uint64_t parse_segment_index(const std::string& name) {
  static constexpr std::string_view kPrefix = "trace-", kSuffix = ".istrace";
  if (name.size() <= kPrefix.size() + kSuffix.size() || name.rfind(kPrefix, 0) != 0 ||
      name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0)
    return 0;
  uint64_t v = 0;
  for (size_t i = kPrefix.size(); i < name.size() - kSuffix.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > UINT64_MAX / 10) return 0;
    v = v * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  return v;
}

}  // namespace

TraceStore::TraceStore(TraceStoreOptions options, Replay replay, Log log)
    : options_(std::move(options)), replay_(std::move(replay)), log_(std::move(log)) {
  if (options_.segment_bytes == 0)
    options_.segment_bytes = std::clamp<uint64_t>(options_.max_bytes / 8, 64u << 10, 64u << 20);
}

TraceStore::~TraceStore() { close(); }

std::string TraceStore::segment_name(uint64_t index) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "trace-%06" PRIu64 ".istrace", index);
  return buf;
}

std::vector<std::string> TraceStore::list_segments(const std::string& dir) {
  std::vector<std::pair<uint64_t, std::string>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file(ec)) continue;
    const uint64_t index = parse_segment_index(entry.path().filename().string());
    if (index != 0) found.emplace_back(index, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [i, p] : found) out.push_back(std::move(p));
  return out;
}

bool TraceStore::open(std::string& error) {
  std::error_code ec;
  fs::create_directories(options_.dir, ec);
  if (ec) {
    error = "trace store: cannot create " + options_.dir + ": " + ec.message();
    return false;
  }
  for (const auto& path : list_segments(options_.dir)) {
    const uint64_t index = parse_segment_index(fs::path(path).filename().string());
    const uint64_t bytes = fs::file_size(path, ec);
    closed_.push_back({index, path, ec ? 0 : bytes});
    closed_bytes_ += ec ? 0 : bytes;
    next_index_ = std::max(next_index_, index + 1);
  }
  if (!start_segment()) {
    error = "trace store: " + writer_.error();
    return false;
  }
  enforce_bound();
  return true;
}

bool TraceStore::start_segment() {
  if (writer_.is_open()) {
    writer_.flush();
    writer_.close();
    current_.bytes = writer_.bytes_written();
    closed_.push_back(current_);
    closed_bytes_ += current_.bytes;
  }
  current_ = {next_index_, (fs::path(options_.dir) / segment_name(next_index_)).string(), 0};
  ++next_index_;
  if (!writer_.open(current_.path)) {
    // Keep the name in the books so that a partial file is still bounded and deleted.
    std::error_code ec;
    const uint64_t bytes = fs::file_size(current_.path, ec);
    current_.bytes = ec ? 0 : bytes;
    if (!ec) closed_.push_back(current_);
    closed_bytes_ += ec ? 0 : current_.bytes;
    current_.path.clear();
    return false;
  }
  std::vector<std::vector<uint8_t>> frames;
  if (replay_) replay_(frames);
  for (const auto& f : frames)
    if (!writer_.write_frame(f)) return false;
  return true;
}

void TraceStore::enforce_bound() {
  // The open segment is never deleted; the oldest closed ones go first.
  while (!closed_.empty() && total_bytes() > options_.max_bytes) {
    std::error_code ec;
    fs::remove(closed_.front().path, ec);
    closed_bytes_ -= closed_.front().bytes;
    closed_.pop_front();
  }
}

void TraceStore::on_error(const std::string& what, int64_t steady_now_ns) {
  ++write_errors_;
  if (!failing_ && log_) log_("trace store: write failed (" + what + "); frames are dropped until it recovers");
  failing_ = true;
  last_retry_ns_ = steady_now_ns;
}

void TraceStore::write(std::span<const uint8_t> frame, int64_t steady_now_ns) {
  if (failing_) {
    // Retry in a fresh segment at most once a second, so it starts with a full replay.
    if (steady_now_ns - last_retry_ns_ < 1'000'000'000) {
      ++write_errors_;
      return;
    }
    if (!start_segment()) {
      on_error(writer_.error(), steady_now_ns);
      return;
    }
    failing_ = false;
    if (log_) log_("trace store: writing again to " + current_.path);
  }
  if (!writer_.is_open() || !writer_.write_frame(frame)) {
    on_error(writer_.is_open() ? writer_.error() : "no open segment", steady_now_ns);
    return;
  }
  if (writer_.bytes_written() >= options_.segment_bytes) {
    if (!start_segment()) on_error(writer_.error(), steady_now_ns);
    enforce_bound();
  }
}

void TraceStore::flush() {
  if (writer_.is_open()) writer_.flush();
}

void TraceStore::close() {
  if (!writer_.is_open()) return;
  writer_.flush();
  writer_.close();
  current_.bytes = writer_.bytes_written();
}

uint64_t TraceStore::total_bytes() const {
  return closed_bytes_ + (writer_.is_open() ? writer_.bytes_written() : 0);
}

const std::vector<std::string> TraceStore::segment_paths() const {
  std::vector<std::string> out;
  for (const auto& s : closed_) out.push_back(s.path);
  if (!current_.path.empty()) out.push_back(current_.path);
  return out;
}

}  // namespace inferscope::collector
