// Model and cache configuration, read from a JSON file (reference_engine/models/*.json).
//
// The layer pattern is a string with one letter per layer for the mixer
// ('A' attention, 'S' selective SSM) and a second string for the feed-forward
// ('D' dense, 'M' mixture of experts), e.g. "SSAS" / "DMMM". Every size has a
// default so that a model file only states what differs. docs/engine.md lists
// every field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "inferscope/engine/backend.hpp"

namespace inferscope::engine {

// Byte-level tokenizer: ids 0..255 are bytes, then a few specials.
inline constexpr int32_t kBos = 256;
inline constexpr int32_t kEos = 257;
inline constexpr int32_t kImage = 258;  // placeholder at positions filled by image embeddings
inline constexpr int32_t kVocab = 260;

// RMSNorm of the queries and keys after their projection, before RoPE:
// per head over head_dim with one [head_dim] weight shared by all heads
// (Qwen3-MoE), or over the whole projection with one [heads * head_dim] weight
// (OLMoE). The demo models have none.
enum class QkNorm : uint8_t { kNone = 0, kPerHead = 1, kFull = 2 };

struct AttentionConfig {
  int32_t n_heads = 4;
  int32_t n_kv_heads = 2;
  int32_t head_dim = 16;
  float rope_theta = 10000.0f;
  QkNorm qk_norm = QkNorm::kNone;
};

struct SsmConfig {
  int32_t d_inner = 128;  // expanded width of the scan
  int32_t d_state = 8;    // N: state per channel
  int32_t dt_rank = 8;    // low-rank step-size projection
};

struct MoeConfig {
  int32_t experts = 8;
  int32_t top_k = 2;
  int32_t expert_hidden = 64;  // SwiGLU hidden size of one routed expert
  int32_t shared_experts = 0;  // fused into one SwiGLU of shared_experts * expert_hidden
  GateFn gate = GateFn::kSoftmax;
  bool renormalize = true;
  float scaling = 1.0f;
  float capacity_factor = 1.25f;  // <= 0: unlimited
  OverflowPolicy overflow = OverflowPolicy::kDrop;
  bool routing_bias = false;  // DeepSeek-V3 style per-expert selection bias
};

struct VisionConfig {
  bool enabled = true;
  int32_t image_size = 32;  // square RGB input after resizing
  int32_t patch = 8;
  int32_t d_model = 64;
  int32_t layers = 2;
  int32_t n_heads = 4;
  int32_t mlp_hidden = 128;
  int32_t pool = 2;  // connector mean-pools this many patch tokens into one
  int32_t tokens() const { return (image_size / patch) * (image_size / patch) / pool; }
};

// Seeded initialiser knobs that make routing realistically skewed.
struct InitConfig {
  uint64_t seed = 1;
  float scale = 1.0f;       // multiplies the default init scales
  int32_t topics = 4;       // byte classes of the workload's topics (see workload.hpp)
  float topic_skew = 3.0f;  // strength of the topic -> expert preference in the router
  float zipf_bias = 0.0f;   // routing bias (if enabled) / router offset = zipf_bias / rank^zipf_s
  float zipf_s = 1.0f;
};

struct CacheConfig {
  int32_t block_size = 16;
  int32_t num_blocks = 512;
  int32_t max_seqs = 16;                // running sequences (SSM state slots)
  int32_t ssm_checkpoint_interval = 0;  // tokens, multiple of block_size; 0: off
  int32_t max_checkpoints = 64;
  bool prefix_caching = true;
};

struct SchedulerConfig {
  int32_t max_batch_tokens = 256;
  int32_t prefill_chunk = 128;
};

struct ModelConfig {
  std::string name = "model";
  // Token ids 0..vocab-1: kVocab for the byte-tokenizer models (the serving
  // engine and its workloads need that), the checkpoint's vocab_size for a
  // Hugging Face model (hf_checkpoint.hpp), which takes token ids.
  int32_t vocab = kVocab;
  int32_t d_model = 64;
  std::string mixers = "AS";  // one letter per layer
  std::string ffns = "DM";
  int32_t dense_hidden = 128;
  float norm_eps = 1e-5f;
  AttentionConfig attention;
  SsmConfig ssm;
  MoeConfig moe;
  VisionConfig vision;
  InitConfig init;
  CacheConfig cache;
  SchedulerConfig scheduler;

  int32_t n_layers() const { return static_cast<int32_t>(mixers.size()); }
  bool is_attention(int32_t l) const { return mixers[static_cast<size_t>(l)] == 'A'; }
  bool is_moe(int32_t l) const { return ffns[static_cast<size_t>(l)] == 'M'; }
  bool has_ssm() const { return mixers.find('S') != std::string::npos; }
  bool has_attention() const { return mixers.find('A') != std::string::npos; }

  // Throws std::invalid_argument with the offending field.
  void validate() const;
};

// Parses JSON text / a file; throws std::runtime_error naming the file and field.
ModelConfig parse_model_config(const std::string& json_text);
ModelConfig load_model_config(const std::string& path);

}  // namespace inferscope::engine
