// The Hugging Face loader's bad-input paths (hf_checkpoint.hpp): every refusal
// names the file, field or tensor at fault. The numerics are checked against
// torch by hf_mixtral_check.py (engine_hf_checkpoint_test) and against
// transformers by scripts/hf-oracle.
#include "inferscope/engine/hf_checkpoint.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/model.hpp"
#include "inferscope/engine/safetensors.hpp"

namespace ie = inferscope::engine;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using Shapes = std::map<std::string, std::vector<int64_t>>;

// A tiny Mixtral in transformers 5's names: D 8, 1 layer, 2 heads of 4 (1 KV head), 2 experts of 4,
// vocab 10.
Shapes mixtral_tensors() {
  const std::string p = "model.layers.0.";
  return {{"model.embed_tokens.weight", {10, 8}},
          {"model.norm.weight", {8}},
          {"lm_head.weight", {10, 8}},
          {p + "input_layernorm.weight", {8}},
          {p + "post_attention_layernorm.weight", {8}},
          {p + "self_attn.q_proj.weight", {8, 8}},
          {p + "self_attn.k_proj.weight", {4, 8}},
          {p + "self_attn.v_proj.weight", {4, 8}},
          {p + "self_attn.o_proj.weight", {8, 8}},
          {p + "mlp.gate.weight", {2, 8}},
          {p + "mlp.experts.gate_up_proj", {2, 8, 8}},
          {p + "mlp.experts.down_proj", {2, 8, 4}}};
}

json mixtral_config() {
  return {{"model_type", "mixtral"},
          {"hidden_size", 8},
          {"num_hidden_layers", 1},
          {"num_attention_heads", 2},
          {"num_key_value_heads", 1},
          {"head_dim", 4},
          {"vocab_size", 10},
          {"num_local_experts", 2},
          {"num_experts_per_tok", 1},
          {"intermediate_size", 4},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 1e6},
          {"max_position_embeddings", 64},
          {"tie_word_embeddings", false}};
}

void write_safetensors(const std::string& path, const Shapes& shapes) {
  json h;
  uint64_t off = 0;
  for (const auto& [name, shape] : shapes) {
    uint64_t n = 4;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    h[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string s = h.dump();
  std::ofstream f(path, std::ios::binary);
  uint64_t len = s.size();
  f.write(reinterpret_cast<const char*>(&len), 8);
  f << s;
  std::vector<float> data(off / 4, 0.5f);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(off));
}

class HfCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = (fs::temp_directory_path() /
           ("inferscope_hf_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name()))
              .string();
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  void write(const json& config, const Shapes& shapes) {
    std::ofstream(dir + "/config.json") << config.dump();
    write_safetensors(dir + "/model.safetensors", shapes);
  }
  // The message of what loading (config + weights into a CPU model) throws.
  std::string load_error() {
    try {
      ie::HfModel m = ie::load_hf_model(dir);
      auto be = ie::create_backend("cpu", {});
      ie::ModelConfig c = m.config;
      ie::Model model(*be, c, [&](ie::Weights& w) { ie::load_hf_weights(m, w); });
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }
  std::string dir;
};

TEST_F(HfCheckpoint, AWellFormedCheckpointLoads) {
  write(mixtral_config(), mixtral_tensors());
  EXPECT_EQ(load_error(), "");
  ie::HfModel m = ie::load_hf_model(dir);
  EXPECT_EQ(m.config.vocab, 10);
  EXPECT_EQ(m.config.moe.capacity_factor, 0.0f);  // transformers drops nothing
  EXPECT_FLOAT_EQ(m.config.attention.rope_theta, 1e6f);
  EXPECT_EQ(m.checkpoint_dtype, "F32");
}

// Qwen3-MoE as transformers 5.17 saves it: Qwen3MoeConfig's attribute_map sends
// num_experts to num_local_experts, so config.json has no 'num_experts' (the first GPU
// run of scripts/hf-oracle failed every qwen3_moe case on exactly that).
json qwen3_config() {
  json c = mixtral_config();
  c["model_type"] = "qwen3_moe";
  c["moe_intermediate_size"] = 4;
  c["intermediate_size"] = 6;  // the dense layers' width; layer 0 is sparse here
  c["norm_topk_prob"] = true;
  c["mlp_only_layers"] = json::array();
  return c;
}

Shapes qwen3_tensors() {
  Shapes s = mixtral_tensors();
  s["model.layers.0.self_attn.q_norm.weight"] = {4};
  s["model.layers.0.self_attn.k_norm.weight"] = {4};
  return s;
}

TEST_F(HfCheckpoint, Qwen3MoeWithNumLocalExpertsLoads) {
  write(qwen3_config(), qwen3_tensors());
  EXPECT_EQ(load_error(), "");
  const ie::HfModel m = ie::load_hf_model(dir);
  EXPECT_EQ(m.config.moe.experts, 2);
  EXPECT_EQ(m.config.moe.expert_hidden, 4);
  EXPECT_EQ(m.config.dense_hidden, 6);
}

// OLMoE normalises the full q and k projections: norms of H * hd and KV * hd.
Shapes olmoe_tensors() {
  Shapes s = mixtral_tensors();
  s["model.layers.0.self_attn.q_norm.weight"] = {8};
  s["model.layers.0.self_attn.k_norm.weight"] = {4};
  return s;
}

// Each spelling of the expert count, alone, gives the same model in every family.
TEST_F(HfCheckpoint, ExpertCountAliases) {
  for (const std::string family : {"mixtral", "qwen3_moe", "olmoe"}) {
    for (const char* key : {"num_experts", "num_local_experts", "n_routed_experts"}) {
      json c = family == "qwen3_moe" ? qwen3_config() : mixtral_config();
      c["model_type"] = family;
      c.erase("num_local_experts");
      c[key] = 2;
      write(c, family == "mixtral"     ? mixtral_tensors()
               : family == "qwen3_moe" ? qwen3_tensors()
                                       : olmoe_tensors());
      EXPECT_EQ(load_error(), "") << family << " " << key;
      EXPECT_EQ(ie::load_hf_model(dir).config.moe.experts, 2) << family << " " << key;
    }
  }
}

TEST_F(HfCheckpoint, TopKAliases) {
  for (const char* key : {"num_experts_per_tok", "top_k", "moe_top_k"}) {
    json c = mixtral_config();
    c.erase("num_experts_per_tok");
    c[key] = 2;
    write(c, mixtral_tensors());
    EXPECT_EQ(load_error(), "") << key;
    EXPECT_EQ(ie::load_hf_model(dir).config.moe.top_k, 2) << key;
  }
}

TEST_F(HfCheckpoint, ExpertWidthAliases) {
  for (const char* key : {"moe_intermediate_size", "expert_intermediate_size"}) {
    json c = qwen3_config();
    c.erase("moe_intermediate_size");
    c[key] = 4;
    write(c, qwen3_tensors());
    EXPECT_EQ(load_error(), "") << key;
    EXPECT_EQ(ie::load_hf_model(dir).config.moe.expert_hidden, 4) << key;
  }
}

TEST_F(HfCheckpoint, DisagreeingAliasesAreRefused) {
  json c = mixtral_config();
  c["num_experts"] = 3;  // num_local_experts is 2
  write(c, mixtral_tensors());
  const std::string e = load_error();
  EXPECT_NE(e.find("'num_experts' (3) and 'num_local_experts' (2) disagree"), std::string::npos)
      << e;
}

TEST_F(HfCheckpoint, MissingExpertCountNamesEverySpelling) {
  json c = mixtral_config();
  c.erase("num_local_experts");
  c["num_experts"] = nullptr;  // null counts as absent, as transformers writes unset fields
  write(c, mixtral_tensors());
  const std::string e = load_error();
  EXPECT_NE(e.find("none of 'num_experts', 'num_local_experts', 'n_routed_experts'"),
            std::string::npos)
      << e;
}

TEST_F(HfCheckpoint, UnknownModelTypeIsNamed) {
  json c = mixtral_config();
  c["model_type"] = "llama";
  write(c, mixtral_tensors());
  EXPECT_NE(load_error().find("model_type 'llama' is not supported"), std::string::npos);
}

TEST_F(HfCheckpoint, ScaledRopeIsRefused) {
  json c = mixtral_config();
  c["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}};
  write(c, mixtral_tensors());
  EXPECT_NE(load_error().find("rope_type 'yarn'"), std::string::npos) << load_error();
}

TEST_F(HfCheckpoint, MissingTensorIsNamed) {
  Shapes s = mixtral_tensors();
  s.erase("model.layers.0.self_attn.k_proj.weight");
  write(mixtral_config(), s);
  EXPECT_NE(load_error().find("no tensor 'model.layers.0.self_attn.k_proj.weight'"),
            std::string::npos)
      << load_error();
}

TEST_F(HfCheckpoint, WrongShapeIsNamedWithBothShapes) {
  Shapes s = mixtral_tensors();
  s["model.layers.0.mlp.experts.down_proj"] = {2, 8, 5};
  write(mixtral_config(), s);
  const std::string e = load_error();
  EXPECT_NE(e.find("'model.layers.0.mlp.experts.down_proj' has shape [2, 8, 5]"), std::string::npos)
      << e;
  EXPECT_NE(e.find("[2, 8, 4]"), std::string::npos) << e;
}

TEST_F(HfCheckpoint, UnusedTensorIsRefusedNotIgnored) {
  Shapes s = mixtral_tensors();
  s["model.layers.0.self_attn.q_proj.bias"] = {8};
  write(mixtral_config(), s);
  EXPECT_NE(load_error().find("'model.layers.0.self_attn.q_proj.bias' has no place"),
            std::string::npos)
      << load_error();
}

TEST_F(HfCheckpoint, TruncatedFileIsRefused) {
  write(mixtral_config(), mixtral_tensors());
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 16);
  EXPECT_NE(load_error().find("data_offsets outside the file"), std::string::npos) << load_error();
}

TEST_F(HfCheckpoint, CpuBackendTakesNoBf16Weights) {
  auto be = ie::create_backend("cpu", {});
  ie::ModelConfig c = ie::load_model_config(INFERSCOPE_ENGINE_MODELS "/tiny.json");
  try {
    ie::Weights w(*be, c, {}, ie::DType::kBF16);
    FAIL() << "expected a refusal";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("takes no bf16 weights"), std::string::npos) << e.what();
  }
}

TEST_F(HfCheckpoint, ForwardGivesTheCheckpointVocabularyAndServingRefusesIt) {
  write(mixtral_config(), mixtral_tensors());
  ie::HfModel m = ie::load_hf_model(dir);
  auto be = ie::create_backend("cpu", {});
  ie::Model model(*be, m.config, [&](ie::Weights& w) { ie::load_hf_weights(m, w); });
  std::vector<float> logits;
  ie::StepBatch b;
  b.clear();
  const std::vector<int32_t> toks = {1, 9, 3}, blocks = {0};
  b.add_chunk(toks, 0, 0, blocks, m.config.cache.block_size, true);
  model.forward(b, logits);
  EXPECT_EQ(logits.size(), 10u);  // one row of the checkpoint's vocabulary
  // The byte-sampling scheduler cannot serve it: a clear refusal, not bad ids.
  try {
    ie::Engine engine(model, nullptr, {});
    FAIL() << "expected a refusal";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("this model has vocab 10"), std::string::npos) << e.what();
  }
}

TEST(Bf16Bits, RoundToNearestEvenLikeTorch) {
  EXPECT_EQ(ie::f32_to_bf16_bits(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
  EXPECT_EQ(ie::f32_to_bf16_bits(1.00390625f), 0x3f80);
  EXPECT_EQ(ie::f32_to_bf16_bits(1.01171875f), 0x3f82);  // halfway, rounds up to even
  EXPECT_FLOAT_EQ(ie::bf16_bits_to_f32(0xc040), -3.0f);
  EXPECT_FLOAT_EQ(ie::f16_bits_to_f32(0x3c00), 1.0f);
  EXPECT_FLOAT_EQ(ie::f16_bits_to_f32(0xc000), -2.0f);
}

}  // namespace
