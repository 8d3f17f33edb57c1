// The "nccl" communicator (communicator.hpp): GPU ranks, NCCL on the CUDA
// backend's stream.
//
// - Rendezvous: rank 0 writes the NCCL unique id to DIR/nccl-id (temp file +
//   rename, so a reader never sees half an id) and removes it when it shuts
//   down; the other ranks poll for it up to the timeout.
// - NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 is set before the
//   communicator is created unless the user set it, and nothing here calls
//   cuMulticastCreate. Multicast objects can take a host's shared GPUs out of
//   service.
// - The communicator is non-blocking (ncclConfig_t.blocking = 0), so init and
//   every group call can be polled with a deadline; a peer that never shows up
//   or stops answering ends in ncclCommAbort and CommError, not a hang.
// - all_to_all_v: one ncclGroupStart/End with ncclSend + ncclRecv per peer (the
//   rows for itself are a device-to-device copy). all_gather and
//   all_reduce_max move a few host integers through a small device buffer and
//   wait for the stream (the MoE layer needs the counts on the host anyway).
// - A watchdog thread watches the event recorded after the last NCCL call: if
//   the stream has not passed it within the timeout (a peer died between
//   collectives while this rank's stream waits inside an NCCL kernel), it
//   aborts the communicator so the stream drains and the next call throws.
// - mark()/elapsed_ns(): CUDA events on the stream, read after a sync.
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "check.hpp"
#include "inferscope/engine/communicator.hpp"
#include "stream_access.hpp"

namespace inferscope::engine {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string nccl_error(ncclResult_t r) {
  return std::string(ncclGetErrorString(r));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Backend& backend, const CommOptions& o)
      : o_(o),
        stream_(static_cast<cudaStream_t>(cuda::backend_stream(backend))),
        device_(cuda::backend_device(backend)) {
    if (o.size < 1 || o.rank < 0 || o.rank >= o.size)
      throw std::invalid_argument("nccl communicator: rank " + std::to_string(o.rank) +
                                  " is not in [0, " + std::to_string(o.size) + ")");
    if (o.rendezvous_dir.empty())
      throw std::invalid_argument("nccl communicator: --ep-rendezvous DIR is required");
    std::error_code ec;
    if (!fs::is_directory(o.rendezvous_dir, ec))
      throw std::invalid_argument("nccl communicator: rendezvous directory '" + o.rendezvous_dir +
                                  "' does not exist");
    ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    ISC_CUDA(cudaSetDevice(device_));
    const ncclUniqueId id = rendezvous();
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&comm_, o.size, id, o.rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress)
      fail_init("ncclCommInitRankConfig: " + nccl_error(r));
    if (!wait_comm("joining the NCCL communicator")) fail_init("timed out joining the other ranks");
    ISC_CUDA(cudaMalloc(&dev_ints_, kIntsBytes));
    ISC_CUDA(cudaMallocHost(&host_ints_, kIntsBytes));
    ISC_CUDA(cudaEventCreateWithFlags(&last_nccl_, cudaEventDisableTiming));
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    cudaSetDevice(device_);
    if (comm_ && !aborted_) {  // (an aborted communicator was released by ncclCommAbort)
      ncclResult_t r = ncclCommFinalize(comm_);
      if ((r == ncclSuccess || r == ncclInProgress) && wait_comm("finalizing"))
        ncclCommDestroy(comm_);
      else
        ncclCommAbort(comm_);
    }
    for (cudaEvent_t e : marks_)
      if (e) cudaEventDestroy(e);
    if (last_nccl_) cudaEventDestroy(last_nccl_);
    if (dev_ints_) cudaFree(dev_ints_);
    if (host_ints_) cudaFreeHost(host_ints_);
    if (o_.rank == 0 && wrote_id_) {
      std::error_code ec;
      fs::remove(id_path(), ec);
    }
  }

  std::string name() const override { return "nccl"; }
  int rank() const override { return o_.rank; }
  int size() const override { return o_.size; }

  void all_gather(std::span<const int32_t> mine, std::vector<int32_t>& out) override {
    check_usable();
    const size_t n = mine.size(), total = n * static_cast<size_t>(o_.size);
    if (total * 4 > kIntsBytes) throw std::invalid_argument("nccl all_gather: too many values");
    out.assign(total, 0);
    std::memcpy(host_ints_, mine.data(), n * 4);
    int32_t* d = static_cast<int32_t*>(dev_ints_);
    ISC_CUDA(cudaMemcpyAsync(d + n * static_cast<size_t>(o_.rank), host_ints_, n * 4,
                             cudaMemcpyHostToDevice, stream_));
    // In place: each rank's slice already sits at its offset.
    nccl(ncclAllGather(d + n * static_cast<size_t>(o_.rank), d, n, ncclInt32, comm_, stream_),
         "ncclAllGather");
    ISC_CUDA(cudaMemcpyAsync(host_ints_, d, total * 4, cudaMemcpyDeviceToHost, stream_));
    sync("all_gather");
    std::memcpy(out.data(), host_ints_, total * 4);
  }

  void all_to_all_v(const Tensor& send, std::span<const int32_t> send_counts, const Tensor& recv,
                    std::span<const int32_t> recv_counts) override {
    check_usable();
    if (send_counts.size() != static_cast<size_t>(o_.size) ||
        recv_counts.size() != static_cast<size_t>(o_.size))
      throw std::invalid_argument("all_to_all_v: one count per rank expected");
    const size_t cols = static_cast<size_t>(send.cols > 0 ? send.cols : recv.cols);
    const float* s = static_cast<const float*>(send.data);
    float* r = static_cast<float*>(recv.data);
    size_t so = 0, ro = 0;
    nccl(ncclGroupStart(), "ncclGroupStart");
    for (int p = 0; p < o_.size; ++p) {
      const size_t sn = static_cast<size_t>(send_counts[static_cast<size_t>(p)]) * cols;
      const size_t rn = static_cast<size_t>(recv_counts[static_cast<size_t>(p)]) * cols;
      if (p == o_.rank) {
        if (sn != rn)
          throw std::invalid_argument("all_to_all_v: rows to self differ from rows from self");
        if (sn > 0)
          ISC_CUDA(cudaMemcpyAsync(r + ro, s + so, sn * 4, cudaMemcpyDeviceToDevice, stream_));
      } else {
        if (sn > 0) nccl(ncclSend(s + so, sn, ncclFloat32, p, comm_, stream_), "ncclSend");
        if (rn > 0) nccl(ncclRecv(r + ro, rn, ncclFloat32, p, comm_, stream_), "ncclRecv");
      }
      so += sn;
      ro += rn;
    }
    nccl(ncclGroupEnd(), "ncclGroupEnd");
    after_nccl();
  }

  int64_t all_reduce_max(int64_t value) override {
    check_usable();
    std::memcpy(host_ints_, &value, 8);
    ISC_CUDA(cudaMemcpyAsync(dev_ints_, host_ints_, 8, cudaMemcpyHostToDevice, stream_));
    nccl(ncclAllReduce(dev_ints_, dev_ints_, 1, ncclInt64, ncclMax, comm_, stream_),
         "ncclAllReduce");
    ISC_CUDA(cudaMemcpyAsync(host_ints_, dev_ints_, 8, cudaMemcpyDeviceToHost, stream_));
    sync("all_reduce_max");
    int64_t out = 0;
    std::memcpy(&out, host_ints_, 8);
    return out;
  }

  void mark(int slot) override {
    if (slot < 0) return;
    while (static_cast<size_t>(slot) >= marks_.size()) {
      cudaEvent_t e = nullptr;
      ISC_CUDA(cudaEventCreate(&e));
      marks_.push_back(e);
    }
    ISC_CUDA(cudaEventRecord(marks_[static_cast<size_t>(slot)], stream_));
  }

  int64_t elapsed_ns(int from, int to) override {
    if (from < 0 || to < 0 || static_cast<size_t>(std::max(from, to)) >= marks_.size()) return 0;
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, marks_[static_cast<size_t>(from)],
                             marks_[static_cast<size_t>(to)]) != cudaSuccess) {
      cudaGetLastError();  // not recorded / not complete: report 0, never throw from telemetry
      return 0;
    }
    return std::max<int64_t>(0, static_cast<int64_t>(static_cast<double>(ms) * 1e6));
  }

  void abort() override {
    std::lock_guard<std::mutex> lock(mu_);
    abort_locked("aborted by the engine");
  }

 private:
  static constexpr size_t kIntsBytes = 1 << 16;

  std::string id_path() const { return (fs::path(o_.rendezvous_dir) / "nccl-id").string(); }
  std::string who() const {
    return "expert-parallel rank " + std::to_string(o_.rank) + " (nccl): ";
  }

  ncclUniqueId rendezvous() {
    ncclUniqueId id{};
    const std::string path = id_path();
    if (o_.rank == 0) {
      ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess) throw CommError(who() + "ncclGetUniqueId: " + nccl_error(r));
      const std::string tmp = path + ".tmp." + std::to_string(::getpid());
      {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out.write(id.internal, sizeof(id.internal));
        if (!out) throw CommError(who() + "cannot write " + tmp);
      }
      std::error_code ec;
      fs::rename(tmp, path, ec);
      if (ec) throw CommError(who() + "cannot publish " + path + ": " + ec.message());
      wrote_id_ = true;
      return id;
    }
    const auto deadline = Clock::now() + o_.timeout;
    while (Clock::now() < deadline) {
      std::ifstream in(path, std::ios::binary);
      if (in) {
        in.read(id.internal, sizeof(id.internal));
        if (in.gcount() == static_cast<std::streamsize>(sizeof(id.internal))) return id;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw CommError(who() + "timed out after " + std::to_string(o_.timeout.count()) +
                    " ms waiting for rank 0's " + path);
  }

  // Polls a non-blocking communicator until it leaves ncclInProgress.
  bool wait_comm(const char*) {
    const auto deadline = Clock::now() + o_.timeout;
    while (true) {
      ncclResult_t st = ncclSuccess;
      ncclResult_t r = ncclCommGetAsyncError(comm_, &st);
      if (r != ncclSuccess) return false;
      if (st == ncclSuccess) return true;
      if (st != ncclInProgress) return false;
      if (Clock::now() > deadline) return false;
      std::this_thread::yield();
    }
  }

  [[noreturn]] void fail_init(const std::string& what) {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    aborted_ = true;
    throw CommError(who() + what);
  }

  void check_usable() {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_) throw CommError(who() + "the communicator was aborted (" + abort_reason_ + ")");
  }

  void nccl(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    if (r == ncclInProgress) {
      if (wait_comm(what)) return;
      std::lock_guard<std::mutex> lock(mu_);
      abort_locked(std::string(what) + " did not complete within the timeout");
      throw CommError(who() + what + ": a peer is stalled or gone (aborted after " +
                      std::to_string(o_.timeout.count()) + " ms)");
    }
    std::lock_guard<std::mutex> lock(mu_);
    abort_locked(std::string(what) + ": " + nccl_error(r));
    throw CommError(who() + what + " failed: " + nccl_error(r) + " (a peer died?)");
  }

  // Tells the watchdog which point of the stream must be passed in time.
  void after_nccl() {
    ISC_CUDA(cudaEventRecord(last_nccl_, stream_));
    std::lock_guard<std::mutex> lock(mu_);
    pending_since_ = Clock::now();
    pending_ = true;
  }

  // Waits for the stream with a deadline instead of cudaStreamSynchronize.
  void sync(const char* what) {
    after_nccl();
    const auto deadline = Clock::now() + o_.timeout;
    while (true) {
      cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) break;
      if (e != cudaErrorNotReady) ISC_CUDA(e);
      check_usable();  // the watchdog may have aborted meanwhile
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st != ncclSuccess && st != ncclInProgress) {
        std::lock_guard<std::mutex> lock(mu_);
        abort_locked(std::string(what) + ": " + nccl_error(st));
        throw CommError(who() + what + " failed: " + nccl_error(st) + " (a peer died?)");
      }
      if (Clock::now() > deadline) {
        std::lock_guard<std::mutex> lock(mu_);
        abort_locked(std::string(what) + " timed out");
        throw CommError(who() + what + ": no answer from the other ranks for " +
                        std::to_string(o_.timeout.count()) +
                        " ms (a peer stalled or died); communicator aborted");
      }
      std::this_thread::yield();
    }
    std::lock_guard<std::mutex> lock(mu_);
    pending_ = false;
  }

  void abort_locked(const std::string& why) {
    if (aborted_) return;
    aborted_ = true;
    abort_reason_ = why;
    if (comm_) ncclCommAbort(comm_);
  }

  void watch() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (stop_ || aborted_ || !pending_) continue;
      if (cudaEventQuery(last_nccl_) == cudaSuccess) {
        pending_ = false;
        continue;
      }
      cudaGetLastError();
      // Twice the collective timeout: sync() reports ordinary stalls itself;
      // this catches a stream stuck in NCCL while the host waits elsewhere
      // (e.g. in the backend's own synchronize).
      if (Clock::now() - pending_since_ > 2 * o_.timeout) {
        std::fprintf(stderr, "%sNCCL work pending for over %lld ms: aborting the communicator\n",
                     who().c_str(), static_cast<long long>(o_.timeout.count()));
        abort_locked("watchdog: NCCL work pending past the timeout");
      }
    }
  }

  CommOptions o_;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  void* dev_ints_ = nullptr;
  void* host_ints_ = nullptr;
  cudaEvent_t last_nccl_ = nullptr;
  std::vector<cudaEvent_t> marks_;
  bool wrote_id_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  std::thread watchdog_;
  bool stop_ = false, aborted_ = false, pending_ = false;
  std::string abort_reason_;
  Clock::time_point pending_since_{};
};

}  // namespace

std::unique_ptr<Communicator> create_nccl_communicator(Backend& backend,
                                                       const CommOptions& options) {
  if (backend.name() != "cuda") throw std::invalid_argument("--ep-comm nccl needs --backend cuda");
  return std::make_unique<NcclCommunicator>(backend, options);
}

}  // namespace inferscope::engine
