// inferscope collector: how much memory all agent connections together may
// hold for frames that are still arriving.
//
// A connection reads into a small buffer; a frame larger than that grows the
// buffer to the size its header announces, before the payload arrives. Without
// a bound, peers that announce large frames and then stall (or trickle) make
// the collector hold max_frame_bytes each (200 such peers: 800 MiB). Every
// growth beyond the small buffer is charged here first; the ingest server
// closes a connection whose growth does not fit (reason "memory_budget").
// Connections that have not completed a hello draw from a smaller share of the
// budget, so unauthenticated peers can never take what agents need.
// One per ingest server, on its I/O thread (not thread-safe).
#pragma once

#include <cstddef>

namespace inferscope::collector {

class FrameBudget {
 public:
  FrameBudget(size_t max_bytes, size_t max_bytes_before_hello)
      : max_(max_bytes), max_before_hello_(max_bytes_before_hello) {}

  // What one connection holds. Its destructor does not release: call release().
  struct Share {
    size_t bytes = 0;
    bool before_hello = false;  // drawn from the before-hello share
  };

  // Sets `share` to `bytes` (drawn from the before-hello share when
  // `before_hello`). Shrinking always succeeds; growth that would exceed the
  // budget fails and leaves everything unchanged.
  bool set(Share& share, size_t bytes, bool before_hello) {
    const size_t used = used_ - share.bytes;
    const size_t used_before_hello = used_before_hello_ - (share.before_hello ? share.bytes : 0);
    const bool growing = bytes > share.bytes;
    if (growing &&
        (used + bytes > max_ || (before_hello && used_before_hello + bytes > max_before_hello_)))
      return false;
    used_ = used + bytes;
    used_before_hello_ = used_before_hello + (before_hello ? bytes : 0);
    share = Share{bytes, before_hello && bytes > 0};
    return true;
  }
  void release(Share& share) { set(share, 0, false); }

  size_t used() const { return used_; }
  size_t used_before_hello() const { return used_before_hello_; }

 private:
  size_t max_, max_before_hello_;
  size_t used_ = 0, used_before_hello_ = 0;
};

}  // namespace inferscope::collector
