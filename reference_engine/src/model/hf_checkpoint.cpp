// Hugging Face checkpoints -> ModelConfig + Weights (hf_checkpoint.hpp).
//
// [SECTION] config.json   [SECTION] Files   [SECTION] Tensor mapping
#include "inferscope/engine/hf_checkpoint.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <vector>

#include "inferscope/engine/safetensors.hpp"

namespace inferscope::engine {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// [SECTION] config.json
struct ConfigReader {
  const json& j;
  std::string file;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(file + ": " + what);
  }
  bool present(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  template <typename T>
  T get(const char* key) const {
    if (!present(key)) fail(std::string("missing field '") + key + "'");
    try {
      return j[key].get<T>();
    } catch (const std::exception& e) {
      fail(std::string("field '") + key + "' has the wrong type: " + e.what());
    }
  }
  template <typename T>
  T get(const char* key, T fallback) const {
    return present(key) ? get<T>(key) : fallback;
  }
  int32_t positive(const char* key) const {
    const auto v = get<int64_t>(key);
    if (v <= 0 || v > (1 << 30)) fail(std::string("field '") + key + "' must be positive");
    return static_cast<int32_t>(v);
  }
  // One field that transformers spells several ways (a config class's attribute_map, or
  // another family's name for the same thing): the first spelling present; two spellings
  // that disagree are refused rather than silently picking one.
  int32_t positive_any(std::initializer_list<const char*> keys) const {
    const char* found = nullptr;
    int32_t value = 0;
    for (const char* k : keys) {
      if (!present(k)) continue;
      const int32_t v = positive(k);
      if (found && v != value)
        fail(std::string("fields '") + found + "' (" + std::to_string(value) + ") and '" + k +
             "' (" + std::to_string(v) + ") disagree");
      if (!found) found = k, value = v;
    }
    if (!found) {
      std::string names;
      for (const char* k : keys) names += std::string(names.empty() ? "'" : ", '") + k + "'";
      fail("missing field: none of " + names);
    }
    return value;
  }
  void require_false(const char* key) const {
    if (get<bool>(key, false)) fail(std::string("'") + key + "' is not supported by the engine");
  }
};

float rope_theta(const ConfigReader& r, float fallback) {
  // transformers 5 writes rope_parameters {rope_type, rope_theta}; 4.x wrote
  // rope_theta (+ rope_scaling). Only the default (unscaled) RoPE is implemented.
  float theta = r.get<float>("rope_theta", fallback);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!r.present(key)) continue;
    const json& p = r.j[key];
    if (!p.is_object()) r.fail(std::string("'") + key + "' must be an object");
    std::string type = p.value("rope_type", p.value("type", std::string("default")));
    if (type != "default")
      r.fail(std::string(key) + ".rope_type '" + type + "': only the default RoPE is supported");
    if (p.contains("rope_theta") && !p["rope_theta"].is_null())
      theta = p["rope_theta"].get<float>();
    if (p.contains("partial_rotary_factor") && p["partial_rotary_factor"].get<double>() != 1.0)
      r.fail("partial_rotary_factor != 1 is not supported");
  }
  if (r.present("partial_rotary_factor") && r.get<double>("partial_rotary_factor") != 1.0)
    r.fail("partial_rotary_factor != 1 is not supported");
  if (!(theta > 0.0f)) r.fail("rope_theta must be positive");
  return theta;
}

// [SECTION] Files
std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

SafetensorsSet open_checkpoint(const std::string& dir) {
  SafetensorsSet set;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text(index.string()));
    } catch (const json::exception& e) {
      throw std::runtime_error(index.string() + ": not JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw std::runtime_error(index.string() + ": no weight_map");
    std::set<std::string> files;
    for (const auto& [name, file] : j["weight_map"].items()) files.insert(file.get<std::string>());
    for (const auto& f : files) {
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        throw std::runtime_error(index.string() + ": shard name '" + f +
                                 "' is not a plain file name");
      set.add_file((fs::path(dir) / f).string());
    }
    for (const auto& [name, file] : j["weight_map"].items())
      if (!set.has(name) || fs::path(set.at(name).file).filename() != file.get<std::string>())
        throw std::runtime_error(index.string() + ": '" + name + "' is not in its shard " +
                                 file.get<std::string>());
  } else if (fs::exists(single)) {
    set.add_file(single.string());
  } else {
    throw std::runtime_error(dir + ": neither model.safetensors nor model.safetensors.index.json");
  }
  return set;
}

// [SECTION] Tensor mapping
class Filler {
 public:
  Filler(const SafetensorsSet& st, Weights& w) : st_(st), w_(w) {}

  // The first of `names` (each also tried with ".weight") the checkpoint holds; "" if none.
  std::string find(std::initializer_list<std::string> names) const {
    for (const auto& n : names) {
      if (st_.has(n)) return n;
      if (st_.has(n + ".weight")) return n + ".weight";
    }
    return "";
  }
  // Reads `name`, which must have exactly `shape`.
  std::vector<float> read(const std::string& name, std::vector<int64_t> shape) {
    check(name, shape);
    return st_.read_f32(name);
  }
  // `name` must have exactly `shape`; marks it used.
  void check(const std::string& name, const std::vector<int64_t>& shape) {
    const SafetensorsEntry& e = st_.at(name);
    if (e.shape != shape) {
      auto str = [](const std::vector<int64_t>& s) {
        std::string o = "[";
        for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
        return o + "]";
      };
      throw std::runtime_error("checkpoint tensor '" + name + "' has shape " + str(e.shape) +
                               ", config.json implies " + str(shape));
    }
    used_.insert(name);
  }
  const std::vector<int64_t>& shape(const std::string& name) const { return st_.at(name).shape; }
  // rows [first, first + rows) of engine weight `dst` from host fp32.
  void put(const std::string& dst, int64_t first, int64_t rows, const float* data) {
    w_.upload_rows(dst, first, rows, data);
    filled_[dst] += rows;
  }
  // Checkpoint tensor `src` (exactly `shape`, its rows every dimension but the last) into
  // rows [first, ...) of engine weight `dst`. A BF16 tensor goes as bf16 bits through one
  // reused host buffer: into a bf16 weight with no fp32 step (a 7B checkpoint would
  // otherwise cost ~12 host bytes per parameter of fresh, page-faulted buffers).
  void put_tensor(const std::string& src, const std::vector<int64_t>& shape, const std::string& dst,
                  int64_t first) {
    check(src, shape);
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    if (st_.at(src).dtype == "BF16") {
      st_.read_bf16(src, bf16_);
      w_.upload_rows_bf16(dst, first, rows, bf16_.data());
      filled_[dst] += rows;
      return;
    }
    auto v = st_.read_f32(src);
    put(dst, first, rows, v.data());
  }
  void copy(const std::string& src, const std::string& dst, std::vector<int64_t> shape) {
    put_tensor(src, shape, dst, 0);
  }
  void mark_used(const std::string& name) { used_.insert(name); }

  // Every engine weight filled once, every checkpoint tensor used.
  void finish(const HfModel& m) const {
    for (const auto& name : w_.names()) {
      const Tensor& t = w_.get(name);
      auto it = filled_.find(name);
      const int64_t got = it == filled_.end() ? 0 : it->second;
      if (got != t.rows)
        throw std::runtime_error(m.dir + ": engine weight '" + name + "' got " +
                                 std::to_string(got) + " of its " + std::to_string(t.rows) +
                                 " rows from the checkpoint (name mapping incomplete)");
    }
    for (const auto& name : st_.names())
      if (!used_.count(name) && name.find("rotary_emb.inv_freq") == std::string::npos)
        throw std::runtime_error(m.dir + ": checkpoint tensor '" + name +
                                 "' has no place in the engine's " + m.model_type +
                                 " model (unsupported feature or name)");
  }

 private:
  const SafetensorsSet& st_;
  Weights& w_;
  std::set<std::string> used_;
  std::map<std::string, int64_t> filled_;
  std::vector<uint16_t> bf16_;  // put_tensor's read buffer, reused
};

std::string L(int32_t l, const char* what) {
  return "l" + std::to_string(l) + "." + what;
}

// [rows, cols] -> [cols, rows] on the host.
std::vector<float> transposed(const std::vector<float>& a, int64_t rows, int64_t cols) {
  std::vector<float> t(a.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      t[static_cast<size_t>(c * rows + r)] = a[static_cast<size_t>(r * cols + c)];
  return t;
}

void load_experts(Filler& f, const ModelConfig& c, int32_t l, const std::string& p) {
  const int64_t E = c.moe.experts, I = c.moe.expert_hidden, D = c.d_model;
  const std::string gu = L(l, "experts_gu"), down = L(l, "experts_down");
  // transformers 5: the experts fused into 3-D parameters.
  const std::string fused_gu = f.find({p + "experts.gate_up_proj"});
  if (!fused_gu.empty()) {
    const std::string fused_down = f.find({p + "experts.down_proj"});
    if (fused_down.empty())
      throw std::runtime_error("checkpoint has " + fused_gu + " but no down_proj");
    // Stored [E, 2I, D] (gate rows, then up rows: what the engine's experts_gu
    // holds per expert) or transposed [E, D, 2I].
    const auto& s = f.shape(fused_gu);
    const bool t_gu = s.size() == 3 && s[1] == D && s[2] == 2 * I && D != 2 * I;
    const auto& sd = f.shape(fused_down);
    const bool t_d = sd.size() == 3 && sd[1] == I && sd[2] == D && D != I;
    if (!t_gu && !t_d) {
      // Stored as the engine holds them ([E * 2I, D] and [E * D, I] rows): one copy each.
      f.put_tensor(fused_gu, {E, 2 * I, D}, gu, 0);
      f.put_tensor(fused_down, {E, D, I}, down, 0);
      return;
    }
    auto v = f.read(fused_gu,
                    t_gu ? std::vector<int64_t>{E, D, 2 * I} : std::vector<int64_t>{E, 2 * I, D});
    for (int64_t e = 0; e < E; ++e) {
      std::vector<float> blk(v.begin() + e * 2 * I * D, v.begin() + (e + 1) * 2 * I * D);
      if (t_gu) blk = transposed(blk, D, 2 * I);
      f.put(gu, e * 2 * I, 2 * I, blk.data());
    }
    auto d =
        f.read(fused_down, t_d ? std::vector<int64_t>{E, I, D} : std::vector<int64_t>{E, D, I});
    for (int64_t e = 0; e < E; ++e) {
      std::vector<float> blk(d.begin() + e * D * I, d.begin() + (e + 1) * D * I);
      if (t_d) blk = transposed(blk, I, D);
      f.put(down, e * D, D, blk.data());
    }
    return;
  }
  // transformers 4: one module per expert (Mixtral w1 gate / w3 up / w2 down,
  // Qwen3-MoE and OLMoE gate_proj / up_proj / down_proj).
  for (int64_t e = 0; e < E; ++e) {
    const std::string q = p + "experts." + std::to_string(e) + ".";
    const std::string g = f.find({q + "w1", q + "gate_proj"});
    const std::string u = f.find({q + "w3", q + "up_proj"});
    const std::string dn = f.find({q + "w2", q + "down_proj"});
    if (g.empty() || u.empty() || dn.empty())
      throw std::runtime_error("checkpoint has neither " + p + "experts.gate_up_proj nor expert " +
                               std::to_string(e) +
                               "'s w1/w2/w3 (gate_proj/up_proj/down_proj) under " + q);
    f.put_tensor(g, {I, D}, gu, e * 2 * I);
    f.put_tensor(u, {I, D}, gu, e * 2 * I + I);
    f.put_tensor(dn, {D, I}, down, e * D);
  }
}

}  // namespace

bool is_hf_checkpoint(const std::string& dir) {
  return fs::is_directory(dir) && fs::exists(fs::path(dir) / "config.json");
}

HfModel load_hf_model(const std::string& dir) {
  HfModel m;
  m.dir = dir;
  const std::string file = (fs::path(dir) / "config.json").string();
  json j;
  try {
    j = json::parse(read_text(file));
  } catch (const json::exception& e) {
    throw std::runtime_error(file + ": not JSON: " + e.what());
  }
  ConfigReader r{j, file};
  m.model_type = r.get<std::string>("model_type");
  if (m.model_type == "mixtral")
    m.family = HfFamily::kMixtral;
  else if (m.model_type == "qwen3_moe")
    m.family = HfFamily::kQwen3Moe;
  else if (m.model_type == "olmoe")
    m.family = HfFamily::kOlmoe;
  else
    r.fail("model_type '" + m.model_type + "' is not supported (mixtral, qwen3_moe, olmoe)");

  ModelConfig& c = m.config;
  c.name = m.model_type + ":" + fs::path(dir).filename().string();
  c.vocab = r.positive("vocab_size");
  c.d_model = r.positive("hidden_size");
  const int32_t layers = r.positive("num_hidden_layers");
  c.attention.n_heads = r.positive("num_attention_heads");
  c.attention.n_kv_heads =
      r.present("num_key_value_heads") ? r.positive("num_key_value_heads") : c.attention.n_heads;
  c.attention.head_dim =
      r.present("head_dim") ? r.positive("head_dim") : c.d_model / c.attention.n_heads;
  // Without a theta in the file, the transformers config class's default applies.
  c.attention.rope_theta = rope_theta(r, m.family == HfFamily::kMixtral ? 1e6f : 10000.0f);
  c.norm_eps = r.get<float>("rms_norm_eps", 1e-6f);
  const std::string act = r.get<std::string>("hidden_act", "silu");
  if (act != "silu") r.fail("hidden_act '" + act + "': only silu (SwiGLU) is supported");
  r.require_false("attention_bias");
  r.require_false("mlp_bias");
  m.tie_word_embeddings = r.get<bool>("tie_word_embeddings", false);
  m.max_positions = r.positive("max_position_embeddings");

  c.mixers.assign(static_cast<size_t>(layers), 'A');
  c.ffns.assign(static_cast<size_t>(layers), 'M');
  c.vision.enabled = false;
  c.moe.capacity_factor = 0.0f;  // transformers drops nothing
  c.moe.gate = GateFn::kSoftmax;
  c.moe.shared_experts = 0;
  c.moe.routing_bias = false;
  // transformers 5 config classes map names through attribute_map (Qwen3-MoE and
  // Mixtral: num_experts -> num_local_experts, OLMoE the reverse), so which spelling
  // config.json holds depends on the version that wrote it; accept them all.
  const auto experts = [&] {
    return r.positive_any({"num_experts", "num_local_experts", "n_routed_experts"});
  };
  c.moe.top_k = r.positive_any({"num_experts_per_tok", "top_k", "moe_top_k"});
  switch (m.family) {
    case HfFamily::kMixtral:
      c.moe.experts = experts();
      c.moe.expert_hidden = r.positive("intermediate_size");
      c.moe.renormalize = true;
      if (r.present("sliding_window"))
        m.max_positions = std::min<int64_t>(m.max_positions, r.get<int64_t>("sliding_window"));
      break;
    case HfFamily::kQwen3Moe: {
      c.moe.experts = experts();
      c.moe.expert_hidden = r.positive_any({"moe_intermediate_size", "expert_intermediate_size"});
      c.dense_hidden = r.positive("intermediate_size");
      c.moe.renormalize = r.get<bool>("norm_topk_prob", false);
      c.attention.qk_norm = QkNorm::kPerHead;
      if (r.get<bool>("use_sliding_window", false) && r.present("sliding_window"))
        m.max_positions = std::min<int64_t>(m.max_positions, r.get<int64_t>("sliding_window"));
      // A layer is sparse unless listed in mlp_only_layers, and only every
      // decoder_sparse_step-th layer (transformers' Qwen3MoeDecoderLayer).
      const int32_t step = r.present("decoder_sparse_step") ? r.positive("decoder_sparse_step") : 1;
      const auto dense = r.get<std::vector<int32_t>>("mlp_only_layers", {});
      for (int32_t l = 0; l < layers; ++l) {
        const bool listed = std::find(dense.begin(), dense.end(), l) != dense.end();
        if (listed || (l + 1) % step != 0) c.ffns[static_cast<size_t>(l)] = 'D';
      }
      break;
    }
    case HfFamily::kOlmoe:
      c.moe.experts = experts();
      c.moe.expert_hidden = r.positive("intermediate_size");
      c.moe.renormalize = r.get<bool>("norm_topk_prob", false);
      c.attention.qk_norm = QkNorm::kFull;
      if (r.present("clip_qkv")) r.fail("clip_qkv is not supported");
      break;
  }
  // Serving sizes: one sequence; the caller (hf_run) sizes batch and cache.
  c.cache.max_seqs = 1;
  c.cache.prefix_caching = false;
  try {
    c.validate();
  } catch (const std::exception& e) {
    r.fail(e.what());
  }
  const SafetensorsSet st = open_checkpoint(dir);
  m.checkpoint_dtype = st.at("model.embed_tokens.weight").dtype;
  return m;
}

DType hf_gemm_dtype(const HfModel& m, const Backend& backend) {
  return m.checkpoint_dtype == "BF16" && backend.bf16_weights() ? DType::kBF16 : DType::kF32;
}

void load_hf_weights(const HfModel& m, Weights& w) {
  const SafetensorsSet st = open_checkpoint(m.dir);
  Filler f(st, w);
  const ModelConfig& c = m.config;
  const int64_t D = c.d_model, V = c.vocab, H = c.attention.n_heads, KV = c.attention.n_kv_heads,
                hd = c.attention.head_dim;
  f.copy("model.embed_tokens.weight", "embed", {V, D});
  f.copy("model.norm.weight", "norm_f", {D});
  if (st.has("lm_head.weight")) {
    f.copy("lm_head.weight", "head", {V, D});
  } else if (m.tie_word_embeddings) {
    auto v = st.read_f32("model.embed_tokens.weight");
    f.put("head", 0, V, v.data());
  } else {
    throw std::runtime_error(m.dir + ": no lm_head.weight and tie_word_embeddings is false");
  }
  for (int32_t l = 0; l < c.n_layers(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    f.copy(p + "input_layernorm.weight", L(l, "norm1"), {D});
    f.copy(p + "post_attention_layernorm.weight", L(l, "norm2"), {D});
    const std::string a = p + "self_attn.";
    f.put_tensor(a + "q_proj.weight", {H * hd, D}, L(l, "wqkv"), 0);
    f.put_tensor(a + "k_proj.weight", {KV * hd, D}, L(l, "wqkv"), H * hd);
    f.put_tensor(a + "v_proj.weight", {KV * hd, D}, L(l, "wqkv"), (H + KV) * hd);
    f.copy(a + "o_proj.weight", L(l, "wo"), {D, H * hd});
    if (c.attention.qk_norm == QkNorm::kPerHead) {
      f.copy(a + "q_norm.weight", L(l, "q_norm"), {hd});
      f.copy(a + "k_norm.weight", L(l, "k_norm"), {hd});
    } else if (c.attention.qk_norm == QkNorm::kFull) {
      f.copy(a + "q_norm.weight", L(l, "q_norm"), {H * hd});
      f.copy(a + "k_norm.weight", L(l, "k_norm"), {KV * hd});
    }
    if (c.is_moe(l)) {
      // transformers 5 names the block mlp; Mixtral's 4.x checkpoints block_sparse_moe.
      std::string moe = p + "mlp.";
      if (!st.has(moe + "gate.weight") && st.has(p + "block_sparse_moe.gate.weight"))
        moe = p + "block_sparse_moe.";
      f.copy(moe + "gate.weight", L(l, "router"), {c.moe.experts, D});
      load_experts(f, c, l, moe);
    } else {
      const int64_t F = c.dense_hidden;
      f.put_tensor(p + "mlp.gate_proj.weight", {F, D}, L(l, "w_gu"), 0);
      f.put_tensor(p + "mlp.up_proj.weight", {F, D}, L(l, "w_gu"), F);
      f.copy(p + "mlp.down_proj.weight", L(l, "w_down"), {D, F});
    }
  }
  f.finish(m);
}

}  // namespace inferscope::engine
