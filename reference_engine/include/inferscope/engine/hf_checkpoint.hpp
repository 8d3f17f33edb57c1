// Hugging Face MoE checkpoints: a directory with config.json and
// model.safetensors (or model-0000i-of-0000n.safetensors shards with
// model.safetensors.index.json), as transformers' save_pretrained writes them.
//
// Families (config.json "model_type"):
//   mixtral    RMSNorm, NeoX RoPE, GQA, softmax top-k renormalised, SwiGLU experts
//   qwen3_moe  + per-head q/k RMSNorm, norm_topk_prob, dense layers from
//              mlp_only_layers / decoder_sparse_step, moe_intermediate_size
//   olmoe      + q/k RMSNorm over the whole projection, norm_topk_prob (false:
//              the top-k softmax weights are not renormalised)
// Capacity is unlimited (transformers drops nothing); no vision front end.
// docs/engine.md has the tensor name mapping: both transformers 5's fused
// experts (mlp.experts.gate_up_proj [E, 2I, D], mlp.experts.down_proj [E, D, I])
// and the per-expert names of transformers 4 (block_sparse_moe.experts.j.w1/w2/w3,
// mlp.experts.j.gate_proj/up_proj/down_proj) load.
#pragma once

#include <cstdint>
#include <string>

#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/config.hpp"
#include "inferscope/engine/weights.hpp"

namespace inferscope::engine {

enum class HfFamily : uint8_t { kMixtral, kQwen3Moe, kOlmoe };

struct HfModel {
  std::string dir;
  HfFamily family = HfFamily::kMixtral;
  std::string model_type;
  ModelConfig config;  // vocab, sizes, eps, theta from config.json; vision off
  bool tie_word_embeddings = false;
  // Longest sequence the engine may run: max_position_embeddings, or a
  // sliding window if the config sets one (the engine attends to everything).
  int64_t max_positions = 0;
  std::string checkpoint_dtype;  // dtype of model.embed_tokens.weight: "F32", "BF16", ...
};

// True when `dir` holds a config.json.
bool is_hf_checkpoint(const std::string& dir);

// Reads config.json (and the safetensors headers for the dtype). Throws
// std::runtime_error naming the file and field on anything unsupported
// (another model_type, biases, a non-default RoPE, a non-SiLU activation,
// clip_qkv, ...).
HfModel load_hf_model(const std::string& dir);

// Fills every weight of `w` (allocated for m.config) from the checkpoint,
// tensor by tensor, in w's storage type. Every engine weight must be covered
// and every checkpoint tensor used; throws naming the first that is not.
void load_hf_weights(const HfModel& m, Weights& w);

// The storage type for GEMM weights: kBF16 for a BF16 checkpoint on a backend
// that takes bf16 weights, else kF32 (the CPU backend widens per tensor).
DType hf_gemm_dtype(const HfModel& m, const Backend& backend);

}  // namespace inferscope::engine
