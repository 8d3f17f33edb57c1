// Helper for viewer tests that need a real trace store: the sample trace written through the
// collector's TraceStore (bench/common/sample_store.hpp, which viewer_bench uses too).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "../../bench/common/sample_store.hpp"

namespace inferscope::viewer::test {

inline void write_store(const std::string& dir, uint64_t spans, bool summaries,
                        uint32_t block_bytes = 32u << 10) {
  collector::TraceStoreOptions so;
  so.dir = dir;
  so.background = false;
  so.summaries = summaries;
  so.block_bytes = block_bytes;
  so.segment_bytes = 1u << 20;
  so.max_bytes = 1ull << 30;
  SampleOptions o;
  o.target_spans = spans;
  o.ranks = 2;
  o.seconds = 20;
  bench::SampleStore written;
  std::string error;
  ASSERT_TRUE(bench::write_sample_store(so, o, written, error)) << error;
}

}  // namespace inferscope::viewer::test
