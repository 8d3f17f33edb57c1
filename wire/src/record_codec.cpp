// Record bodies, field by field. Each add_one writes tag + length + body;
// decode_body is its mirror and checks every field it reads.
#include "record_codec.hpp"

#include <cstring>

#include "byte_io.hpp"

namespace inferscope::wire {
namespace {

using detail::ByteReader;
using detail::ByteWriter;

// Writes the tag and a one-byte length placeholder, runs body(), then patches
// the length, widening it in place in the rare case a body is >= 128 bytes.
template <class Body>
void framed(std::vector<uint8_t>& payload, RecordKind kind, Body&& body) {
  payload.push_back(static_cast<uint8_t>(kind));
  size_t length_at = payload.size();
  payload.push_back(0);
  ByteWriter w(payload);
  body(w);
  size_t body_bytes = payload.size() - length_at - 1;
  if (body_bytes < 0x80) {
    payload[length_at] = static_cast<uint8_t>(body_bytes);
    return;
  }
  uint8_t len[10];
  size_t n = 0;
  uint64_t v = body_bytes;
  while (v >= 0x80) {
    len[n++] = static_cast<uint8_t>(v) | 0x80;
    v >>= 7;
  }
  len[n++] = static_cast<uint8_t>(v);
  payload.insert(payload.begin() + static_cast<ptrdiff_t>(length_at) + 1, n - 1, 0);
  std::memcpy(payload.data() + length_at, len, n);
}

void delta_ts(ByteWriter& w, int64_t& previous_ns, int64_t ts) {
  w.svarint(static_cast<int64_t>(static_cast<uint64_t>(ts) - static_cast<uint64_t>(previous_ns)));
  previous_ns = ts;
}

bool read_delta_ts(ByteReader& r, int64_t& previous_ns, int64_t& ts) {
  int64_t delta;
  if (!r.svarint(delta)) return false;
  ts = static_cast<int64_t>(static_cast<uint64_t>(previous_ns) + static_cast<uint64_t>(delta));
  previous_ns = ts;
  return true;
}

template <class Enum>
bool read_enum(ByteReader& r, Enum& out, uint8_t count) {
  uint8_t v;
  if (!r.u8(v) || v >= count) return false;
  out = static_cast<Enum>(v);
  return true;
}

template <class T>
bool read_small(ByteReader& r, T& out, uint64_t max) {
  uint64_t v;
  if (!r.varint(v) || v > max) return false;
  out = static_cast<T>(v);
  return true;
}

}  // namespace

// [SECTION] Encoding -------------------------------------------------------------

void add_one(std::vector<uint8_t>& p, int64_t&, const Hello& r) {
  framed(p, RecordKind::kHello, [&](ByteWriter& w) {
    w.varint(r.protocol_version);
    w.string(r.service);
    w.string(r.instance);
    w.string(r.host);
    w.varint(r.pid);
    w.varint(r.rank);
    w.varint(r.world_size);
    w.string(r.model.name);
    w.varint(r.model.layers.size());
    for (const auto& l : r.model.layers) {
      w.u8(static_cast<uint8_t>(l.mixer));
      w.u8(static_cast<uint8_t>(l.ffn));
      w.varint(l.experts);
    }
    w.varint(r.model.top_k);
    w.varint(r.model.shared_experts);
    w.f32(r.model.capacity_factor);
    w.varint(r.model.expert_to_rank.size());
    for (uint32_t rank : r.model.expert_to_rank) w.varint(rank);
    w.u8(static_cast<uint8_t>(r.clock.domain));
    w.svarint(r.clock.realtime_minus_monotonic_ns);
    w.string(r.auth_token);
    w.varint(r.capabilities);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t&, const StringDef& r) {
  framed(p, RecordKind::kStringDef, [&](ByteWriter& w) {
    w.varint(r.id);
    w.string(r.value);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const Span& r) {
  // The store re-encodes every summary level's spans: one resize to the widest
  // a span can be and stores without a capacity check per byte (ByteWriter's
  // push_back per byte was ~100 instructions a span), then cut back. The same
  // bytes as framed() with ByteWriter would write.
  const size_t at = p.size();
  p.resize(at + 3 + kSpanFieldsMaxBytes);
  uint8_t* const body = p.data() + at + 2;
  uint8_t* w = body;
  *w++ = static_cast<uint8_t>(r.track_kind);
  detail::put_varint(w, r.track_id);
  detail::put_varint(w, r.stream);
  detail::put_varint(w, r.name_id);
  *w++ = static_cast<uint8_t>(r.category);
  detail::put_varint(w, r.depth);
  detail::put_varint(w, detail::zigzag(static_cast<int64_t>(static_cast<uint64_t>(r.start_ns) -
                                                            static_cast<uint64_t>(prev))));
  prev = r.start_ns;
  detail::put_varint(w, detail::zigzag(r.end_ns - r.start_ns));
  detail::put_varint(w, r.correlation_id);
  detail::put_varint(w, r.request_id);
  const uint8_t n = r.num_args < kMaxSpanArgs ? r.num_args : kMaxSpanArgs;
  *w++ = n;
  for (uint8_t i = 0; i < n; ++i) {
    detail::put_varint(w, r.args[i].key_id);
    detail::put_varint(w, detail::zigzag(r.args[i].value));
  }
  const auto body_bytes = static_cast<size_t>(w - body);
  p[at] = static_cast<uint8_t>(RecordKind::kSpan);
  if (body_bytes < 0x80) {  // the length in one byte: the body is in place
    p[at + 1] = static_cast<uint8_t>(body_bytes);
    p.resize(at + 2 + body_bytes);
    return;
  }
  // Two length bytes (a body of 128 to 163 bytes): the body moves up by one.
  static_assert(kSpanFieldsMaxBytes < (1u << 14), "a span's length fits two varint bytes");
  std::memmove(body + 1, body, body_bytes);
  p[at + 1] = static_cast<uint8_t>(body_bytes | 0x80);
  p[at + 2] = static_cast<uint8_t>(body_bytes >> 7);
  p.resize(at + 3 + body_bytes);
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const ExpertLoad& r) {
  framed(p, RecordKind::kExpertLoad, [&](ByteWriter& w) {
    w.varint(r.step);
    w.varint(r.layer);
    delta_ts(w, prev, r.timestamp_ns);
    w.varint(r.tokens);
    w.varint(r.dropped);
    w.varint(r.rerouted);
    w.varint(r.routed.size());
    for (uint32_t c : r.routed) w.varint(c);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const MemorySample& r) {
  framed(p, RecordKind::kMemory, [&](ByteWriter& w) {
    delta_ts(w, prev, r.timestamp_ns);
    w.varint(r.rank);
    w.u8(static_cast<uint8_t>(r.kind));
    w.varint(r.used_bytes);
    w.varint(r.capacity_bytes);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const PrefixCacheSample& r) {
  framed(p, RecordKind::kPrefixCache, [&](ByteWriter& w) {
    delta_ts(w, prev, r.timestamp_ns);
    w.varint(r.attention_queried_tokens);
    w.varint(r.attention_hit_tokens);
    w.varint(r.ssm_queried_tokens);
    w.varint(r.ssm_hit_tokens);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const StageTiming& r) {
  framed(p, RecordKind::kStage, [&](ByteWriter& w) {
    w.varint(r.request_id);
    w.u8(static_cast<uint8_t>(r.stage));
    w.u8(static_cast<uint8_t>(r.device));
    delta_ts(w, prev, r.start_ns);
    w.svarint(r.end_ns - r.start_ns);
    w.svarint(r.gpu_ns);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const RequestEvent& r) {
  framed(p, RecordKind::kRequest, [&](ByteWriter& w) {
    w.varint(r.request_id);
    delta_ts(w, prev, r.arrival_ns);
    w.u8(r.first_token_ns != 0 ? 1 : 0);
    if (r.first_token_ns != 0) w.svarint(r.first_token_ns - r.arrival_ns);
    w.svarint(r.finish_ns - r.arrival_ns);
    w.varint(r.prompt_tokens);
    w.varint(r.output_tokens);
    w.varint(r.image_tokens);
    w.varint(r.cached_tokens);
    w.u8(static_cast<uint8_t>(r.status));
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const AgentHealth& r) {
  framed(p, RecordKind::kAgentHealth, [&](ByteWriter& w) {
    delta_ts(w, prev, r.timestamp_ns);
    w.varint(r.records_sent);
    w.varint(r.records_dropped);
    w.u8(static_cast<uint8_t>(r.dropped_by_kind.size()));
    for (uint64_t d : r.dropped_by_kind) w.varint(d);
    w.varint(r.buffer_high_water_bytes);
    w.varint(r.reconnects);
    w.varint(r.bytes_sent);
    w.varint(r.records_unconfirmed);
    w.u8(r.gpu.mode);
    for (uint64_t v :
         {r.gpu.bursts_started, r.gpu.bursts_finished, r.gpu.captures_requested,
          r.gpu.captures_started, r.gpu.captures_refused_busy, r.gpu.captures_refused_cooldown,
          r.gpu.captures_refused_off, r.gpu.captures_completed, r.gpu.kernels_captured,
          r.gpu.kernels_attributed, r.gpu.records_dropped, r.gpu.cupti_detaches,
          r.gpu.cupti_reattaches, r.gpu.cupti_detach_errors})
      w.varint(v);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const CounterSample& r) {
  framed(p, RecordKind::kCounter, [&](ByteWriter& w) {
    delta_ts(w, prev, r.timestamp_ns);
    w.varint(r.name_id);
    w.u8(r.is_gauge ? 1 : 0);
    w.f64(r.value);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t& prev, const AlertEpisode& r) {
  framed(p, RecordKind::kAlert, [&](ByteWriter& w) {
    w.u8(static_cast<uint8_t>(r.kind));
    w.varint(r.rank);
    w.varint(r.layer);
    w.varint(r.expert);
    delta_ts(w, prev, r.start_ns);
    w.u8(r.end_ns != 0 ? 1 : 0);
    if (r.end_ns != 0) w.svarint(r.end_ns - r.start_ns);
    w.f32(r.peak_share);
    w.f32(r.peak_utilization);
    w.string(r.model);
  });
}

// Kinds added after protocol v1 shipped code their timestamp absolutely: a
// decoder that skips an unknown tag must not lose the delta chain.
void add_one(std::vector<uint8_t>& p, int64_t&, const ExpertParallelStep& r) {
  framed(p, RecordKind::kExpertParallel, [&](ByteWriter& w) {
    w.varint(r.step);
    w.varint(r.layer);
    w.svarint(r.timestamp_ns);
    w.svarint(r.dispatch_ns);
    w.svarint(r.compute_ns);
    w.svarint(r.combine_ns);
    w.varint(r.rows_sent);
    w.varint(r.rows_computed);
    // Revision 2: trailing, so revision-1 decoders ignore it (and revision-1
    // records, which end here, decode with an empty matrix row).
    if (r.row_bytes != 0 || !r.rows_to_rank.empty()) {
      w.varint(r.row_bytes);
      w.varint(r.rows_to_rank.size());
      for (uint32_t v : r.rows_to_rank) w.varint(v);
    }
  });
}

void add_one(std::vector<uint8_t>& p, int64_t&, const RangeQuery& r) {
  framed(p, RecordKind::kRangeQuery, [&](ByteWriter& w) {
    w.varint(r.query_id);
    w.svarint(r.from_ns);
    w.svarint(r.to_ns);
    w.svarint(r.resolution_ns);
    w.varint(r.max_records);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t&, const RangeEnd& r) {
  framed(p, RecordKind::kRangeEnd, [&](ByteWriter& w) {
    w.varint(r.query_id);
    w.u8(static_cast<uint8_t>(r.status));
    w.varint(r.spans);
    w.varint(r.merged_spans);
    w.varint(r.records);
    w.varint(r.blocks_read);
    w.varint(r.blocks_skipped);
    w.string(r.message);
  });
}

void add_one(std::vector<uint8_t>& p, int64_t&, const FrameSequence& r) {
  framed(p, RecordKind::kFrameSequence, [&](ByteWriter& w) {
    w.varint(r.stream);
    w.varint(r.seq);
  });
}

// [SECTION] Decoding -------------------------------------------------------------

namespace {

#define IS_READ(expr, what) \
  do {                      \
    if (!(expr)) {          \
      why = what;           \
      return false;         \
    }                       \
  } while (0)

bool decode(ByteReader& r, int64_t&, Hello& h, std::string& why) {
  IS_READ(read_small(r, h.protocol_version, UINT16_MAX), "bad protocol version");
  IS_READ(r.string(h.service, kMaxStringBytes), "bad service name");
  IS_READ(r.string(h.instance, kMaxStringBytes), "bad instance name");
  IS_READ(r.string(h.host, kMaxStringBytes), "bad host name");
  IS_READ(r.varint32(h.pid), "bad pid");
  IS_READ(read_small(r, h.rank, kMaxRanks - 1), "rank out of range");
  IS_READ(read_small(r, h.world_size, kMaxRanks), "world size out of range");
  IS_READ(r.string(h.model.name, kMaxStringBytes), "bad model name");
  uint32_t layers;
  IS_READ(read_small(r, layers, kMaxLayers), "layer count out of range");
  // Each layer takes at least 3 bytes: refuse counts the body cannot hold.
  IS_READ(layers * 3ull <= r.remaining(), "layer list runs past the record");
  h.model.layers.resize(layers);
  for (auto& l : h.model.layers) {
    IS_READ(read_enum(r, l.mixer, 2), "bad layer mixer kind");
    IS_READ(read_enum(r, l.ffn, 2), "bad layer ffn kind");
    IS_READ(read_small(r, l.experts, kMaxExperts), "expert count out of range");
  }
  IS_READ(read_small(r, h.model.top_k, kMaxExperts), "top-k out of range");
  IS_READ(read_small(r, h.model.shared_experts, kMaxExperts), "shared experts out of range");
  IS_READ(r.f32(h.model.capacity_factor), "bad capacity factor");
  uint32_t placement;
  IS_READ(read_small(r, placement, kMaxExperts), "placement size out of range");
  IS_READ(placement <= r.remaining(), "placement runs past the record");
  h.model.expert_to_rank.resize(placement);
  for (auto& rank : h.model.expert_to_rank)
    IS_READ(read_small(r, rank, kMaxRanks - 1), "placement rank out of range");
  IS_READ(read_enum(r, h.clock.domain, 1), "unknown clock domain");
  IS_READ(r.svarint(h.clock.realtime_minus_monotonic_ns), "bad clock offset");
  IS_READ(r.string(h.auth_token, kMaxStringBytes), "bad auth token");
  h.capabilities = 0;  // absent in hellos from older agents
  if (!r.at_end()) IS_READ(r.varint32(h.capabilities), "bad capabilities");
  return true;
}

bool decode(ByteReader& r, int64_t&, StringDef& s, std::string& why) {
  IS_READ(r.varint32(s.id), "bad string id");
  IS_READ(s.id != 0, "string id 0 is reserved");
  IS_READ(r.string(s.value, kMaxStringBytes), "string too long or truncated");
  return true;
}

bool decode(ByteReader& r, int64_t& prev, Span& s, std::string& why) {
  IS_READ(read_enum(r, s.track_kind, 2), "bad track kind");
  IS_READ(r.varint32(s.track_id), "bad track id");
  IS_READ(r.varint32(s.stream), "bad stream");
  IS_READ(r.varint32(s.name_id), "bad name id");
  IS_READ(read_enum(r, s.category, 8), "bad span category");
  IS_READ(read_small(r, s.depth, UINT16_MAX), "bad depth");
  IS_READ(read_delta_ts(r, prev, s.start_ns), "bad start time");
  int64_t duration;
  IS_READ(r.svarint(duration), "bad duration");
  IS_READ(duration >= 0, "span ends before it starts");
  s.end_ns =
      static_cast<int64_t>(static_cast<uint64_t>(s.start_ns) + static_cast<uint64_t>(duration));
  IS_READ(r.varint(s.correlation_id), "bad correlation id");
  IS_READ(r.varint(s.request_id), "bad request id");
  IS_READ(r.u8(s.num_args) && s.num_args <= kMaxSpanArgs, "too many span args");
  for (uint8_t i = 0; i < s.num_args; ++i) {
    IS_READ(r.varint32(s.args[i].key_id), "bad arg key");
    IS_READ(r.svarint(s.args[i].value), "bad arg value");
  }
  for (uint8_t i = s.num_args; i < kMaxSpanArgs; ++i) s.args[i] = {};
  return true;
}

bool decode(ByteReader& r, int64_t& prev, ExpertLoad& e, std::string& why) {
  IS_READ(r.varint(e.step), "bad step");
  IS_READ(r.varint32(e.layer), "bad layer");
  IS_READ(e.layer < kMaxLayers, "layer out of range");
  IS_READ(read_delta_ts(r, prev, e.timestamp_ns), "bad timestamp");
  IS_READ(r.varint32(e.tokens), "bad token count");
  IS_READ(r.varint32(e.dropped), "bad drop count");
  IS_READ(r.varint32(e.rerouted), "bad reroute count");
  uint32_t n;
  IS_READ(read_small(r, n, kMaxExperts), "expert count out of range");
  IS_READ(n <= r.remaining(), "expert counts run past the record");
  e.routed.resize(n);
  for (auto& c : e.routed) IS_READ(r.varint32(c), "bad expert count");
  return true;
}

bool decode(ByteReader& r, int64_t& prev, MemorySample& m, std::string& why) {
  IS_READ(read_delta_ts(r, prev, m.timestamp_ns), "bad timestamp");
  IS_READ(read_small(r, m.rank, kMaxRanks - 1), "rank out of range");
  IS_READ(read_enum(r, m.kind, kMemoryKindCount), "unknown memory kind");
  IS_READ(r.varint(m.used_bytes), "bad used bytes");
  IS_READ(r.varint(m.capacity_bytes), "bad capacity bytes");
  return true;
}

bool decode(ByteReader& r, int64_t& prev, PrefixCacheSample& p, std::string& why) {
  IS_READ(read_delta_ts(r, prev, p.timestamp_ns), "bad timestamp");
  IS_READ(r.varint(p.attention_queried_tokens) && r.varint(p.attention_hit_tokens) &&
              r.varint(p.ssm_queried_tokens) && r.varint(p.ssm_hit_tokens),
          "bad token counts");
  IS_READ(p.attention_hit_tokens <= p.attention_queried_tokens &&
              p.ssm_hit_tokens <= p.ssm_queried_tokens,
          "more hits than queries");
  return true;
}

bool decode(ByteReader& r, int64_t& prev, StageTiming& s, std::string& why) {
  IS_READ(r.varint(s.request_id), "bad request id");
  IS_READ(read_enum(r, s.stage, kStageCount), "unknown stage");
  IS_READ(read_enum(r, s.device, 2), "unknown device");
  IS_READ(read_delta_ts(r, prev, s.start_ns), "bad start time");
  int64_t duration;
  IS_READ(r.svarint(duration) && duration >= 0, "bad duration");
  s.end_ns = s.start_ns + duration;
  IS_READ(r.svarint(s.gpu_ns) && s.gpu_ns >= 0, "bad gpu time");
  return true;
}

bool decode(ByteReader& r, int64_t& prev, RequestEvent& q, std::string& why) {
  IS_READ(r.varint(q.request_id), "bad request id");
  IS_READ(read_delta_ts(r, prev, q.arrival_ns), "bad arrival time");
  uint8_t has_first;
  IS_READ(r.u8(has_first) && has_first <= 1, "bad first-token flag");
  q.first_token_ns = 0;
  if (has_first) {
    int64_t d;
    IS_READ(r.svarint(d), "bad first-token time");
    q.first_token_ns = q.arrival_ns + d;
  }
  int64_t d;
  IS_READ(r.svarint(d), "bad finish time");
  q.finish_ns = q.arrival_ns + d;
  IS_READ(r.varint32(q.prompt_tokens) && r.varint32(q.output_tokens) &&
              r.varint32(q.image_tokens) && r.varint32(q.cached_tokens),
          "bad token counts");
  IS_READ(read_enum(r, q.status, 4), "unknown request status");
  return true;
}

bool decode(ByteReader& r, int64_t& prev, AgentHealth& a, std::string& why) {
  IS_READ(read_delta_ts(r, prev, a.timestamp_ns), "bad timestamp");
  IS_READ(r.varint(a.records_sent) && r.varint(a.records_dropped), "bad counts");
  uint8_t n;
  IS_READ(r.u8(n) && n <= a.dropped_by_kind.size(), "too many drop kinds");
  a.dropped_by_kind.fill(0);
  for (uint8_t i = 0; i < n; ++i) IS_READ(r.varint(a.dropped_by_kind[i]), "bad drop count");
  IS_READ(r.varint(a.buffer_high_water_bytes) && r.varint(a.reconnects) && r.varint(a.bytes_sent),
          "bad counts");
  a.records_unconfirmed = 0;  // absent in records from older agents
  if (!r.at_end()) IS_READ(r.varint(a.records_unconfirmed), "bad unconfirmed count");
  a.gpu = {};  // absent in records from older agents
  if (!r.at_end()) {
    IS_READ(r.u8(a.gpu.mode) && a.gpu.mode <= 3, "bad GPU trace mode");
    for (uint64_t* v :
         {&a.gpu.bursts_started, &a.gpu.bursts_finished, &a.gpu.captures_requested,
          &a.gpu.captures_started, &a.gpu.captures_refused_busy, &a.gpu.captures_refused_cooldown,
          &a.gpu.captures_refused_off, &a.gpu.captures_completed, &a.gpu.kernels_captured,
          &a.gpu.kernels_attributed, &a.gpu.records_dropped})
      IS_READ(r.varint(*v), "bad GPU trace count");
  }
  // Revision 4: the detach counters (absent from older agents: left 0 above).
  if (!r.at_end()) {
    for (uint64_t* v : {&a.gpu.cupti_detaches, &a.gpu.cupti_reattaches, &a.gpu.cupti_detach_errors})
      IS_READ(r.varint(*v), "bad CUPTI detach count");
  }
  return true;
}

bool decode(ByteReader& r, int64_t& prev, CounterSample& c, std::string& why) {
  IS_READ(read_delta_ts(r, prev, c.timestamp_ns), "bad timestamp");
  IS_READ(r.varint32(c.name_id), "bad name id");
  uint8_t gauge;
  IS_READ(r.u8(gauge) && gauge <= 1, "bad gauge flag");
  c.is_gauge = gauge != 0;
  IS_READ(r.f64(c.value), "bad value");
  return true;
}

bool decode(ByteReader& r, int64_t& prev, AlertEpisode& a, std::string& why) {
  IS_READ(read_enum(r, a.kind, kAlertKindCount), "unknown alert kind");
  IS_READ(read_small(r, a.rank, kMaxRanks - 1), "rank out of range");
  IS_READ(read_small(r, a.layer, kMaxLayers - 1), "layer out of range");
  IS_READ(read_small(r, a.expert, kMaxExperts - 1), "expert out of range");
  IS_READ(read_delta_ts(r, prev, a.start_ns), "bad start time");
  uint8_t closed;
  IS_READ(r.u8(closed) && closed <= 1, "bad end flag");
  a.end_ns = 0;
  if (closed) {
    int64_t d;
    IS_READ(r.svarint(d) && d >= 0, "bad end time");
    a.end_ns = a.start_ns + d;
  }
  IS_READ(r.f32(a.peak_share) && r.f32(a.peak_utilization), "bad peak");
  IS_READ(r.string(a.model, kMaxStringBytes), "bad model name");
  return true;
}

bool decode(ByteReader& r, int64_t&, ExpertParallelStep& e, std::string& why) {
  IS_READ(r.varint(e.step), "bad step");
  IS_READ(read_small(r, e.layer, kMaxLayers - 1), "layer out of range");
  IS_READ(r.svarint(e.timestamp_ns), "bad timestamp");  // absolute: see add_one
  IS_READ(r.svarint(e.dispatch_ns) && e.dispatch_ns >= 0, "bad dispatch time");
  IS_READ(r.svarint(e.compute_ns) && e.compute_ns >= 0, "bad compute time");
  IS_READ(r.svarint(e.combine_ns) && e.combine_ns >= 0, "bad combine time");
  IS_READ(r.varint32(e.rows_sent) && r.varint32(e.rows_computed), "bad row counts");
  e.row_bytes = 0;
  e.rows_to_rank.clear();
  if (r.remaining() == 0) return true;  // revision 1: no traffic matrix row
  IS_READ(r.varint32(e.row_bytes), "bad row bytes");
  uint32_t n;
  IS_READ(read_small(r, n, kMaxEpRanks), "rank count out of range");
  IS_READ(n <= r.remaining(), "traffic row runs past the record");
  e.rows_to_rank.resize(n);
  for (auto& v : e.rows_to_rank) IS_READ(r.varint32(v), "bad traffic rows");
  return true;
}

bool decode(ByteReader& r, int64_t&, RangeQuery& q, std::string& why) {
  IS_READ(r.varint(q.query_id), "bad query id");
  IS_READ(r.svarint(q.from_ns) && r.svarint(q.to_ns), "bad range");
  IS_READ(r.svarint(q.resolution_ns) && q.resolution_ns >= 0, "bad resolution");
  IS_READ(r.varint32(q.max_records), "bad record cap");
  return true;
}

bool decode(ByteReader& r, int64_t&, RangeEnd& e, std::string& why) {
  IS_READ(r.varint(e.query_id), "bad query id");
  IS_READ(read_enum(r, e.status, kRangeStatusCount), "unknown range status");
  IS_READ(r.varint(e.spans) && r.varint(e.merged_spans) && r.varint(e.records), "bad counts");
  IS_READ(r.varint32(e.blocks_read) && r.varint32(e.blocks_skipped), "bad block counts");
  IS_READ(r.string(e.message, kMaxStringBytes), "bad message");
  return true;
}

bool decode(ByteReader& r, int64_t&, FrameSequence& f, std::string& why) {
  IS_READ(r.varint(f.stream) && r.varint(f.seq), "bad frame sequence");
  return true;
}

#undef IS_READ

template <class T>
BodyResult decode_as(std::span<const uint8_t> body, int64_t& prev, Record& out, std::string& why) {
  // Reuse the alternative already in out (keeps vector capacity across records).
  if (!std::holds_alternative<T>(out)) out.template emplace<T>();
  ByteReader r(body);
  // Trailing bytes are fields from a newer revision: ignored on purpose.
  return decode(r, prev, std::get<T>(out), why) ? BodyResult::kOk : BodyResult::kError;
}

}  // namespace

bool decode_span_fast(const uint8_t* p, size_t body_bytes, size_t readable, int64_t& prev,
                      Record& out) {
  detail::NoSpanFields fields;
  return detail::decode_span_fast_with(p, body_bytes, readable, prev, out, fields);
}

BodyResult decode_body(uint8_t tag, std::span<const uint8_t> body, int64_t& prev, Record& out,
                       std::string& why) {
  switch (static_cast<RecordKind>(tag)) {
    case RecordKind::kHello:
      return decode_as<Hello>(body, prev, out, why);
    case RecordKind::kStringDef:
      return decode_as<StringDef>(body, prev, out, why);
    case RecordKind::kSpan:
      return decode_as<Span>(body, prev, out, why);
    case RecordKind::kExpertLoad:
      return decode_as<ExpertLoad>(body, prev, out, why);
    case RecordKind::kMemory:
      return decode_as<MemorySample>(body, prev, out, why);
    case RecordKind::kPrefixCache:
      return decode_as<PrefixCacheSample>(body, prev, out, why);
    case RecordKind::kStage:
      return decode_as<StageTiming>(body, prev, out, why);
    case RecordKind::kRequest:
      return decode_as<RequestEvent>(body, prev, out, why);
    case RecordKind::kAgentHealth:
      return decode_as<AgentHealth>(body, prev, out, why);
    case RecordKind::kCounter:
      return decode_as<CounterSample>(body, prev, out, why);
    case RecordKind::kAlert:
      return decode_as<AlertEpisode>(body, prev, out, why);
    case RecordKind::kExpertParallel:
      return decode_as<ExpertParallelStep>(body, prev, out, why);
    case RecordKind::kRangeQuery:
      return decode_as<RangeQuery>(body, prev, out, why);
    case RecordKind::kRangeEnd:
      return decode_as<RangeEnd>(body, prev, out, why);
    case RecordKind::kFrameSequence:
      return decode_as<FrameSequence>(body, prev, out, why);
  }
  return BodyResult::kSkipped;
}

}  // namespace inferscope::wire
