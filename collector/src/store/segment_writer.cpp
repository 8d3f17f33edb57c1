// Segment files: appending blocks, rotation, the in-memory index, retention, recovery at open.
#include "segment_writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "block_summary.hpp"
#include "inferscope/wire/trace_file.hpp"

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

// Full write; false with errno set on failure.
bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = ENOSPC;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

int file_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint8_t magic[8] = {};
  in.read(reinterpret_cast<char*>(magic), sizeof magic);
  return in.gcount() == sizeof magic ? wire::trace_file_format(magic) : 0;
}

}  // namespace

// [SECTION] Segment names
std::string TraceStore::segment_name(uint64_t index) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "trace-%06llu.istrace", static_cast<unsigned long long>(index));
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

TraceStore::Writer::Writer(const TraceStoreOptions& options, TraceStore::Log log)
    : options_(options),
      log_(std::move(log)),
      compressor_(options.zstd_level, options.columns && options.summaries),
      splits_next_(compressor_.splits_next_block()) {}

// [SECTION] Opening and recovery
TraceStore::Writer::~Writer() {
  close();
}

void TraceStore::Writer::add_stats(const Segment& s, int sign) {
  if (sign > 0) {
    bytes_ += s.bytes;
  } else {
    bytes_ -= std::min(bytes_, s.bytes);
  }
}

bool TraceStore::Writer::open(std::string& error) {
  // A file-size limit (RLIMIT_FSIZE) must fail the write (EFBIG), not kill the collector.
  std::signal(SIGXFSZ, SIG_IGN);
  std::error_code ec;
  fs::create_directories(options_.dir, ec);
  if (ec) {
    error = "trace store: cannot create " + options_.dir + ": " + ec.message();
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    for (const auto& path : list_segments(options_.dir)) {
      Segment s;
      s.index = parse_segment_index(fs::path(path).filename().string());
      s.path = path;
      s.format = file_format(path);
      next_index_ = std::max(next_index_, s.index + 1);
      if (s.format == 2) {
        wire::BlockScan scan;
        std::string why;
        if (wire::scan_blocks(path, scan, why)) {
          if (scan.torn_tail) {
            // Cut the torn tail so appends by a later tool or reader see whole blocks only.
            if (::truncate(path.c_str(), static_cast<off_t>(scan.valid_bytes)) == 0) {
              ++counters_.torn_tails_cut;
              if (log_)
                log_("trace store: " + path + ": " + scan.tail_problem + "; cut " +
                     std::to_string(scan.file_bytes - scan.valid_bytes) + " bytes, " +
                     std::to_string(scan.blocks.size()) + " complete blocks kept");
              scan.file_bytes = scan.valid_bytes;
            } else if (log_) {
              log_("trace store: " + path + ": " + scan.tail_problem +
                   "; cannot cut it: " + std::strerror(errno));
            }
          }
          if (scan.damaged_regions && log_)
            log_("trace store: " + path + ": " + std::to_string(scan.damaged_regions) +
                 " damaged region(s) in the middle are skipped by readers");
          s.blocks = std::move(scan.blocks);
          for (const auto& b : s.blocks) {
            if (b.header.min_ns <= b.header.max_ns) {
              s.min_ns = std::min(s.min_ns, b.header.min_ns);
              s.max_ns = std::max(s.max_ns, b.header.max_ns);
            }
          }
          s.bytes = scan.file_bytes;
        } else if (log_) {
          log_("trace store: " + why);
        }
      }
      if (s.bytes == 0) {
        const uint64_t size = fs::file_size(path, ec);
        s.bytes = ec ? 0 : size;
      }
      add_stats(s, +1);
      segments_.push_back(std::move(s));
    }
  }
  if (!start_segment()) {
    error = "trace store: cannot create a segment in " + options_.dir + ": " + std::strerror(errno);
    return false;
  }
  enforce_retention();
  if (options_.background) thread_ = std::thread([this] { run(); });
  return true;
}

// [SECTION] Writing blocks, rotation and errors
bool TraceStore::Writer::start_segment() {
  close_file();
  std::lock_guard<std::mutex> lock(index_mu_);
  Segment s;
  s.index = next_index_++;
  s.path = (fs::path(options_.dir) / segment_name(s.index)).string();
  fd_ = ::open(s.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return false;
  uint8_t header[16];
  // Format 3 says the file may hold summary blocks, 4 column-split blocks too,
  // 5 with delta-coded correlation ids, 6 with implied span lengths (readers of
  // an older format refuse it rather than misread it). Readers take
  // format >= 3 to mean summaries, so columns come only with them.
  const uint16_t format = !options_.summaries ? wire::kTraceBlockFormatVersion
                          : options_.columns  ? wire::kTraceFileFormatImpliedSpanLengths
                                              : wire::kTraceFileFormatSummaries;
  wire::encode_v2_file_header(header, format);
  if (!write_all(fd_, header, sizeof header)) {
    const int saved = errno;
    ::close(fd_);
    fd_ = -1;
    ::unlink(s.path.c_str());
    errno = saved;
    return false;
  }
  s.bytes = sizeof header;
  add_stats(s, +1);
  segments_.push_back(std::move(s));
  current_bytes_ = sizeof header;
  return true;
}

void TraceStore::Writer::close_file() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
}

void TraceStore::Writer::on_error(const std::string& what, uint64_t frames) {
  std::lock_guard<std::mutex> lock(index_mu_);
  counters_.write_errors += frames;
  if (!failing_.exchange(true) && log_)
    log_("trace store: write failed (" + what + "); frames are dropped until it recovers");
}

void TraceStore::Writer::refuse(uint64_t frames) {
  std::lock_guard<std::mutex> lock(index_mu_);
  counters_.write_errors += frames;
}

void TraceStore::Writer::write_block(const wire::RawBlock& block, LevelSeed& seed,
                                     bool starts_segment) {
  if (block.empty()) return;
  const bool has_blocks = [&] {
    std::lock_guard<std::mutex> lock(index_mu_);
    return !segments_.empty() && !segments_.back().blocks.empty();
  }();
  if (fd_ < 0 || (starts_segment && has_blocks)) {
    if (!starts_segment) {
      on_error("no open segment", block.frames);
      return;
    }
    if (!start_segment()) {
      on_error(std::string("cannot start a segment: ") + std::strerror(errno), block.frames);
      return;
    }
    enforce_retention();
  } else if (failing_ && !starts_segment) {
    refuse(block.frames);
    return;
  }
  compressor_.seal(block, sealed_);
  splits_next_.store(compressor_.splits_next_block(), std::memory_order_relaxed);
  // The block's level-of-detail summaries follow it, in the same write: a torn
  // tail can only cut summaries off, never leave one without its data block.
  uint64_t summary_bytes = 0;
  size_t summary_count = 0;
  if (options_.summaries) {
    const auto summaries = summaries_.build(block, seed);
    const size_t data_bytes = sealed_.size();
    for (const auto& sb : summaries) {
      compressor_.seal(sb.block, summary_sealed_, sb.level);
      sealed_.insert(sealed_.end(), summary_sealed_.begin(), summary_sealed_.end());
    }
    summary_bytes = sealed_.size() - data_bytes;
    summary_count = summaries.size();
  }
  const uint64_t offset = current_bytes_.load();
  if (!write_all(fd_, sealed_.data(), sealed_.size())) {
    const int saved = errno;
    // Leave only whole blocks behind: cut what was partly written.
    if (::ftruncate(fd_, static_cast<off_t>(offset)) == 0)
      ::lseek(fd_, static_cast<off_t>(offset), SEEK_SET);
    on_error(std::strerror(saved), block.frames);
    return;
  }
  const bool recovered = failing_.exchange(false);
  std::string path;
  {
    std::lock_guard<std::mutex> lock(index_mu_);
    Segment& s = segments_.back();
    wire::BlockLocation loc;
    // The data block, then its summaries: each header says where the next starts.
    for (uint64_t at = 0; at < sealed_.size(); at = loc.end() - offset) {
      loc.offset = offset + at;
      std::string ignored;
      wire::decode_block_header({sealed_.data() + at, wire::kBlockHeaderBytes}, loc.header,
                                ignored);
      s.blocks.push_back(loc);
    }
    loc = s.blocks[s.blocks.size() - 1 - summary_count];
    s.bytes += sealed_.size();
    bytes_ += sealed_.size();
    if (loc.header.min_ns <= loc.header.max_ns) {
      s.min_ns = std::min(s.min_ns, loc.header.min_ns);
      s.max_ns = std::max(s.max_ns, loc.header.max_ns);
    }
    ++counters_.blocks_written;
    counters_.summary_blocks_written += summary_count;
    counters_.summary_bytes_written += summary_bytes;
    counters_.frames_written += block.frames;
    path = s.path;
  }
  current_bytes_ = offset + sealed_.size();
  if (recovered && log_) log_("trace store: writing again to " + path);
}

// [SECTION] Retention
void TraceStore::Writer::delete_front(bool by_age) {
  // index_mu_ held by the caller.
  std::error_code ec;
  fs::remove(segments_.front().path, ec);
  add_stats(segments_.front(), -1);
  ++(by_age ? counters_.deleted_by_age : counters_.deleted_by_size);
  segments_.pop_front();
}

void TraceStore::Writer::enforce_retention() {
  std::lock_guard<std::mutex> lock(index_mu_);
  // The open segment (the last one) is never deleted; the oldest go first.
  while (segments_.size() > 1 && bytes_ > options_.max_bytes) delete_front(false);
  if (options_.max_age_ns <= 0) return;
  // Age by the records' clock: against the newest record stored. And by the
  // file's wall-clock time, which still works when the monotonic clock started
  // over (a reboot) and for legacy segments without an index.
  int64_t newest = INT64_MIN;
  for (const auto& s : segments_) newest = std::max(newest, s.max_ns);
  const auto wall_now = fs::file_time_type::clock::now();
  while (segments_.size() > 1) {
    const Segment& s = segments_.front();
    bool old =
        s.max_ns != INT64_MIN && newest != INT64_MIN && newest - s.max_ns > options_.max_age_ns;
    std::error_code ec;
    const auto mtime = fs::last_write_time(s.path, ec);
    if (!ec && std::chrono::duration_cast<std::chrono::nanoseconds>(wall_now - mtime).count() >
                   options_.max_age_ns)
      old = true;
    if (!old) break;
    delete_front(true);
  }
}

// [SECTION] The writer thread: submit, settle, drain, close
void TraceStore::Writer::submit(wire::RawBlock&& block, LevelSeed&& seed, bool starts_segment,
                                uint64_t last_ticket) {
  if (!options_.background) {
    write_block(block, seed, starts_segment);
    settle(last_ticket);
    give_back(std::move(block), std::move(seed));
    return;
  }
  Pending p{std::move(block), std::move(seed), starts_segment, last_ticket};
  const size_t bytes = p.bytes();
  std::unique_lock<std::mutex> lock(queue_mu_);
  const size_t max_bytes = options_.queue_blocks * options_.block_bytes * 4;
  if ((queue_.size() >= options_.queue_blocks || queued_bytes_ + bytes > max_bytes) && !stop_) {
    // Lost and counted; its tickets settle with the next block written (blocks
    // before it in the queue are not written yet) or when the writer is idle.
    lock.unlock();
    std::lock_guard<std::mutex> index_lock(index_mu_);
    ++counters_.dropped_blocks;
    counters_.write_errors += p.block.frames;
    return;
  }
  queued_bytes_ += bytes;
  queue_.push_back(std::move(p));
  queue_cv_.notify_one();
}

void TraceStore::Writer::give_back(wire::RawBlock&& block, LevelSeed&& seed) {
  block.clear();
  seed.clear();
  std::lock_guard<std::mutex> lock(spare_mu_);
  if (spares_.size() < 2) spares_.push_back({std::move(block), std::move(seed)});
}

bool TraceStore::Writer::take_spare(wire::RawBlock& block, LevelSeed& seed) {
  std::lock_guard<std::mutex> lock(spare_mu_);
  if (spares_.empty()) return false;
  block = std::move(spares_.back().block);
  seed = std::move(spares_.back().seed);
  spares_.pop_back();
  return true;
}

void TraceStore::Writer::settle(uint64_t ticket) {
  uint64_t prev = settled_.load(std::memory_order_relaxed);
  while (prev < ticket &&
         !settled_.compare_exchange_weak(prev, ticket, std::memory_order_release)) {
  }
}

void TraceStore::Writer::settle_if_idle(uint64_t ticket) {
  if (options_.background) {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (!queue_.empty() || busy_) return;
  }
  settle(ticket);
}

void TraceStore::Writer::run() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  while (true) {
    queue_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) break;  // stop_ and nothing left
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    queued_bytes_ -= p.bytes();
    busy_ = true;
    lock.unlock();
    write_block(p.block, p.seed, p.starts_segment);  // written, or failed and counted
    settle(p.last_ticket);
    give_back(std::move(p.block), std::move(p.seed));
    lock.lock();
    busy_ = false;
    if (queue_.empty()) drained_cv_.notify_all();
  }
}

void TraceStore::Writer::drain() {
  if (!options_.background || !thread_.joinable()) return;
  std::unique_lock<std::mutex> lock(queue_mu_);
  drained_cv_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void TraceStore::Writer::close() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      stop_ = true;
    }
    queue_cv_.notify_all();
    thread_.join();  // writes what was queued first
  }
  close_file();
}

// [SECTION] Stats and snapshots for readers
TraceStoreStats TraceStore::Writer::stats() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  TraceStoreStats s = counters_;
  s.bytes = bytes_;
  s.segments = segments_.size();
  int64_t oldest = INT64_MAX;
  for (const auto& seg : segments_) oldest = std::min(oldest, seg.min_ns);
  s.oldest_ns = oldest == INT64_MAX ? 0 : oldest;
  return s;
}

std::vector<std::string> TraceStore::Writer::segment_paths() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  std::vector<std::string> out;
  for (const auto& s : segments_) out.push_back(s.path);
  return out;
}

std::vector<TraceStore::Writer::SegmentView> TraceStore::Writer::snapshot() const {
  std::lock_guard<std::mutex> lock(index_mu_);
  std::vector<SegmentView> out;
  for (const auto& s : segments_)
    if (s.format == 2 && !s.blocks.empty()) out.push_back({s.path, s.blocks});
  return out;
}

}  // namespace inferscope::collector
