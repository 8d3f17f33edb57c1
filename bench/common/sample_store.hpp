// The viewer's synthetic sample trace written through the collector's real TraceStore, as a
// collector writes one: viewer_bench's --make-store and the viewer's store tests both build
// their stores with it.
#pragma once

#include <map>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "inferscope/collector/trace_store.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "inferscope/wire/codec.hpp"

namespace inferscope::bench {

struct SampleStore {
  viewer::SampleSummary sample;
  collector::TraceStoreStats store;
};

// Writes the sample trace of `sample` into a store opened with `options` (dir, sizes,
// summaries, background, ...). Each new segment starts with every source's hello and string
// definitions, replayed the way the collector replays them. False with `error` set when the
// store cannot be opened.
inline bool write_sample_store(const collector::TraceStoreOptions& options,
                               const viewer::SampleOptions& sample, SampleStore& out,
                               std::string& error) {
  std::map<uint32_t, std::vector<wire::Record>> defs;
  auto replay = [&](std::vector<std::vector<uint8_t>>& frames) {
    for (const auto& [source, records] : defs) {
      wire::EncoderOptions eo;
      eo.source_id = source;
      wire::FrameEncoder enc(eo);
      for (const auto& r : records) {
        enc.add(r);
        if (enc.full()) enc.finish(frames.emplace_back());
      }
      if (!enc.empty()) enc.finish(frames.emplace_back());
    }
  };
  collector::TraceStore store(options, replay, nullptr);
  if (!store.open(error)) return false;
  wire::FrameDecoder dec;
  wire::Record r;
  out.sample = viewer::generate_sample_trace(sample, [&](std::span<const uint8_t> frame) {
    if (dec.open(frame).ok())
      while (dec.next(r))
        if (std::holds_alternative<wire::Hello>(r) || std::holds_alternative<wire::StringDef>(r))
          defs[dec.header().source_id].push_back(r);
    store.write(frame, 0);
  });
  store.close();
  out.store = store.stats();
  return true;
}

}  // namespace inferscope::bench
