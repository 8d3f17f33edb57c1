// One populated record of every kind, shared by the wire tests, benchmark and fuzz seeds.
#pragma once

#include <vector>

#include "inferscope/wire/capture.hpp"
#include "inferscope/wire/records.hpp"

namespace inferscope::wire::testing {

inline Hello sample_hello() {
  Hello h;
  h.service = "inferscope-engine";
  h.instance = "node-a:4242";
  h.host = "node-a";
  h.pid = 4242;
  h.rank = 3;
  h.world_size = 8;
  h.model.name = "demo-hybrid-moe";
  h.model.layers = {{LayerKind::kAttention, FfnKind::kDense, 0},
                    {LayerKind::kSsm, FfnKind::kMoe, 16},
                    {LayerKind::kSsm, FfnKind::kMoe, 16},
                    {LayerKind::kAttention, FfnKind::kMoe, 16}};
  h.model.top_k = 2;
  h.model.shared_experts = 1;
  h.model.capacity_factor = 1.25f;
  h.model.expert_to_rank = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7};
  h.clock.realtime_minus_monotonic_ns = 1'764'000'000'000'000'000;
  h.auth_token = "s3cret";
  h.capabilities = kCapabilityCaptureRequests;
  return h;
}

inline Span sample_span(int64_t start_ns = 1'000'000'000) {
  Span s;
  s.track_kind = TrackKind::kGpuStream;
  s.track_id = 0;
  s.stream = 7;
  s.name_id = 12;
  s.category = SpanCategory::kKernel;
  s.depth = 2;
  s.start_ns = start_ns;
  s.end_ns = start_ns + 35'000;
  s.correlation_id = 991;
  s.request_id = 17;
  s.num_args = 2;
  s.args[0] = {3, 128};
  s.args[1] = {4, -5};
  return s;
}

inline ExpertLoad sample_load() {
  ExpertLoad e;
  e.step = 1234;
  e.layer = 2;
  e.timestamp_ns = 1'000'050'000;
  e.tokens = 64;
  e.dropped = 3;
  e.rerouted = 1;
  e.routed = {40, 2, 9, 1, 0, 7, 5, 3, 6, 4, 8, 12, 10, 6, 11, 4};
  return e;
}

inline ExpertParallelStep sample_ep_step() {
  ExpertParallelStep s;
  s.step = 1234;
  s.layer = 2;
  s.timestamp_ns = 1'000'130'000;
  s.dispatch_ns = 41'000;
  s.compute_ns = 250'000;
  s.combine_ns = 97'000;
  s.rows_sent = 96;
  s.rows_computed = 160;
  s.row_bytes = 512;                 // revision 2: this rank (1)'s dispatch traffic row
  s.rows_to_rank = {40, 64, 0, 56};  // 96 rows to others, 64 kept
  return s;
}

inline std::vector<Record> one_of_each() {
  std::vector<Record> records;
  records.push_back(sample_hello());
  records.push_back(StringDef{12, "moe.expert_gemm"});
  records.push_back(sample_span());
  records.push_back(sample_load());
  records.push_back(MemorySample{1'000'060'000, 3, MemoryKind::kSsmState, 1u << 20, 64u << 20});
  records.push_back(PrefixCacheSample{1'000'070'000, 512, 256, 512, 0});
  records.push_back(
      StageTiming{17, Stage::kConnector, Device::kGpu, 1'000'080'000, 1'000'090'000, 8'000});
  records.push_back(RequestEvent{17, 999'000'000, 1'000'100'000, 1'200'000'000, 100, 32, 64, 48,
                                 RequestStatus::kOk});
  AgentHealth health;
  health.timestamp_ns = 1'000'110'000;
  health.records_sent = 100000;
  health.records_dropped = 12;
  health.dropped_by_kind[static_cast<size_t>(RecordKind::kSpan)] = 12;
  health.buffer_high_water_bytes = 65536;
  health.reconnects = 2;
  health.bytes_sent = 1 << 22;
  health.gpu.mode = 1;
  health.gpu.bursts_started = 7;
  health.gpu.bursts_finished = 6;
  health.gpu.captures_requested = 3;
  health.gpu.captures_started = 2;
  health.gpu.captures_refused_cooldown = 1;
  health.gpu.captures_completed = 2;
  health.gpu.kernels_captured = 1234;
  health.gpu.kernels_attributed = 1200;
  health.gpu.cupti_detaches = 6;
  health.gpu.cupti_reattaches = 5;
  health.gpu.cupti_detach_errors = 1;
  records.push_back(health);
  records.push_back(CounterSample{1'000'120'000, 5, true, 3.25});
  records.push_back(AlertEpisode{AlertKind::kHotExpert, 3, 2, 0, 1'000'000'000, 0, 0.31f, 4.96f,
                                 "demo-hybrid-moe"});
  records.push_back(sample_ep_step());
  records.push_back(RangeQuery{77, 1'000'000'000, 2'000'000'000, 1'000'000, 50000});
  records.push_back(
      RangeEnd{77, RangeStatus::kTruncated, 120000, 90000, 50000, 12, 30, "record cap reached"});
  records.push_back(FrameSequence{0x9e3779b97f4a7c15ull, 4242});
  return records;
}

}  // namespace inferscope::wire::testing
