// Perfetto packet encoding with protozero (perfetto_writer.hpp).
#include "perfetto_writer.hpp"

#include <algorithm>

namespace inferscope::collector::perfetto {
namespace {

// [SECTION] Perfetto's field numbers (collector/proto/perfetto_trace.proto)
namespace trace {
constexpr uint32_t kPacket = 1;
}
namespace packet {
constexpr uint32_t kClockSnapshot = 6;
constexpr uint32_t kTimestamp = 8;
constexpr uint32_t kSequenceId = 10;  // trusted_packet_sequence_id
constexpr uint32_t kTrackEvent = 11;
constexpr uint32_t kInternedData = 12;
constexpr uint32_t kSequenceFlags = 13;
constexpr uint32_t kTrackDescriptor = 60;
constexpr uint32_t kIncrementalStateCleared = 1;  // SequenceFlags values
constexpr uint32_t kNeedsIncrementalState = 2;
}  // namespace packet
namespace clock {
constexpr uint32_t kClocks = 1;
constexpr uint32_t kPrimaryTraceClock = 2;
constexpr uint32_t kClockId = 1;
constexpr uint32_t kClockTimestamp = 2;
constexpr uint32_t kRealtime = 1;  // BuiltinClock
constexpr uint32_t kBoottime = 6;
}  // namespace clock
namespace track {
constexpr uint32_t kUuid = 1;
constexpr uint32_t kName = 2;
constexpr uint32_t kProcess = 3;
constexpr uint32_t kParentUuid = 5;
constexpr uint32_t kCounter = 8;
constexpr uint32_t kPid = 1;  // ProcessDescriptor
constexpr uint32_t kProcessName = 6;
constexpr uint32_t kCounterUnit = 3;  // CounterDescriptor
}  // namespace track
namespace event {
constexpr uint32_t kCategoryIids = 3;
constexpr uint32_t kDebugAnnotations = 4;
constexpr uint32_t kType = 9;
constexpr uint32_t kNameIid = 10;
constexpr uint32_t kTrackUuid = 11;
constexpr uint32_t kCounterValue = 30;
constexpr uint32_t kDoubleCounterValue = 44;
constexpr uint32_t kFlowIds = 47;
constexpr uint32_t kTerminatingFlowIds = 48;
}  // namespace event
namespace annotation {
constexpr uint32_t kNameIid = 1;
constexpr uint32_t kUintValue = 3;
constexpr uint32_t kIntValue = 4;
constexpr uint32_t kDoubleValue = 5;
constexpr uint32_t kStringValue = 6;
}  // namespace annotation
namespace interned {
// InternedData fields, indexed by Sequence::Table; each entry is {iid = 1, name = 2}.
constexpr uint32_t kTableField[3] = {1 /*event_categories*/, 2 /*event_names*/,
                                     3 /*debug_annotation_names*/};
constexpr uint32_t kIid = 1;
constexpr uint32_t kName = 2;
}  // namespace interned

constexpr size_t kDrainBytes = 1u << 20;  // write to the stream once this much is buffered

// At one timestamp: ends first (inner before outer), then begins (outer before
// inner), then instants and counters.
bool before(const Event& a, const Event& b) {
  if (a.ts != b.ts) return a.ts < b.ts;
  auto rank = [](const Event& e) {
    switch (e.type) {
      case EventType::kSliceEnd:
        return 0;
      case EventType::kSliceBegin:
        return 1;
      default:
        return 2;
    }
  };
  const int ra = rank(a), rb = rank(b);
  if (ra != rb) return ra < rb;
  if (ra == 0) return a.depth > b.depth;
  if (ra == 1) return a.depth < b.depth;
  return false;
}

}  // namespace

uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z == 0 ? 1 : z;  // uuid 0 is Perfetto's implicit global track
}

uint64_t Sequence::intern(Table table, std::string_view value) {
  auto& t = tables_[table];
  auto it = t.find(value);
  if (it != t.end()) return it->second;
  const uint64_t iid = next_iid_[table]++;
  auto [pos, inserted] = t.emplace(std::string(value), iid);
  pending_.push_back({table, iid, &pos->first});
  return iid;
}

TraceWriter::TraceWriter(std::ostream& out) : out_(out), trace_(buf_) {
  buf_.reserve(kDrainBytes + (64u << 10));
}

TraceWriter::~TraceWriter() = default;

Sequence& TraceWriter::sequence() {
  const auto id = static_cast<uint32_t>(sequences_.size() + 1);
  sequences_.push_back(std::unique_ptr<Sequence>(new Sequence(id)));
  sequences_.back()->cleared_ = true;
  return *sequences_.back();
}

void TraceWriter::clock_snapshot(uint64_t boottime_ns, uint64_t realtime_ns) {
  {
    protozero::pbf_writer p(trace_, trace::kPacket);
    protozero::pbf_writer cs(p, packet::kClockSnapshot);
    for (auto [id, ts] :
         {std::pair{clock::kBoottime, boottime_ns}, {clock::kRealtime, realtime_ns}}) {
      protozero::pbf_writer c(cs, clock::kClocks);
      c.add_uint32(clock::kClockId, id);
      c.add_uint64(clock::kClockTimestamp, ts);
    }
    cs.add_uint32(clock::kPrimaryTraceClock, clock::kBoottime);
  }
  ++packets_;
  maybe_drain();
}

void TraceWriter::process_track(uint64_t uuid, int32_t pid, const std::string& name) {
  {
    protozero::pbf_writer p(trace_, trace::kPacket);
    protozero::pbf_writer td(p, packet::kTrackDescriptor);
    td.add_uint64(track::kUuid, uuid);
    protozero::pbf_writer pd(td, track::kProcess);
    pd.add_int32(track::kPid, pid);
    pd.add_string(track::kProcessName, name);
  }
  ++packets_;
  maybe_drain();
}

void TraceWriter::track(uint64_t uuid, uint64_t parent, const std::string& name) {
  {
    protozero::pbf_writer p(trace_, trace::kPacket);
    protozero::pbf_writer td(p, packet::kTrackDescriptor);
    td.add_uint64(track::kUuid, uuid);
    if (parent) td.add_uint64(track::kParentUuid, parent);
    td.add_string(track::kName, name);
  }
  ++packets_;
  maybe_drain();
}

void TraceWriter::counter_track(uint64_t uuid, uint64_t parent, const std::string& name,
                                CounterUnit unit) {
  {
    protozero::pbf_writer p(trace_, trace::kPacket);
    protozero::pbf_writer td(p, packet::kTrackDescriptor);
    td.add_uint64(track::kUuid, uuid);
    if (parent) td.add_uint64(track::kParentUuid, parent);
    td.add_string(track::kName, name);
    // Written even when unspecified: protozero drops an empty submessage, and the
    // descriptor's presence is what makes this a counter track.
    protozero::pbf_writer cd(td, track::kCounter);
    cd.add_enum(track::kCounterUnit, static_cast<int32_t>(unit));
  }
  ++packets_;
  maybe_drain();
}

void TraceWriter::flush(Sequence& seq) {
  auto& batch = seq.batch_;
  if (batch.empty()) return;
  std::stable_sort(batch.begin(), batch.end(), before);
  for (size_t i = 0; i < batch.size(); ++i) write_event(seq, batch[i], i == 0);
  batch.clear();
  seq.pending_.clear();
  // Bounded interning: a table over the cap is dropped here, between batches,
  // and the next batch restarts the sequence's incremental state.
  bool over = false;
  for (auto& t : seq.tables_) over = over || t.size() > kMaxInternedPerTable;
  if (over) {
    for (auto& t : seq.tables_) t.clear();
    seq.cleared_ = true;
  }
  // Keep the batch's capacity for the next frame, but not a huge one.
  if (batch.capacity() > (1u << 16)) batch.shrink_to_fit();
}

void TraceWriter::write_event(Sequence& seq, const Event& e, bool first) {
  {
    protozero::pbf_writer p(trace_, trace::kPacket);
    // Never negative on the reference host; a host found later with a smaller
    // offset could move an early event below 0, which Perfetto cannot hold.
    p.add_uint64(packet::kTimestamp, static_cast<uint64_t>(std::max<int64_t>(e.ts, 0)));
    p.add_uint32(packet::kSequenceId, seq.id_);
    uint32_t flags = packet::kNeedsIncrementalState;
    if (first && seq.cleared_) {
      flags |= packet::kIncrementalStateCleared;
      seq.cleared_ = false;
    }
    p.add_uint32(packet::kSequenceFlags, flags);
    if (first && !seq.pending_.empty()) {
      protozero::pbf_writer in(p, packet::kInternedData);
      for (const auto& entry : seq.pending_) {
        protozero::pbf_writer item(in, interned::kTableField[entry.table]);
        item.add_uint64(interned::kIid, entry.iid);
        item.add_string(interned::kName, *entry.value);
      }
    }
    protozero::pbf_writer te(p, packet::kTrackEvent);
    te.add_enum(event::kType, static_cast<int32_t>(e.type));
    te.add_uint64(event::kTrackUuid, e.track);
    if (e.type == EventType::kCounter) {
      if (e.double_value)
        te.add_double(event::kDoubleCounterValue, e.counter_double);
      else
        te.add_int64(event::kCounterValue, e.counter_int);
    } else {
      if (e.category_iid) te.add_uint64(event::kCategoryIids, e.category_iid);
      if (e.name_iid) te.add_uint64(event::kNameIid, e.name_iid);
    }
    if (e.flow_out) te.add_fixed64(event::kFlowIds, e.flow_out);
    if (e.flow_in) te.add_fixed64(event::kTerminatingFlowIds, e.flow_in);
    for (uint8_t i = 0; i < e.num_annotations; ++i) {
      const Annotation& a = e.annotations[i];
      protozero::pbf_writer da(te, event::kDebugAnnotations);
      da.add_uint64(annotation::kNameIid, a.name_iid);
      switch (a.kind) {
        case Annotation::Kind::kInt:
          da.add_int64(annotation::kIntValue, a.i);
          break;
        case Annotation::Kind::kUint:
          da.add_uint64(annotation::kUintValue, a.u);
          break;
        case Annotation::Kind::kDouble:
          da.add_double(annotation::kDoubleValue, a.d);
          break;
        case Annotation::Kind::kString:
          da.add_string(annotation::kStringValue, a.s ? *a.s : std::string());
          break;
      }
    }
  }
  ++packets_;
  maybe_drain();
}

void TraceWriter::maybe_drain() {
  if (buf_.size() < kDrainBytes) return;
  out_.write(buf_.data(), static_cast<std::streamsize>(buf_.size()));
  bytes_ += buf_.size();
  buf_.clear();  // no submessage is open between packets, so the writer may keep going
}

bool TraceWriter::finish() {
  out_.write(buf_.data(), static_cast<std::streamsize>(buf_.size()));
  bytes_ += buf_.size();
  buf_.clear();
  out_.flush();
  return static_cast<bool>(out_);
}

}  // namespace inferscope::collector::perfetto
