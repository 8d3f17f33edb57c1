// Helper for viewer tests that need a real trace store: the sample trace
// written through the collector's TraceStore, as a collector writes one.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "inferscope/collector/trace_store.hpp"
#include "inferscope/viewer/sample_trace.hpp"
#include "inferscope/wire/codec.hpp"

namespace inferscope::viewer::test {

// Each new segment starts with every source's hello and strings (the replay).
inline void write_store(const std::string& dir, uint64_t spans, bool summaries,
                        uint32_t block_bytes = 32u << 10) {
  std::map<uint32_t, std::vector<wire::Record>> defs;
  auto replay = [&](std::vector<std::vector<uint8_t>>& frames) {
    for (const auto& [source, records] : defs) {
      wire::EncoderOptions eo;
      eo.source_id = source;
      wire::FrameEncoder enc(eo);
      for (const auto& r : records) enc.add(r);
      if (!enc.empty()) enc.finish(frames.emplace_back());
    }
  };
  collector::TraceStoreOptions so;
  so.dir = dir;
  so.background = false;
  so.summaries = summaries;
  so.block_bytes = block_bytes;
  so.segment_bytes = 1u << 20;
  so.max_bytes = 1ull << 30;
  collector::TraceStore store(so, replay, nullptr);
  std::string error;
  ASSERT_TRUE(store.open(error)) << error;
  SampleOptions o;
  o.target_spans = spans;
  o.ranks = 2;
  o.seconds = 20;
  wire::FrameDecoder dec;
  wire::Record r;
  generate_sample_trace(o, [&](std::span<const uint8_t> frame) {
    if (dec.open(frame).ok())
      while (dec.next(r))
        if (std::holds_alternative<wire::Hello>(r) || std::holds_alternative<wire::StringDef>(r))
          defs[dec.header().source_id].push_back(r);
    store.write(frame, 0);
  });
  store.close();
}

}  // namespace inferscope::viewer::test
