// Names for the event model's enums, used in logs, metrics labels and the viewer.
#include "inferscope/wire/records.hpp"

namespace inferscope::wire {

const char* to_string(RecordKind kind) {
  switch (kind) {
    case RecordKind::kHello:
      return "hello";
    case RecordKind::kStringDef:
      return "string";
    case RecordKind::kSpan:
      return "span";
    case RecordKind::kExpertLoad:
      return "expert_load";
    case RecordKind::kMemory:
      return "memory";
    case RecordKind::kPrefixCache:
      return "prefix_cache";
    case RecordKind::kStage:
      return "stage";
    case RecordKind::kRequest:
      return "request";
    case RecordKind::kAgentHealth:
      return "agent_health";
    case RecordKind::kCounter:
      return "counter";
    case RecordKind::kAlert:
      return "alert";
    case RecordKind::kExpertParallel:
      return "expert_parallel";
    case RecordKind::kRangeQuery:
      return "range_query";
    case RecordKind::kRangeEnd:
      return "range_end";
    case RecordKind::kFrameSequence:
      return "frame_sequence";
  }
  return "unknown";
}

const char* to_string(SpanCategory category) {
  switch (category) {
    case SpanCategory::kCpuRange:
      return "cpu_range";
    case SpanCategory::kNvtxRange:
      return "nvtx_range";
    case SpanCategory::kKernel:
      return "kernel";
    case SpanCategory::kMemcpy:
      return "memcpy";
    case SpanCategory::kMemset:
      return "memset";
    case SpanCategory::kRequest:
      return "request";
    case SpanCategory::kStage:
      return "stage";
    case SpanCategory::kRuntime:
      return "runtime";
  }
  return "unknown";
}

const char* to_string(MemoryKind kind) {
  switch (kind) {
    case MemoryKind::kKvCache:
      return "kv_cache";
    case MemoryKind::kSsmState:
      return "ssm_state";
    case MemoryKind::kSsmCheckpoints:
      return "ssm_checkpoints";
    case MemoryKind::kWeights:
      return "weights";
    case MemoryKind::kActivations:
      return "activations";
  }
  return "unknown";
}

const char* to_string(Stage stage) {
  switch (stage) {
    case Stage::kEncoder:
      return "encoder";
    case Stage::kConnector:
      return "connector";
    case Stage::kBackbonePrefill:
      return "backbone_prefill";
    case Stage::kBackboneDecode:
      return "backbone_decode";
  }
  return "unknown";
}

const char* to_string(AlertKind kind) {
  switch (kind) {
    case AlertKind::kHotExpert:
      return "hot_expert";
    case AlertKind::kColdExpert:
      return "cold_expert";
    case AlertKind::kDeadExpert:
      return "dead_expert";
    case AlertKind::kDropBurst:
      return "drop_burst";
    case AlertKind::kHotRank:
      return "hot_rank";
  }
  return "unknown";
}

const char* to_string(LayerKind kind) {
  switch (kind) {
    case LayerKind::kAttention:
      return "attention";
    case LayerKind::kSsm:
      return "ssm";
  }
  return "unknown";
}

}  // namespace inferscope::wire
