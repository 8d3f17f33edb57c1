// End-to-end serving behaviour on the tiny model: prefix-cache hits and SSM
// checkpoint restores give the cold run's logits, batching/chunking does not
// change results, seeds make runs reproducible, weights round-trip through
// safetensors, and the skewed workload makes the topic's expert hot.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <random>

#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/summary.hpp"
#include "inferscope/engine/weights.hpp"
#include "inferscope/engine/workload.hpp"

namespace ie = inferscope::engine;

namespace {

ie::ModelConfig tiny() {
  return ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/tiny.json");
}

std::vector<int32_t> text(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = 33 + static_cast<int32_t>(rng() % 94);
  return t;
}

ie::Request request(uint64_t id, std::vector<int32_t> prompt, int new_tokens = 4) {
  ie::Request r;
  r.id = id;
  r.text = std::move(prompt);
  r.max_new_tokens = new_tokens;
  return r;
}

void expect_logits_near(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  float worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  EXPECT_LT(worst, 2e-4f);
}

struct EngineRun {
  std::unique_ptr<ie::Backend> be = ie::create_cpu_backend();
  std::unique_ptr<ie::Model> model;
  std::unique_ptr<ie::Engine> engine;
  explicit EngineRun(const ie::ModelConfig& c) {
    model = std::make_unique<ie::Model>(*be, c);
    engine = std::make_unique<ie::Engine>(*model, nullptr, ie::EngineOptions{true});
  }
  ie::RequestResult serve(ie::Request r) {
    engine->submit(std::move(r));
    engine->run_to_completion();
    auto done = engine->take_finished();
    EXPECT_EQ(done.size(), 1u);
    return done.at(0);
  }
};

TEST(Serving, PrefixHitWithSsmCheckpointGivesColdLogits) {
  ie::ModelConfig c = tiny();  // hybrid S/A/S, block 4, checkpoints every 8 tokens
  ASSERT_TRUE(c.has_ssm() && c.has_attention());
  auto prompt = text(37, 1);  // BOS + 37 = 38 positions: 9 full blocks
  EngineRun cold(c);
  auto a = cold.serve(request(1, prompt));
  EXPECT_EQ(a.event.cached_tokens, 0u);

  EngineRun warm(c);
  auto other = text(30, 2);
  warm.serve(request(1, other));  // unrelated traffic first
  auto b1 = warm.serve(request(2, prompt));
  auto b2 = warm.serve(request(3, prompt));  // now the prefix is cached
  // Reusable prefix: the largest checkpoint boundary (multiple of 8) with at
  // most prompt-1 positions = 32 tokens.
  EXPECT_EQ(b2.event.cached_tokens, 32u);
  EXPECT_EQ(warm.engine->stats().checkpoints_restored, 1u);
  EXPECT_EQ(a.output, b1.output);
  EXPECT_EQ(a.output, b2.output);
  expect_logits_near(a.logits.at(0), b2.logits.at(0));
}

TEST(Serving, SsmLayersCannotReusePrefixWithoutCheckpoints) {
  ie::ModelConfig c = tiny();
  c.cache.ssm_checkpoint_interval = 0;
  auto prompt = text(37, 1);
  EngineRun run(c);
  auto a = run.serve(request(1, prompt));
  auto b = run.serve(request(2, prompt));
  const auto& st = run.engine->stats();
  EXPECT_EQ(b.event.cached_tokens, 0u);  // attention blocks are there, the SSM state is not
  EXPECT_EQ(st.attention_hit, 36u);      // 9 full blocks found for the second request
  EXPECT_EQ(st.ssm_hit, 0u);
  EXPECT_EQ(a.output, b.output);
}

TEST(Serving, AttentionOnlyModelReusesPrefixBlocks) {
  ie::ModelConfig c = tiny();
  c.mixers = "AAA";
  c.cache.ssm_checkpoint_interval = 0;
  auto prompt = text(37, 1);
  EngineRun run(c);
  auto a = run.serve(request(1, prompt));
  auto b = run.serve(request(2, prompt));
  EXPECT_EQ(b.event.cached_tokens, 36u);  // 9 blocks, all usable (prompt has 38 positions)
  EXPECT_EQ(a.output, b.output);
  expect_logits_near(a.logits.at(0), b.logits.at(0));
}

TEST(Serving, BatchingAndChunkingDoNotChangeResults) {
  // Expert capacity depends on which tokens share a step (that is real MoE
  // behaviour: drops are batch-dependent), so capacity is off here.
  ie::ModelConfig c = tiny();
  c.cache.prefix_caching = false;
  c.moe.capacity_factor = 0.0f;
  std::vector<std::vector<int32_t>> prompts = {text(25, 3), text(9, 4), text(41, 5)};
  std::vector<ie::RequestResult> alone;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EngineRun r(c);
    alone.push_back(r.serve(request(i + 1, prompts[i], 6)));
  }
  c.scheduler.prefill_chunk = 5;  // odd chunks, mixed with other sequences' decodes
  EngineRun batched(c);
  for (size_t i = 0; i < prompts.size(); ++i) batched.engine->submit(request(i + 1, prompts[i], 6));
  batched.engine->run_to_completion();
  auto done = batched.engine->take_finished();
  ASSERT_EQ(done.size(), prompts.size());
  for (const auto& d : done) {
    const auto& ref = alone.at(d.id - 1);
    EXPECT_EQ(d.output, ref.output) << "request " << d.id;
    expect_logits_near(d.logits.at(0), ref.logits.at(0));
  }
}

std::vector<std::vector<int32_t>> sampled_outputs(uint64_t seed, int n) {
  ie::ModelConfig c = tiny();
  EngineRun run(c);
  ie::WorkloadSpec spec = ie::workload_by_name("skewed-multimodal");
  spec.temperature = 0.9f;
  spec.prompt_mean = 12;
  spec.output_mean = 6;
  ie::WorkloadGenerator gen(spec, c, seed);
  double t;
  for (int i = 0; i < n; ++i) run.engine->submit(gen.next(&t));
  run.engine->run_to_completion();
  auto done = run.engine->take_finished();
  std::sort(done.begin(), done.end(), [](auto& a, auto& b) { return a.id < b.id; });
  std::vector<std::vector<int32_t>> out;
  for (auto& d : done) out.push_back(d.output);
  return out;
}

TEST(Serving, SameSeedSameTokens) {
  auto a = sampled_outputs(11, 6), b = sampled_outputs(11, 6), c = sampled_outputs(12, 6);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(Serving, ImagesRunTheEncoderAndChangeTheOutput) {
  ie::ModelConfig c = tiny();
  EngineRun run(c);
  auto prompt = text(10, 9);
  auto plain = run.serve(request(1, prompt));
  auto r = request(2, prompt);
  r.image = ie::synthetic_image(c.vision.image_size, 1, 5);
  auto with_image = run.serve(r);
  EXPECT_EQ(with_image.event.image_tokens, uint32_t(c.vision.tokens()));
  EXPECT_EQ(with_image.event.prompt_tokens,
            plain.event.prompt_tokens + uint32_t(c.vision.tokens()));
  EXPECT_GT(with_image.encoder_ns, 0);
  EXPECT_NE(plain.logits.at(0), with_image.logits.at(0));
}

TEST(Serving, SafetensorsRoundTripKeepsLogits) {
  ie::ModelConfig c = tiny();
  auto path = std::filesystem::temp_directory_path() /
              ("engine_weights_" + std::to_string(::getpid()) + ".safetensors");
  EngineRun a(c);
  a.model->weights().save(path.string());
  auto prompt = text(12, 4);
  auto ra = a.serve(request(1, prompt));
  c.init.seed = 999;  // a different init, then overwritten by the file
  auto be = ie::create_cpu_backend();
  ie::Model loaded(*be, c, path.string());
  ie::Engine e(loaded, nullptr, ie::EngineOptions{true});
  e.submit(request(1, prompt));
  e.run_to_completion();
  auto rb = e.take_finished().at(0);
  std::filesystem::remove(path);
  EXPECT_EQ(ra.output, rb.output);
  expect_logits_near(ra.logits.at(0), rb.logits.at(0));
}

TEST(Serving, SafetensorsRejectsAMismatchedModel) {
  ie::ModelConfig c = tiny();
  auto path = std::filesystem::temp_directory_path() /
              ("engine_bad_" + std::to_string(::getpid()) + ".safetensors");
  {
    auto be = ie::create_cpu_backend();
    ie::Model m(*be, c);
    m.weights().save(path.string());
  }
  c.d_model = 48;
  auto be = ie::create_cpu_backend();
  EXPECT_THROW(ie::Model(*be, c, path.string()), std::runtime_error);
  std::filesystem::remove(path);
}

TEST(Serving, SkewedWorkloadMakesTheDominantTopicsExpertHot) {
  ie::ModelConfig c = tiny();
  EngineRun run(c);
  ie::WorkloadSpec spec = ie::workload_by_name("text");
  spec.topic_period = 1e9;  // topic 0 dominates the whole run
  spec.dominant_share = 1.0;
  spec.system_prompt_fraction = 0.0;
  spec.prompt_mean = 24;
  spec.output_mean = 2;
  ie::WorkloadGenerator gen(spec, c, 5);
  double t;
  for (int i = 0; i < 12; ++i) run.engine->submit(gen.next(&t));
  run.engine->run_to_completion();
  auto results = run.engine->take_finished();
  auto summary = ie::make_summary(c, run.model->footprint(), run.engine->stats(), results, 1.0);
  for (const auto& layer : summary["moe_layers"]) {
    int l = layer["layer"].get<int>();
    int top = layer["top_experts"][0]["expert"].get<int>();
    EXPECT_EQ(top, ie::topic_hot_expert(c, l, 0)) << "layer " << l;
    EXPECT_GT(layer["top_experts"][0]["utilization"].get<double>(), 1.5) << "layer " << l;
  }
  EXPECT_FALSE(summary["hot_experts"].empty());
}

TEST(Config, BadFieldsGiveClearErrors) {
  EXPECT_THROW(ie::parse_model_config("{"), std::runtime_error);
  try {
    ie::parse_model_config(R"({"layers": {"mixers": "AX", "ffns": "DD"}})");
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("mixers"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ie::parse_model_config(R"({"moe": {"gate": "relu"}})"), std::invalid_argument);
  EXPECT_THROW(ie::parse_model_config(R"({"d_model": "big"})"), std::runtime_error);
}

}  // namespace
