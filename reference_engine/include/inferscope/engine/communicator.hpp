// Collectives between expert-parallel ranks (docs/expert-parallel.md).
//
// Every rank is one engine process (or, in tests, one thread) with its own
// backend. The MoE layer under expert parallelism needs three things from its
// peers: the per-expert row counts of every rank (all_gather), the rows
// themselves, exchanged with every peer (all_to_all_v), and a host-level
// agreement for the serving loop (all_reduce_max: "is anyone still busy?").
//
// Two implementations:
//   "host"  CPU ranks on one machine: Unix-domain stream sockets in a
//           rendezvous directory. Tensors must be in host memory
//           (Backend::host_memory()). Works everywhere; used by the CPU backend
//           and the tests that run without a GPU.
//   "nccl"  GPU ranks: NCCL point-to-point on the CUDA backend's stream, the
//           unique id exchanged through a file in the rendezvous directory.
//           Built only with CUDA (create_nccl_communicator throws otherwise).
//           NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
//
// [SECTION] Rules every caller follows
//   - Collectives are issued by every rank in the same order (lockstep); a rank
//     with nothing to exchange still calls them with zero counts.
//   - A peer that dies or stalls past `timeout_ms` makes the call throw
//     CommError naming the peer; the communicator is then unusable (abort()).
//   - The rendezvous directory is a local path given on the command line;
//     nothing received from a peer is ever turned into a path.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "inferscope/engine/backend.hpp"

namespace inferscope::engine {

// A peer was lost, timed out or sent something malformed.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string name() const = 0;  // "host" | "nccl"
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Every rank contributes `mine` (the same length n on every rank); `out`
  // receives size() * n values, rank 0's first. Host memory.
  virtual void all_gather(std::span<const int32_t> mine, std::vector<int32_t>& out) = 0;

  // Exchanges rows of f32 tensors in backend memory. `send` holds
  // sum(send_counts) rows grouped by destination rank (send_counts[d] rows for
  // rank d, in rank order, including the rows a rank "sends" to itself);
  // `recv` receives sum(recv_counts) rows grouped by source rank. Both
  // contiguous with the same column count; recv_counts[s] must equal what
  // rank s sends here (the caller knows it from an all_gather).
  virtual void all_to_all_v(const Tensor& send, std::span<const int32_t> send_counts,
                            const Tensor& recv, std::span<const int32_t> recv_counts) = 0;

  // Host-level reduction for the serving loop: the maximum over ranks.
  virtual int64_t all_reduce_max(int64_t value) = 0;
  bool any(bool value) { return all_reduce_max(value ? 1 : 0) != 0; }

  // Phase timestamps in the order work runs on this rank (GPU: CUDA events on
  // the backend stream; host: the steady clock). mark() never waits; read
  // elapsed_ns() only after the backend has synchronised past both marks.
  // Slots are small integers chosen by the caller (grown on demand).
  virtual void mark(int slot) = 0;
  virtual int64_t elapsed_ns(int from_slot, int to_slot) = 0;

  // Gives up on the peers (NCCL: ncclCommAbort); later calls throw CommError.
  virtual void abort() = 0;
};

struct CommOptions {
  int rank = 0;
  int size = 1;
  std::string rendezvous_dir;                // local directory shared by the ranks
  std::chrono::milliseconds timeout{30000};  // connect / per-collective watchdog
};

// Unix-domain sockets under options.rendezvous_dir (rank r listens on
// DIR/ep-<r>.sock; lower ranks accept, higher ranks connect). Every pair of
// ranks has one stream socket. Throws CommError on timeout.
std::unique_ptr<Communicator> create_host_communicator(const CommOptions& options);

// NCCL on `backend` (must be the CUDA backend): rank 0 writes the unique id to
// DIR/nccl-id (temp file + rename), the others wait for it up to the timeout.
// Throws std::runtime_error when the build has no NCCL.
std::unique_ptr<Communicator> create_nccl_communicator(Backend& backend,
                                                       const CommOptions& options);

// "host" | "nccl" -> the matching factory (size 1 needs no communicator).
std::unique_ptr<Communicator> create_communicator(const std::string& kind, Backend& backend,
                                                  const CommOptions& options);

}  // namespace inferscope::engine
