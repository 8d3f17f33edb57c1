#include "harness.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <tuple>
#include <variant>

#include "inferscope/collector/trace_store.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_file.hpp"

namespace inferscope::reliability {

// [SECTION] Child

Child::Child(const std::string& binary, const std::vector<std::string>& args,
             ChildOptions options) {
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return;
  std::vector<std::string> argv_s{binary};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  if (options.file_size_limit == 0) {
    // posix_spawn (clone with CLONE_VM | CLONE_VFORK): unlike fork() it neither
    // copies this process's page tables under the mm lock nor turns its pages
    // copy-on-write, so threads of the test that are recording at that moment
    // (and are checked for blocking) are not made to wait by the harness.
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    if (!options.stderr_path.empty())
      posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, options.stderr_path.c_str(),
                                       O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (::posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ) != 0) pid = -1;
    posix_spawn_file_actions_destroy(&actions);
  } else {
    pid = ::fork();  // setrlimit in the child first: posix_spawn cannot
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    ::dup2(out[1], STDOUT_FILENO);
    if (!options.stderr_path.empty()) {
      const int err = ::open(options.stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (err >= 0) ::dup2(err, STDERR_FILENO);
    }
    if (options.file_size_limit > 0) {
      ::signal(SIGXFSZ, SIG_IGN);  // kept across exec: writes fail with EFBIG instead
      struct rlimit rl {
        options.file_size_limit, options.file_size_limit
      };
      ::setrlimit(RLIMIT_FSIZE, &rl);
    }
    ::execv(binary.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  if (pid < 0) {
    ::close(out[0]);
    return;
  }
  pid_ = pid;
  stdout_fd_ = out[0];
}

Child::~Child() {
  kill_and_reap();
}

Child::Child(Child&& o) noexcept {
  *this = std::move(o);
}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    kill_and_reap();
    pid_ = o.pid_;
    stdout_fd_ = o.stdout_fd_;
    pending_ = std::move(o.pending_);
    status_ = o.status_;
    o.pid_ = -1;
    o.stdout_fd_ = -1;
    o.status_.reset();
  }
  return *this;
}

bool Child::running() {
  if (pid_ <= 0 || status_) return false;
  return !wait(0ms).has_value();
}

std::optional<std::string> Child::read_line(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    const size_t nl = pending_.find('\n');
    if (nl != std::string::npos) {
      std::string line = pending_.substr(0, nl);
      pending_.erase(0, nl + 1);
      return line;
    }
    if (stdout_fd_ < 0) return std::nullopt;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{stdout_fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    char buf[4096];
    const ssize_t n = ::read(stdout_fd_, buf, sizeof buf);
    if (n <= 0) {
      ::close(stdout_fd_);
      stdout_fd_ = -1;
      if (pending_.empty()) return std::nullopt;
      std::string line = std::move(pending_);
      pending_.clear();
      return line;
    }
    pending_.append(buf, static_cast<size_t>(n));
  }
}

std::string Child::read_all(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string all;
  while (Clock::now() < deadline) {
    auto line =
        read_line(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
    if (!line) break;
    all += *line + "\n";
  }
  return all;
}

void Child::signal(int sig) {
  if (pid_ > 0 && !status_) ::kill(pid_, sig);
}

std::optional<int> Child::wait(std::chrono::milliseconds timeout) {
  if (status_) return status_;
  if (pid_ <= 0) return std::nullopt;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return status_;
    }
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(5ms);
  }
}

void Child::kill_and_reap() {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    wait(10s);
  }
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
  stdout_fd_ = -1;
  pid_ = -1;
}

namespace {
uint64_t status_field_kib(pid_t pid, const char* field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0) return std::strtoull(line.c_str() + n, nullptr, 10);
  return 0;
}
}  // namespace

uint64_t rss_kib(pid_t pid) {
  return status_field_kib(pid, "VmRSS:");
}
uint64_t peak_rss_kib(pid_t pid) {
  return status_field_kib(pid, "VmHWM:");
}

size_t open_fds(pid_t pid) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

// [SECTION] Collector

std::string collector_binary() {
  return INFERSCOPE_COLLECTOR_BIN;
}
std::string engine_binary() {
#ifdef INFERSCOPE_ENGINE_BIN
  return INFERSCOPE_ENGINE_BIN;
#else
  return "";
#endif
}
std::string source_dir() {
  return INFERSCOPE_SOURCE_DIR;
}

CollectorProcess::CollectorProcess(uint16_t ingest_port, const std::vector<std::string>& extra_args,
                                   ChildOptions options) {
  std::vector<std::string> args{"--listen",  "tcp://127.0.0.1:" + std::to_string(ingest_port),
                                "--metrics", "127.0.0.1:0",
                                "--viewer",  "127.0.0.1:0"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  child_ = Child(collector_binary(), args, options);
  if (child_.pid() <= 0) {
    error_ = "cannot start " + collector_binary();
    return;
  }
  auto port_of = [](const std::string& line) {
    return static_cast<uint16_t>(std::stoul(line.substr(line.rfind(':') + 1)));
  };
  const auto deadline = Clock::now() + 10s;
  while (ports_.ingest == 0 || ports_.metrics == 0 || ports_.viewer == 0) {
    auto line = child_.read_line(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
    if (!line) {
      error_ = "collector printed no listening lines (exit " +
               std::to_string(child_.wait(1s).value_or(-1)) + ")";
      return;
    }
    if (line->rfind("listening ingest tcp://", 0) == 0) ports_.ingest = port_of(*line);
    if (line->rfind("listening metrics ", 0) == 0) ports_.metrics = port_of(*line);
    if (line->rfind("listening viewer ", 0) == 0) ports_.viewer = port_of(*line);
  }
  ok_ = true;
}

// [SECTION] Metrics

std::string http_get(uint16_t port, const std::string& path) {
  const int fd = connect_loopback(port);
  if (fd < 0) return "";
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  std::string response;
  if (send_all(fd, req.data(), req.size())) {
    char buf[65536];
    ssize_t n;
    while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) response.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

Series parse_exposition(const std::string& text) {
  Series out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::strtod(line.c_str() + sp + 1, nullptr);
  }
  return out;
}

Series scrape(uint16_t port) {
  return parse_exposition(http_get(port));
}

double sum_series(const Series& series, const std::string& name,
                  const std::vector<std::string>& label_parts) {
  double sum = 0;
  for (const auto& [key, value] : series) {
    if (key.compare(0, name.size(), name) != 0) continue;
    if (key.size() > name.size() && key[name.size()] != '{') continue;
    bool all = true;
    for (const auto& p : label_parts)
      if (key.find(p) == std::string::npos) all = false;
    if (all) sum += value;
  }
  return sum;
}

// [SECTION] Traces

uint64_t TraceCount::records_of(wire::RecordKind kind) const {
  uint64_t n = 0;
  for (const auto& [source, kinds] : records) {
    auto it = kinds.find(static_cast<uint8_t>(kind));
    if (it != kinds.end()) n += it->second;
  }
  return n;
}

TraceCount read_trace_dir(const std::string& dir) {
  TraceCount out;
  for (const auto& path : collector::TraceStore::list_segments(dir)) {
    wire::TraceFileReader reader;
    if (!reader.open(path)) continue;
    ++out.files;
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(path, ec);
    out.file_bytes += size;
    out.largest_file = std::max(out.largest_file, size);
    out.frame_bytes += wire::kTraceFileHeaderBytes;
    bool first = true;
    // String ids are per source: resolve counter names through each source's table.
    std::map<uint32_t, std::map<uint32_t, std::string>> names;
    std::span<const uint8_t> frame;
    std::vector<wire::Record> recs;
    while (reader.next_frame(frame)) {
      out.frame_bytes += frame.size();
      recs.clear();
      if (!wire::decode_frame(frame, recs).ok()) {
        ++out.undecodable_frames;
        continue;
      }
      if (first && (recs.empty() || !std::holds_alternative<wire::Hello>(recs.front())))
        ++out.segments_without_hello;
      first = false;
      const uint32_t source =
          static_cast<uint32_t>(frame[20]) | static_cast<uint32_t>(frame[21]) << 8 |
          static_cast<uint32_t>(frame[22]) << 16 | static_cast<uint32_t>(frame[23]) << 24;
      for (const auto& r : recs) {
        ++out.records[source][static_cast<uint8_t>(wire::kind_of(r))];
        if (auto* d = std::get_if<wire::StringDef>(&r)) names[source][d->id] = d->value;
        if (auto* c = std::get_if<wire::CounterSample>(&r))
          ++out.counter_records_by_name[names[source][c->name_id]];
      }
    }
    const auto& st = reader.stats();
    out.frames += st.frames;
    out.corrupt_frames += st.corrupt_frames;
    out.bytes_skipped += st.bytes_skipped;
    out.truncated_tails += st.truncated_tail ? 1 : 0;
  }
  return out;
}

// [SECTION] Peers

int connect_loopback(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool closed_by_peer(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    // Polls at least once, even when the timeout is shorter than a millisecond.
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0 && errno != EAGAIN && errno != EINTR) return true;
  }
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base && *base ? base : "/tmp") + "/inferscope-reliab-XXXXXX";
  if (::mkdtemp(templ.data()) != nullptr) path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

}  // namespace inferscope::reliability

namespace inferscope::reliability {

// [SECTION] Proxy

Proxy::Proxy(uint16_t upstream_port) : upstream_(upstream_port) {
  listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(listener_, 16) != 0 ||
      ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return;
  port_ = ntohs(a.sin_port);
  if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) return;
  thread_ = std::thread([this] { run(); });
}

Proxy::~Proxy() {
  stop_ = true;
  if (wake_[1] >= 0) (void)!::write(wake_[1], "x", 1);
  if (thread_.joinable()) thread_.join();
  for (int fd : {listener_, wake_[0], wake_[1]})
    if (fd >= 0) ::close(fd);
}

void Proxy::cut() {
  cut_ = true;
  (void)!::write(wake_[1], "x", 1);
  while (cut_) std::this_thread::sleep_for(1ms);
}

void Proxy::run() {
  std::vector<std::pair<int, int>> pairs;  // client, upstream
  auto reset = [](int fd) {
    linger l{1, 0};  // RST, as a dead network path or a killed peer would leave it
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(fd);
  };
  while (!stop_) {
    if (cut_) {
      for (auto [c, u] : pairs) {
        reset(c);
        reset(u);
      }
      pairs.clear();
      cut_ = false;
    }
    std::vector<pollfd> fds{{listener_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    for (auto [c, u] : pairs) {
      fds.push_back({c, POLLIN, 0});
      fds.push_back({u, POLLIN, 0});
    }
    if (::poll(fds.data(), fds.size(), 100) <= 0) continue;
    if (fds[1].revents) {
      char b[64];
      while (::read(wake_[0], b, sizeof b) > 0) {
      }
    }
    // Only the pairs that were polled have entries in fds; one accepted below
    // waits for the next poll.
    const size_t polled = pairs.size();
    if (fds[0].revents & POLLIN) {
      const int c = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      const int u = c >= 0 ? connect_loopback(upstream_) : -1;
      if (c >= 0 && u >= 0) {
        pairs.emplace_back(c, u);
        ++accepted_;
      } else if (c >= 0) {
        ::close(c);
      }
    }
    std::vector<std::pair<int, int>> alive(pairs.begin() + static_cast<std::ptrdiff_t>(polled),
                                           pairs.end());
    for (size_t i = 0; i < polled; ++i) {
      bool ok = true;
      const pollfd& pc = fds[2 + 2 * i];
      const pollfd& pu = fds[3 + 2 * i];
      char buf[65536];
      for (auto [from, to, ev] : {std::tuple{pairs[i].first, pairs[i].second, pc.revents},
                                  std::tuple{pairs[i].second, pairs[i].first, pu.revents}}) {
        if (!ok || !(ev & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t n = ::recv(from, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
          ok = send_all(to, buf, static_cast<size_t>(n));
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          ok = false;
        }
      }
      if (ok) {
        alive.push_back(pairs[i]);
      } else {
        ::close(pairs[i].first);
        ::close(pairs[i].second);
      }
    }
    pairs = std::move(alive);
  }
  for (auto [c, u] : pairs) {
    ::close(c);
    ::close(u);
  }
}

}  // namespace inferscope::reliability
