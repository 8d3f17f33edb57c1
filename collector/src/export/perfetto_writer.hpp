// Perfetto protobuf trace writing for inferscope-export: packets, tracks, and
// per-sequence interning, encoded with protozero (libprotozero-dev).
//
// Field numbers are Perfetto's published ones; collector/proto/perfetto_trace.proto
// lists the same subset for readers (the tests decode with it).
//
// [SECTION] Sequences and interning
//   Every producer of events (one per source, one per node's alert stream) writes
//   on its own packet sequence (trusted_packet_sequence_id). Event names, categories
//   and annotation names are interned per sequence: the first packet of a batch
//   carries the batch's new entries, later packets refer to them by iid. A table
//   that grows past kMaxInternedPerTable is cleared at the next batch, whose first
//   packet then says SEQ_INCREMENTAL_STATE_CLEARED and re-emits what it uses, so
//   memory stays bounded whatever the number of distinct names. Iids keep counting
//   after a clear: Perfetto forbids reusing an iid for another string in a trace.
//
// [SECTION] Ordering
//   The trace processor sorts packets by timestamp, keeping file order among equal
//   timestamps. A batch (one wire frame's events) is sorted before it is written so
//   that at one timestamp ends come before begins, inner ends before outer ends and
//   outer begins before inner begins: slices that touch or share an edge nest right.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <protozero/pbf_writer.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace inferscope::collector::perfetto {

inline constexpr size_t kMaxInternedPerTable = 1u << 16;
inline constexpr size_t kMaxAnnotations = 6;  // a span's request, correlation and 4 args

enum class EventType : uint8_t { kSliceBegin = 1, kSliceEnd = 2, kInstant = 3, kCounter = 4 };
enum class CounterUnit : uint8_t { kUnspecified = 0, kTimeNs = 1, kCount = 2, kBytes = 3 };

struct Annotation {
  enum class Kind : uint8_t { kInt, kUint, kDouble, kString };
  uint64_t name_iid = 0;
  Kind kind = Kind::kInt;
  union {
    int64_t i;
    uint64_t u;
    double d;
    const std::string* s;  // the caller's (node-stable) string; valid until the batch is written
  };
  Annotation() : i(0) {}
  void set_int(int64_t v) { kind = Kind::kInt, i = v; }
  void set_uint(uint64_t v) { kind = Kind::kUint, u = v; }
  void set_double(double v) { kind = Kind::kDouble, d = v; }
  void set_string(const std::string* v) { kind = Kind::kString, s = v; }
};

// One TrackEvent before encoding. Plain value; no allocation.
struct Event {
  int64_t ts = 0;
  EventType type = EventType::kInstant;
  int32_t depth = 0;  // nesting depth on its track, for the sort of equal timestamps
  uint64_t track = 0;
  uint64_t name_iid = 0;
  uint64_t category_iid = 0;
  uint64_t flow_out = 0;  // flow_ids: a flow starts (or passes) here
  uint64_t flow_in = 0;   // terminating_flow_ids: a flow ends here
  bool double_value = false;
  int64_t counter_int = 0;
  double counter_double = 0;
  uint8_t num_annotations = 0;
  Annotation annotations[kMaxAnnotations];

  Annotation& annotate(uint64_t name_iid) {
    Annotation& a =
        annotations[num_annotations < kMaxAnnotations ? num_annotations++ : kMaxAnnotations - 1];
    a = Annotation{};
    a.name_iid = name_iid;
    return a;
  }
};

// A 64-bit mix (splitmix64 finalizer) for track uuids and flow ids: ids are
// global in a Perfetto trace, so they are derived from everything that makes
// them unique (node, source, thread, ...).
uint64_t mix(uint64_t a, uint64_t b);

class TraceWriter;

class Sequence {
 public:
  enum Table : uint8_t { kCategories = 0, kNames = 1, kAnnotationNames = 2 };

  uint32_t id() const { return id_; }
  uint64_t intern(Table table, std::string_view value);
  // Events go out in sorted order with the new interned entries in front.
  std::vector<Event>& batch() { return batch_; }
  Event& add() { return batch_.emplace_back(); }

 private:
  friend class TraceWriter;
  explicit Sequence(uint32_t id) : id_(id) {}

  struct Entry {
    Table table;
    uint64_t iid;
    const std::string* value;  // the key in the table (node-stable)
  };
  struct Hash {  // heterogeneous lookup: no string built per interned use
    using is_transparent = void;
    size_t operator()(std::string_view v) const { return std::hash<std::string_view>{}(v); }
  };
  uint32_t id_;
  std::unordered_map<std::string, uint64_t, Hash, std::equal_to<>> tables_[3];
  uint64_t next_iid_[3] = {1, 1, 1};
  std::vector<Entry> pending_;
  std::vector<Event> batch_;
  bool cleared_ = false;  // the next packet starts (or restarts) the incremental state
  bool started_ = false;
};

class TraceWriter {
 public:
  explicit TraceWriter(std::ostream& out);
  ~TraceWriter();

  Sequence& sequence();  // a new packet sequence (ids 1, 2, ...)

  void clock_snapshot(uint64_t boottime_ns, uint64_t realtime_ns);
  void process_track(uint64_t uuid, int32_t pid, const std::string& name);
  void track(uint64_t uuid, uint64_t parent, const std::string& name);
  void counter_track(uint64_t uuid, uint64_t parent, const std::string& name, CounterUnit unit);

  // Sorts and writes the sequence's batch, then empties it.
  void flush(Sequence& seq);
  // Writes what is buffered; false when the stream failed.
  bool finish();

  uint64_t packets() const { return packets_; }
  uint64_t bytes() const { return bytes_; }

 private:
  void write_event(Sequence& seq, const Event& e, bool first);
  void maybe_drain();

  std::ostream& out_;
  std::string buf_;
  protozero::pbf_writer trace_;
  std::vector<std::unique_ptr<Sequence>> sequences_;
  uint64_t packets_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace inferscope::collector::perfetto
