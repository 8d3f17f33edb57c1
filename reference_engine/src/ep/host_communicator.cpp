// The "host" communicator: CPU ranks on one machine over Unix-domain stream
// sockets (communicator.hpp).
//
// Rank r listens on DIR/ep-<r>.sock; it accepts one connection from every
// higher rank and connects to every lower one, so each pair of ranks shares
// one socket. A connecting rank introduces itself with its rank and the world
// size. Every collective is one exchange: each rank sends one message to each
// peer and receives one from each, all sockets non-blocking and driven by
// poll() so large all-to-alls never deadlock on full socket buffers. A message
// is a 16-byte header (magic, collective sequence number, payload bytes) and
// the payload: a peer that is out of step or sends the wrong amount is caught
// at the header, not by a hang. EOF or no progress for the timeout ends the
// collective with CommError naming the peer.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "inferscope/engine/communicator.hpp"

namespace inferscope::engine {
namespace {

constexpr uint32_t kMagic = 0x49534550;  // "ISEP"

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string socket_path(const std::string& dir, int rank) {
  return (std::filesystem::path(dir) / ("ep-" + std::to_string(rank) + ".sock")).string();
}

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path))
    throw CommError("host communicator: socket path too long (" + std::to_string(path.size()) +
                    " bytes, the limit is " + std::to_string(sizeof(a.sun_path) - 1) +
                    "): " + path);
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

void set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Blocking read/write of a few bytes during connection set-up, with a deadline.
bool io_exact(int fd, void* buf, size_t n, bool write, int64_t deadline_ns) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    pollfd pfd{fd, static_cast<short>(write ? POLLOUT : POLLIN), 0};
    int64_t left_ms = (deadline_ns - steady_ns()) / 1'000'000;
    if (left_ms <= 0) return false;
    if (poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000))) <= 0) continue;
    ssize_t k = write ? ::send(fd, p, n, MSG_NOSIGNAL) : ::recv(fd, p, n, 0);
    if (k == 0) return false;
    if (k < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return false;
    }
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

class HostCommunicator final : public Communicator {
 public:
  explicit HostCommunicator(const CommOptions& o) : o_(o), fds_(static_cast<size_t>(o.size), -1) {
    if (o.size < 1 || o.rank < 0 || o.rank >= o.size)
      throw std::invalid_argument("host communicator: rank " + std::to_string(o.rank) +
                                  " is not in [0, " + std::to_string(o.size) + ")");
    if (o.size > 1) connect_all();
  }
  ~HostCommunicator() override { close_all(); }

  std::string name() const override { return "host"; }
  int rank() const override { return o_.rank; }
  int size() const override { return o_.size; }

  void all_gather(std::span<const int32_t> mine, std::vector<int32_t>& out) override {
    const size_t n = mine.size();
    out.assign(n * static_cast<size_t>(o_.size), 0);
    std::copy(mine.begin(), mine.end(),
              out.begin() + static_cast<std::ptrdiff_t>(n * static_cast<size_t>(o_.rank)));
    std::vector<Part> send(static_cast<size_t>(o_.size)), recv(static_cast<size_t>(o_.size));
    for (int p = 0; p < o_.size; ++p) {
      if (p == o_.rank) continue;
      send[static_cast<size_t>(p)] = {reinterpret_cast<const char*>(mine.data()), n * 4};
      recv[static_cast<size_t>(p)] = {
          reinterpret_cast<char*>(out.data() + n * static_cast<size_t>(p)), n * 4};
    }
    exchange(send, recv, "all_gather");
  }

  void all_to_all_v(const Tensor& send, std::span<const int32_t> send_counts, const Tensor& recv,
                    std::span<const int32_t> recv_counts) override {
    if (send_counts.size() != static_cast<size_t>(o_.size) ||
        recv_counts.size() != static_cast<size_t>(o_.size))
      throw std::invalid_argument("all_to_all_v: one count per rank expected");
    const size_t row = static_cast<size_t>(send.cols) * 4;
    if ((send.rows > 0 && !send.contiguous()) || (recv.rows > 0 && !recv.contiguous()) ||
        (send.rows > 0 && recv.rows > 0 && send.cols != recv.cols))
      throw std::invalid_argument("all_to_all_v: contiguous tensors with equal columns expected");
    std::vector<Part> sp(static_cast<size_t>(o_.size)), rp(static_cast<size_t>(o_.size));
    size_t so = 0, ro = 0;
    const char* sbase = static_cast<const char*>(send.data);
    char* rbase = static_cast<char*>(recv.data);
    for (int p = 0; p < o_.size; ++p) {
      const size_t sn = static_cast<size_t>(send_counts[static_cast<size_t>(p)]) * row;
      const size_t rn = static_cast<size_t>(recv_counts[static_cast<size_t>(p)]) * row;
      if (p == o_.rank) {
        if (sn != rn)
          throw std::invalid_argument("all_to_all_v: rows to self differ from rows from self");
        if (sn > 0) std::memmove(rbase + ro, sbase + so, sn);
      } else {
        sp[static_cast<size_t>(p)] = {sbase ? sbase + so : nullptr, sn};
        rp[static_cast<size_t>(p)] = {rbase ? rbase + ro : nullptr, rn};
      }
      so += sn;
      ro += rn;
    }
    if (send.rows * send.cols * 4 < static_cast<int64_t>(so))
      throw std::invalid_argument("all_to_all_v: send counts exceed the send tensor");
    if (recv.rows * recv.cols * 4 < static_cast<int64_t>(ro))
      throw std::invalid_argument("all_to_all_v: recv counts exceed the recv tensor");
    exchange(sp, rp, "all_to_all_v");
  }

  int64_t all_reduce_max(int64_t value) override {
    std::vector<int64_t> all(static_cast<size_t>(o_.size), value);
    std::vector<Part> send(static_cast<size_t>(o_.size)), recv(static_cast<size_t>(o_.size));
    for (int p = 0; p < o_.size; ++p) {
      if (p == o_.rank) continue;
      send[static_cast<size_t>(p)] = {reinterpret_cast<const char*>(&value), 8};
      recv[static_cast<size_t>(p)] = {reinterpret_cast<char*>(&all[static_cast<size_t>(p)]), 8};
    }
    exchange(send, recv, "all_reduce_max");
    return *std::max_element(all.begin(), all.end());
  }

  void mark(int slot) override {
    if (slot < 0) return;
    if (static_cast<size_t>(slot) >= marks_.size()) marks_.resize(static_cast<size_t>(slot) + 1, 0);
    marks_[static_cast<size_t>(slot)] = steady_ns();
  }
  int64_t elapsed_ns(int from, int to) override {
    if (from < 0 || to < 0 || static_cast<size_t>(std::max(from, to)) >= marks_.size()) return 0;
    return std::max<int64_t>(0,
                             marks_[static_cast<size_t>(to)] - marks_[static_cast<size_t>(from)]);
  }

  void abort() override {
    aborted_ = true;
    close_all();
  }

 private:
  struct Part {
    const char* data = nullptr;
    size_t bytes = 0;
  };
  struct Header {
    uint32_t magic = kMagic;
    uint32_t seq = 0;
    uint64_t bytes = 0;
  };

  void close_all() {
    for (int& fd : fds_)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
    if (listen_fd_ >= 0) {
      ::close(listen_fd_);
      listen_fd_ = -1;
      std::error_code ec;
      std::filesystem::remove(socket_path(o_.rendezvous_dir, o_.rank), ec);
    }
  }

  [[noreturn]] void fail(const std::string& what) {
    aborted_ = true;
    close_all();
    throw CommError("expert-parallel rank " + std::to_string(o_.rank) + ": " + what);
  }

  void connect_all() {
    if (o_.rendezvous_dir.empty())
      throw std::invalid_argument("host communicator: --ep-rendezvous DIR is required");
    std::error_code ec;
    if (!std::filesystem::is_directory(o_.rendezvous_dir, ec))
      throw std::invalid_argument("host communicator: rendezvous directory '" + o_.rendezvous_dir +
                                  "' does not exist");
    const int64_t deadline = steady_ns() + static_cast<int64_t>(o_.timeout.count()) * 1'000'000;
    if (o_.rank < o_.size - 1) {  // someone will connect to us
      const std::string path = socket_path(o_.rendezvous_dir, o_.rank);
      sockaddr_un addr = unix_address(path);
      ::unlink(path.c_str());  // a stale socket from an earlier run
      listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (listen_fd_ < 0 ||
          ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
          ::listen(listen_fd_, o_.size) != 0)
        fail("cannot listen on " + path + ": " + std::strerror(errno));
      ::chmod(path.c_str(), 0600);  // only this user's ranks may join
      set_nonblocking(listen_fd_);
    }
    // Connect to every lower rank (retrying until its socket appears).
    for (int p = 0; p < o_.rank; ++p) {
      const std::string path = socket_path(o_.rendezvous_dir, p);
      sockaddr_un addr = unix_address(path);
      while (true) {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
          int32_t hello[2] = {o_.rank, o_.size};
          if (!io_exact(fd, hello, sizeof(hello), true, deadline)) {
            ::close(fd);
            fail("lost rank " + std::to_string(p) + " while introducing myself");
          }
          fds_[static_cast<size_t>(p)] = fd;
          break;
        }
        if (fd >= 0) ::close(fd);
        if (steady_ns() > deadline)
          fail("timed out after " + std::to_string(o_.timeout.count()) + " ms waiting for rank " +
               std::to_string(p) + " at " + path);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    // Accept every higher rank.
    for (int pending = o_.size - 1 - o_.rank; pending > 0;) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      int64_t left_ms = (deadline - steady_ns()) / 1'000'000;
      if (left_ms <= 0)
        fail("timed out after " + std::to_string(o_.timeout.count()) + " ms waiting for " +
             std::to_string(pending) + " higher rank(s) to connect");
      if (poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 200))) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      int32_t hello[2] = {-1, -1};
      if (!io_exact(fd, hello, sizeof(hello), false, deadline) || hello[1] != o_.size ||
          hello[0] <= o_.rank || hello[0] >= o_.size || fds_[static_cast<size_t>(hello[0])] >= 0) {
        ::close(fd);  // not one of ours (or a duplicate): ignore it
        continue;
      }
      fds_[static_cast<size_t>(hello[0])] = fd;
      --pending;
    }
    for (int& fd : fds_)
      if (fd >= 0) set_nonblocking(fd);
  }

  // Sends send[p] to and receives recv[p] from every peer p at once.
  void exchange(const std::vector<Part>& send, const std::vector<Part>& recv, const char* what) {
    if (aborted_)
      throw CommError("expert-parallel rank " + std::to_string(o_.rank) +
                      ": communicator was aborted");
    const uint32_t seq = ++seq_;
    struct Peer {
      Header out_h, in_h;
      size_t sent = 0, got = 0;  // bytes of header + payload
    };
    std::vector<Peer> st(static_cast<size_t>(o_.size));
    for (int p = 0; p < o_.size; ++p) {
      st[static_cast<size_t>(p)].out_h.seq = seq;
      st[static_cast<size_t>(p)].out_h.bytes = send[static_cast<size_t>(p)].bytes;
    }
    constexpr size_t H = sizeof(Header);
    int64_t last_progress = steady_ns();
    std::vector<pollfd> pfds;
    std::vector<int> who;
    while (true) {
      pfds.clear();
      who.clear();
      for (int p = 0; p < o_.size; ++p) {
        if (p == o_.rank) continue;
        const Peer& s = st[static_cast<size_t>(p)];
        short ev = 0;
        if (s.sent < H + send[static_cast<size_t>(p)].bytes) ev |= POLLOUT;
        if (s.got < H + recv[static_cast<size_t>(p)].bytes) ev |= POLLIN;
        if (ev) {
          pfds.push_back({fds_[static_cast<size_t>(p)], ev, 0});
          who.push_back(p);
        }
      }
      if (pfds.empty()) return;
      int n = ::poll(pfds.data(), pfds.size(), 200);
      if (n < 0 && errno != EINTR)
        fail(std::string(what) + ": poll failed: " + std::strerror(errno));
      if (n <= 0) {
        if (steady_ns() - last_progress > static_cast<int64_t>(o_.timeout.count()) * 1'000'000) {
          std::string peers;
          for (int p : who) peers += (peers.empty() ? "" : ", ") + std::to_string(p);
          fail(std::string(what) + ": no progress for " + std::to_string(o_.timeout.count()) +
               " ms waiting on rank(s) " + peers + " (stalled or out of step)");
        }
        continue;
      }
      for (size_t i = 0; i < pfds.size(); ++i) {
        const int p = who[i];
        Peer& s = st[static_cast<size_t>(p)];
        const int fd = pfds[i].fd;
        if (pfds[i].revents & (POLLERR | POLLNVAL))
          fail(std::string(what) + ": connection to rank " + std::to_string(p) +
               " failed (the rank died?)");
        if (pfds[i].revents & POLLOUT) {
          const Part& part = send[static_cast<size_t>(p)];
          while (s.sent < H + part.bytes) {
            const char* src = s.sent < H ? reinterpret_cast<const char*>(&s.out_h) + s.sent
                                         : part.data + (s.sent - H);
            size_t len = s.sent < H ? H - s.sent : part.bytes - (s.sent - H);
            ssize_t k = ::send(fd, src, len, MSG_NOSIGNAL);
            if (k < 0) {
              if (errno == EAGAIN || errno == EINTR) break;
              fail(std::string(what) + ": lost rank " + std::to_string(p) + " (" +
                   std::strerror(errno) + ")");
            }
            s.sent += static_cast<size_t>(k);
            last_progress = steady_ns();
          }
        }
        if (pfds[i].revents & (POLLIN | POLLHUP)) {
          const Part& part = recv[static_cast<size_t>(p)];
          while (s.got < H + part.bytes) {
            char* dst = s.got < H ? reinterpret_cast<char*>(&s.in_h) + s.got
                                  : const_cast<char*>(part.data) + (s.got - H);
            size_t len = s.got < H ? H - s.got : part.bytes - (s.got - H);
            ssize_t k = ::recv(fd, dst, len, 0);
            if (k == 0)
              fail(std::string(what) + ": rank " + std::to_string(p) +
                   " closed its connection (it exited or died)");
            if (k < 0) {
              if (errno == EAGAIN || errno == EINTR) break;
              fail(std::string(what) + ": lost rank " + std::to_string(p) + " (" +
                   std::strerror(errno) + ")");
            }
            const bool header_done = s.got < H && s.got + static_cast<size_t>(k) >= H;
            s.got += static_cast<size_t>(k);
            last_progress = steady_ns();
            if (header_done &&
                (s.in_h.magic != kMagic || s.in_h.seq != seq || s.in_h.bytes != part.bytes))
              fail(std::string(what) + ": rank " + std::to_string(p) +
                   " is out of step (its collective #" + std::to_string(s.in_h.seq) + " sends " +
                   std::to_string(s.in_h.bytes) + " bytes; expected #" + std::to_string(seq) +
                   " with " + std::to_string(part.bytes) + ")");
          }
        }
      }
    }
  }

  CommOptions o_;
  std::vector<int> fds_;
  int listen_fd_ = -1;
  uint32_t seq_ = 0;
  bool aborted_ = false;
  std::vector<int64_t> marks_;
};

}  // namespace

std::unique_ptr<Communicator> create_host_communicator(const CommOptions& options) {
  return std::make_unique<HostCommunicator>(options);
}

#ifndef INFERSCOPE_ENGINE_WITH_NCCL
std::unique_ptr<Communicator> create_nccl_communicator(Backend&, const CommOptions&) {
  throw std::runtime_error(
      "--ep-comm nccl: this build has no NCCL (configure with CUDA on and NCCL found)");
}
#endif

std::unique_ptr<Communicator> create_communicator(const std::string& kind, Backend& backend,
                                                  const CommOptions& options) {
  if (kind == "host") {
    if (!backend.host_memory())
      throw std::invalid_argument(
          "--ep-comm host needs a backend with host memory (the CPU backend); use nccl");
    return create_host_communicator(options);
  }
  if (kind == "nccl") return create_nccl_communicator(backend, options);
  throw std::invalid_argument("unknown --ep-comm '" + kind + "' (host | nccl)");
}

}  // namespace inferscope::engine
