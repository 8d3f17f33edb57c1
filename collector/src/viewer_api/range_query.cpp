// Range query: store blocks -> per-track merged spans and thinned samples -> reply frames.
#include "inferscope/collector/range_query.hpp"

#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <unordered_map>

#include "../store/span_merge.hpp"
#include "inferscope/wire/codec.hpp"
#include "inferscope/wire/trace_block.hpp"

namespace inferscope::collector {

namespace {

class Reducer {
 public:
  Reducer(const wire::RangeQuery& q, wire::RangeEnd& end)
      : q_(q),
        end_(end),
        cap_(q.max_records ? q.max_records : kDefaultRangeMaxRecords),
        merger_(q.resolution_ns,
                [this](uint32_t source, const wire::Span& s) { emit(source, wire::Record{s}); }) {}

  void frame(std::span<const uint8_t> bytes) {
    if (!decoder_.open(bytes).ok()) return;  // CRC-checked when written; a bad one is skipped
    const uint32_t source = decoder_.header().source_id;
    wire::Record r;
    while (decoder_.next(r)) record(source, r);
  }

  void finish(std::vector<std::vector<uint8_t>>& frames) {
    merger_.finish();
    end_.merged_spans = merger_.merged();
    for (auto& [source, out] : outputs_) {
      // Definitions first: the hello and every string the source defined up to the range.
      wire::EncoderOptions eo;
      eo.source_id = source;
      eo.compress = true;
      wire::FrameEncoder defs(eo);
      std::vector<uint8_t> frame;
      auto& known = sources_[source];
      if (known.hello) defs.add(wire::Record{*known.hello});
      for (const auto& [id, value] : known.strings) {
        defs.add(wire::StringDef{id, value});
        if (defs.full()) defs.finish(frame);
      }
      defs.add(wire::StringDef{wire::kMergedSpansStringId, "(merged spans)"});
      defs.finish(frame);
      frames.push_back(std::move(frame));
      if (!out.encoder->empty()) out.encoder->finish(out.frames.emplace_back());
      for (auto& f : out.frames) frames.push_back(std::move(f));
    }
  }

  bool truncated() const { return truncated_; }

 private:
  struct SourceDefs {
    std::optional<wire::Hello> hello;
    std::map<uint32_t, std::string> strings;
  };
  struct Output {
    std::unique_ptr<wire::FrameEncoder> encoder;
    std::vector<std::vector<uint8_t>> frames;
  };

  bool in_range(int64_t start, int64_t end) const { return end >= q_.from_ns && start <= q_.to_ns; }

  void record(uint32_t source, wire::Record& r) {
    switch (wire::kind_of(r)) {
      case wire::RecordKind::kHello: {
        auto& h = std::get<wire::Hello>(r);
        h.auth_token.clear();
        sources_[source].hello = std::move(h);
        return;
      }
      case wire::RecordKind::kStringDef: {
        auto& d = std::get<wire::StringDef>(r);
        sources_[source].strings[d.id] = std::move(d.value);
        return;
      }
      case wire::RecordKind::kSpan: {
        const auto& s = std::get<wire::Span>(r);
        if (!in_range(s.start_ns, s.end_ns)) return;
        end_.spans += merged_span_count(s);  // a summary's merged span stands for its count
        merger_.add(source, s);
        return;
      }
      case wire::RecordKind::kRangeQuery:
      case wire::RecordKind::kRangeEnd:
        return;
      default: {
        wire::FrameSummary t;
        wire::summarize_record(r, t);
        if (!t.has_time() || !in_range(t.min_ns, t.max_ns)) return;
        // Samples: one per series per resolution step is all a timeline can show.
        if (q_.resolution_ns > 0) {
          uint32_t series = 0;
          if (auto* c = std::get_if<wire::CounterSample>(&r)) series = c->name_id;
          if (auto* m = std::get_if<wire::MemorySample>(&r))
            series = static_cast<uint32_t>(m->kind);
          const auto key = std::make_tuple(source, static_cast<uint8_t>(r.index()), series);
          const int64_t step = t.min_ns / q_.resolution_ns;
          auto [it, fresh] = last_step_.try_emplace(key, step);
          if (!fresh) {
            const bool thin = wire::kind_of(r) == wire::RecordKind::kCounter ||
                              wire::kind_of(r) == wire::RecordKind::kMemory;
            if (thin && it->second == step) return;
            it->second = step;
          }
        }
        emit(source, r);
        return;
      }
    }
  }

  void emit(uint32_t source, const wire::Record& r) {
    if (end_.records >= cap_) {
      truncated_ = true;
      return;
    }
    Output& out = outputs_[source];
    if (!out.encoder) {
      wire::EncoderOptions eo;
      eo.source_id = source;
      eo.compress = true;
      out.encoder = std::make_unique<wire::FrameEncoder>(eo);
    }
    out.encoder->add(r);
    ++end_.records;
    if (out.encoder->full() || out.encoder->record_count() >= 65536)
      out.encoder->finish(out.frames.emplace_back());
  }

  const wire::RangeQuery& q_;
  wire::RangeEnd& end_;
  const uint64_t cap_;
  bool truncated_ = false;
  wire::FrameDecoder decoder_{wire::DecoderOptions{wire::kMaxBlockRawBytes}};
  std::map<uint32_t, SourceDefs> sources_;
  std::map<uint32_t, Output> outputs_;
  SpanMerger merger_;
  std::map<std::tuple<uint32_t, uint8_t, uint32_t>, int64_t> last_step_;
};

std::vector<uint8_t> single(uint32_t source, const wire::Record& r) {
  wire::EncoderOptions eo;
  eo.source_id = source;
  wire::FrameEncoder enc(eo);
  enc.add(r);
  std::vector<uint8_t> f;
  enc.finish(f);
  return f;
}

}  // namespace

void answer_range(const TraceStore* store, const wire::RangeQuery& query, RangeReply& reply) {
  reply = {};
  reply.end.query_id = query.query_id;
  reply.frames.push_back(single(wire::kCollectorSource, wire::Record{query}));
  if (store == nullptr) {
    reply.end.status = wire::RangeStatus::kNoStore;
    reply.end.message = "this collector has no trace store (--trace-dir)";
  } else if (query.to_ns < query.from_ns) {
    reply.end.status = wire::RangeStatus::kBadQuery;
    reply.end.message = "range ends before it starts";
  } else {
    Reducer reducer(query, reply.end);
    // Summaries at most one resolution step coarse merge into the same reply (span_merge.hpp).
    RangeScan scan = store->query(
        query.from_ns, query.to_ns, [&](std::span<const uint8_t> f) { reducer.frame(f); },
        query.resolution_ns);
    reducer.finish(reply.frames);
    reply.end.blocks_read = static_cast<uint32_t>(scan.blocks_read + scan.summaries_read);
    reply.end.blocks_skipped = static_cast<uint32_t>(scan.blocks_skipped);
    if (reducer.truncated()) {
      reply.end.status = wire::RangeStatus::kTruncated;
      reply.end.message = "more than " + std::to_string(reply.end.records) +
                          " records: zoom in or raise the resolution";
    } else if (scan.errors) {
      reply.end.message = std::to_string(scan.errors) + " block(s) could not be read";
    }
  }
  reply.frames.push_back(single(wire::kCollectorSource, wire::Record{reply.end}));
}

}  // namespace inferscope::collector
