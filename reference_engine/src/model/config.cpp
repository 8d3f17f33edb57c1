// JSON model files -> ModelConfig, with validation that names the bad field.
#include "inferscope/engine/config.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "inferscope/wire/records.hpp"  // the wire's limits: a model it cannot describe is refused

namespace inferscope::engine {
namespace {

using nlohmann::json;

template <typename T>
void get(const json& j, const char* key, T& out) {
  if (j.contains(key)) out = j.at(key).get<T>();
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("model config: " + what);
}

}  // namespace

void ModelConfig::validate() const {
  require(d_model > 0 && d_model % 2 == 0, "d_model must be positive and even");
  require(vocab > 0, "vocab must be positive");
  require(!mixers.empty() && mixers.size() == ffns.size(),
          "layers.mixers and layers.ffns must be non-empty and of equal length");
  require(mixers.find_first_not_of("AS") == std::string::npos,
          "layers.mixers may hold only A and S");
  require(ffns.find_first_not_of("DM") == std::string::npos, "layers.ffns may hold only D and M");
  require(mixers.size() <= wire::kMaxLayers, "too many layers");
  const auto& a = attention;
  require(a.n_heads > 0 && a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0 && a.head_dim % 2 == 0,
          "attention: n_heads must be a multiple of n_kv_heads and head_dim even");
  require(ssm.d_inner > 0 && ssm.d_state > 0 && ssm.dt_rank > 0, "ssm sizes must be positive");
  require(moe.experts >= 1 && moe.experts <= static_cast<int32_t>(wire::kMaxExperts) &&
              moe.top_k >= 1 && moe.top_k <= moe.experts,
          "moe: need 1 <= top_k <= experts <= 4096");
  require(moe.expert_hidden > 0 && dense_hidden > 0, "ffn hidden sizes must be positive");
  if (vision.enabled) {
    const auto& v = vision;
    int32_t patches = (v.image_size / v.patch) * (v.image_size / v.patch);
    require(v.patch > 0 && v.image_size % v.patch == 0,
            "vision.image_size must be a multiple of patch");
    require(v.pool > 0 && patches % v.pool == 0, "vision.pool must divide the patch count");
    require(v.n_heads > 0 && v.d_model % v.n_heads == 0 && (v.d_model / v.n_heads) % 2 == 0,
            "vision.d_model must split into n_heads even-sized heads");
  }
  require(cache.block_size > 0 && cache.num_blocks > 0 && cache.max_seqs > 0,
          "cache sizes must be positive");
  require(
      cache.ssm_checkpoint_interval >= 0 && cache.ssm_checkpoint_interval % cache.block_size == 0,
      "cache.ssm_checkpoint_interval must be a multiple of block_size (0 = off)");
  require(scheduler.max_batch_tokens >= cache.max_seqs && scheduler.prefill_chunk > 0,
          "scheduler.max_batch_tokens must be at least cache.max_seqs");
}

ModelConfig parse_model_config(const std::string& text) {
  ModelConfig c;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("model config is not valid JSON: ") + e.what());
  }
  try {
    get(j, "name", c.name);
    get(j, "d_model", c.d_model);
    get(j, "dense_hidden", c.dense_hidden);
    get(j, "norm_eps", c.norm_eps);
    if (j.contains("layers")) {
      get(j["layers"], "mixers", c.mixers);
      get(j["layers"], "ffns", c.ffns);
    }
    if (j.contains("attention")) {
      const auto& a = j["attention"];
      get(a, "n_heads", c.attention.n_heads);
      get(a, "n_kv_heads", c.attention.n_kv_heads);
      get(a, "head_dim", c.attention.head_dim);
      get(a, "rope_theta", c.attention.rope_theta);
    }
    if (j.contains("ssm")) {
      const auto& s = j["ssm"];
      get(s, "d_inner", c.ssm.d_inner);
      get(s, "d_state", c.ssm.d_state);
      get(s, "dt_rank", c.ssm.dt_rank);
    }
    if (j.contains("moe")) {
      const auto& m = j["moe"];
      get(m, "experts", c.moe.experts);
      get(m, "top_k", c.moe.top_k);
      get(m, "expert_hidden", c.moe.expert_hidden);
      get(m, "shared_experts", c.moe.shared_experts);
      get(m, "renormalize", c.moe.renormalize);
      get(m, "scaling", c.moe.scaling);
      get(m, "capacity_factor", c.moe.capacity_factor);
      get(m, "routing_bias", c.moe.routing_bias);
      std::string gate = "softmax", overflow = "drop";
      get(m, "gate", gate);
      get(m, "overflow", overflow);
      if (gate != "softmax" && gate != "sigmoid")
        throw std::invalid_argument("moe.gate must be softmax or sigmoid, not '" + gate + "'");
      if (overflow != "drop" && overflow != "reroute")
        throw std::invalid_argument("moe.overflow must be drop or reroute, not '" + overflow + "'");
      c.moe.gate = gate == "softmax" ? GateFn::kSoftmax : GateFn::kSigmoid;
      c.moe.overflow = overflow == "drop" ? OverflowPolicy::kDrop : OverflowPolicy::kReroute;
    }
    if (j.contains("vision")) {
      const auto& v = j["vision"];
      get(v, "enabled", c.vision.enabled);
      get(v, "image_size", c.vision.image_size);
      get(v, "patch", c.vision.patch);
      get(v, "d_model", c.vision.d_model);
      get(v, "layers", c.vision.layers);
      get(v, "n_heads", c.vision.n_heads);
      get(v, "mlp_hidden", c.vision.mlp_hidden);
      get(v, "pool", c.vision.pool);
    }
    if (j.contains("init")) {
      const auto& i = j["init"];
      get(i, "seed", c.init.seed);
      get(i, "scale", c.init.scale);
      get(i, "topics", c.init.topics);
      get(i, "topic_skew", c.init.topic_skew);
      get(i, "zipf_bias", c.init.zipf_bias);
      get(i, "zipf_s", c.init.zipf_s);
    }
    if (j.contains("cache")) {
      const auto& k = j["cache"];
      get(k, "block_size", c.cache.block_size);
      get(k, "num_blocks", c.cache.num_blocks);
      get(k, "max_seqs", c.cache.max_seqs);
      get(k, "ssm_checkpoint_interval", c.cache.ssm_checkpoint_interval);
      get(k, "max_checkpoints", c.cache.max_checkpoints);
      get(k, "prefix_caching", c.cache.prefix_caching);
    }
    if (j.contains("scheduler")) {
      const auto& s = j["scheduler"];
      get(s, "max_batch_tokens", c.scheduler.max_batch_tokens);
      get(s, "prefill_chunk", c.scheduler.prefill_chunk);
    }
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("model config field has the wrong type: ") + e.what());
  }
  c.validate();
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open model config '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return parse_model_config(ss.str());
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

}  // namespace inferscope::engine
