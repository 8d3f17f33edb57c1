// inferscope viewer: a generator of realistic sample traces.
//
// Used by the unit tests, the screenshot test, the LOD benchmark and the
// make_sample_trace tool while no collector trace is at hand. It writes what a
// collector would: per source (rank) a Hello and its StringDefs, then spans of
// a scheduler thread (step > forward > layer > router / launch, nested), GPU
// kernels with correlation ids matching their launches, expert loads with one
// hot expert during a window, memory (KV, SSM state, checkpoints, weights),
// prefix-cache deltas, stage timings and requests, and from source 0 the
// collector's alert episodes (the hot expert, a drop burst). With
// expert_parallel, also the ranks' expert_parallel records (see SampleOptions).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace inferscope::viewer {

struct SampleOptions {
  uint32_t ranks = 2;
  double seconds = 20.0;
  uint64_t target_spans = 60'000;  // spans over all ranks (approximately)
  uint32_t layers = 8;             // alternating attention / SSM; every other layer MoE
  uint32_t experts = 16;
  uint32_t top_k = 2;
  uint32_t hot_layer = 3;  // a MoE layer (odd)
  uint32_t hot_expert = 5;
  uint32_t hot_rank = 0;
  double hot_from_s = 6.0, hot_to_s = 14.0;
  double requests_per_s = 12.0;  // per rank
  uint32_t seed = 1;
  bool compress = true;
  int64_t t0_ns = 1'000'000'000'000;  // monotonic start
  // Expert parallelism: the ranks hold contiguous shards of the experts, every
  // rank sends expert_parallel records, and during the hot window every rank's
  // routing prefers the hot expert's rank (which then computes more rows and
  // makes the others wait in combine); a hot_rank alert names it.
  bool expert_parallel = false;
};

struct SampleSummary {
  uint64_t spans = 0, kernels = 0, expert_loads = 0, requests = 0, stages = 0, alerts = 0;
  uint64_t captured_kernels = 0;  // kernels tagged with the hot episode's GPU capture
  uint64_t frames = 0, bytes = 0;
};

using FrameSink = std::function<void(std::span<const uint8_t> frame)>;

SampleSummary generate_sample_trace(const SampleOptions& options, const FrameSink& sink);
// Writes a trace file; false with error set on an I/O failure.
bool write_sample_trace(const std::string& path, const SampleOptions& options,
                        SampleSummary* summary, std::string* error);
// A whole trace file (header + frames) in memory.
std::vector<uint8_t> sample_trace_bytes(const SampleOptions& options,
                                        SampleSummary* summary = nullptr);

}  // namespace inferscope::viewer
