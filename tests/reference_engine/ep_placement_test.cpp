// --ep-placement: a non-contiguous expert placement relabels the experts per
// layer (router rows, routing bias and expert stacks permuted at load time).
// Two ranks (threads, host communicator) with a shuffled placement, including
// a per-layer override, must produce the single-rank model's logits, and the
// per-expert counts they report must be in the model's own (logical) ids,
// equal to the single-rank counts. Bad placement files give clear errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>

#include "ep_test_util.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/model.hpp"
#include "inferscope/engine/placement_file.hpp"

namespace ie = inferscope::engine;
using inferscope::engine::test::run_ranks;
using inferscope::engine::test::TempDir;
namespace fs = std::filesystem;

namespace {

// tiny.json ("MDM": MoE layers 0 and 2, routing bias on) with 8 experts, so a
// 2-rank shuffle is not just a swap of halves.
ie::ModelConfig config() {
  ie::ModelConfig c = ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/tiny.json");
  c.moe.experts = 8;
  return c;
}

// Default map: rank 0 holds {1, 3, 4, 7}; layer 2 overrides: rank 0 holds {0, 1, 5, 7}.
const char* kShuffled = R"({"ranks": 2, "expert_to_rank": [1, 0, 1, 0, 0, 1, 1, 0],
  "layers": {"2": [[0], [0], [1], [1], [1], [0], [1], [0]]}})";

struct Counts {
  std::map<int32_t, std::vector<uint32_t>> routed;
  std::map<int32_t, std::vector<int32_t>> kept;
};

class CountObserver : public ie::ForwardObserver {
 public:
  Counts counts;
  void layer_begin(int32_t) override {}
  void layer_end(int32_t) override {}
  void moe_routed(int32_t layer, const ie::RouteCounts& c, int32_t) override {
    counts.routed[layer] = c.routed;
    counts.kept[layer] = c.kept;
  }
};

// A prompt of `n` bytes (different per rank), one prefill chunk.
std::vector<int32_t> prompt(int rank, int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(33 + (i * 7 + rank * 13) % 90);
  return t;
}

struct Result {
  std::vector<float> logits;
  Counts counts;
};

Result forward_prompt(ie::Model& model, const std::vector<int32_t>& tokens) {
  const int32_t bs = model.config().cache.block_size;
  std::vector<int32_t> blocks;
  for (int32_t b = 0; b * bs < static_cast<int32_t>(tokens.size()); ++b) blocks.push_back(b);
  model.clear_state(0);
  ie::StepBatch batch;
  batch.add_chunk(tokens, 0, 0, blocks, bs, true);
  CountObserver obs;
  Result r;
  model.forward(batch, r.logits, &obs);
  r.counts = obs.counts;
  return r;
}

std::vector<float> download(ie::Model& m, const std::string& name) {
  const ie::Tensor& t = m.weights().get(name);
  std::vector<float> v(static_cast<size_t>(t.elements()));
  m.backend().download(t, v.data());
  return v;
}

}  // namespace

TEST(EpPlacement, ShuffledPlacementMatchesSingleRankInLogicalIds) {
  const ie::ModelConfig c = config();
  const int n_tokens = 19;
  std::vector<Result> single(2);
  std::vector<float> single_gu0, single_bias2;
  {
    auto be = ie::create_cpu_backend({1, 0});
    ie::Model model(*be, c);
    for (int r = 0; r < 2; ++r)
      single[static_cast<size_t>(r)] = forward_prompt(model, prompt(r, n_tokens));
    single_gu0 = download(model, "l0.experts_gu");
    single_bias2 = download(model, "l2.router_bias");
  }
  TempDir dir{"ep-placement"};
  std::vector<Result> ep(2);
  std::vector<std::vector<float>> ep_gu0(2), ep_bias2(2);
  run_ranks(2, [&](int rank) {
    auto be = ie::create_cpu_backend({1, 0});
    ie::CommOptions co;
    co.rank = rank;
    co.size = 2;
    co.rendezvous_dir = dir.path.string();
    co.timeout = std::chrono::milliseconds(20000);
    auto comm = ie::create_communicator("host", *be, co);
    ie::Model model(*be, c, "", ie::parse_expert_placement(kShuffled, c, 2, rank));
    model.attach_expert_parallel(*comm);
    ep[static_cast<size_t>(rank)] = forward_prompt(model, prompt(rank, n_tokens));
    ep_gu0[static_cast<size_t>(rank)] = download(model, "l0.experts_gu");
    ep_bias2[static_cast<size_t>(rank)] = download(model, "l2.router_bias");
  });

  // The shards hold the file's experts: rank 0 of layer 0 = logical {1, 3, 4, 7}.
  const size_t block = single_gu0.size() / 8;
  const std::vector<std::vector<int>> held = {{1, 3, 4, 7}, {0, 2, 5, 6}};
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(ep_gu0[static_cast<size_t>(r)].size(), 4 * block);
    for (size_t j = 0; j < 4; ++j)
      for (size_t i = 0; i < block; i += 97)
        ASSERT_EQ(ep_gu0[static_cast<size_t>(r)][j * block + i],
                  single_gu0[static_cast<size_t>(held[static_cast<size_t>(r)][j]) * block + i])
            << "rank " << r << " slot " << j;
  }
  // Layer 2's override: the bias is in slot order {0, 1, 5, 7, 2, 3, 4, 6}.
  const std::vector<int> slots2 = {0, 1, 5, 7, 2, 3, 4, 6};
  for (size_t s = 0; s < 8; ++s)
    EXPECT_EQ(ep_bias2[0][s], single_bias2[static_cast<size_t>(slots2[s])]) << s;

  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const Result& want = single[static_cast<size_t>(r)];
    const Result& got = ep[static_cast<size_t>(r)];
    ASSERT_EQ(got.logits.size(), want.logits.size());
    for (size_t i = 0; i < got.logits.size(); ++i)
      ASSERT_NEAR(got.logits[i], want.logits[i], 1e-4f * (1.0f + std::abs(want.logits[i]))) << i;
    ASSERT_EQ(got.counts.routed.size(), 2u);  // MoE layers 0 and 2
    for (const auto& [layer, routed] : want.counts.routed) {
      EXPECT_EQ(got.counts.routed.at(layer), routed) << "layer " << layer;
      EXPECT_EQ(got.counts.kept.at(layer), want.counts.kept.at(layer)) << "layer " << layer;
    }
  }
  // The counts are not trivially uniform: the check above can tell ids apart.
  const auto& r0 = single[0].counts.routed.at(0);
  EXPECT_NE(*std::max_element(r0.begin(), r0.end()), *std::min_element(r0.begin(), r0.end()));
}

TEST(EpPlacement, HelloMapIsTheDefaultMapAndContiguousIsIdentity) {
  const ie::ModelConfig c = config();
  const auto p = ie::parse_expert_placement(kShuffled, c, 2, 1);
  EXPECT_EQ(p.expert_to_rank(), (std::vector<uint32_t>{1, 0, 1, 0, 0, 1, 1, 0}));
  ASSERT_NE(p.relabel(0), nullptr);
  EXPECT_EQ(*p.relabel(0), (std::vector<int32_t>{1, 3, 4, 7, 0, 2, 5, 6}));
  EXPECT_EQ(*p.relabel(2), (std::vector<int32_t>{0, 1, 5, 7, 2, 3, 4, 6}));
  EXPECT_EQ(p.relabel(1), nullptr);  // dense layer
  const auto contiguous = ie::parse_expert_placement(
      R"({"expert_to_ranks": [[0],[0],[0],[0],[1],[1],[1],[1]]})", c, 2, 0);
  EXPECT_EQ(contiguous.relabel(0), nullptr);
  EXPECT_EQ(contiguous.relabel(2), nullptr);
  // One rank: checked, not applied.
  const auto one = ie::parse_expert_placement(kShuffled, c, 1, 0);
  EXPECT_EQ(one.ranks, 1);
  EXPECT_EQ(one.relabel(0), nullptr);
}

TEST(EpPlacement, BadFilesGiveClearErrors) {
  const ie::ModelConfig c = config();
  auto error_of = [&](const std::string& text, int32_t ranks = 2) {
    try {
      ie::parse_expert_placement(text, c, ranks, 0, "p.json");
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  auto expect_error = [&](const std::string& text, const std::string& part, int32_t ranks = 2) {
    const std::string e = error_of(text, ranks);
    EXPECT_NE(e.find(part), std::string::npos) << "for " << text << ": " << e;
    EXPECT_NE(e.find("p.json"), std::string::npos) << e;
  };
  expect_error(R"({"expert_to_rank": [0, 0, 0, 0, 0, 1, 1, 1]})", "rank 0 holds 5 experts");
  expect_error(R"({"expert_to_ranks": [[0, 1], [0], [0], [0], [1], [1], [1], [1]]})",
               "not supported by the engine");
  expect_error(R"({"expert_to_rank": [0, 0, 1, 1]})", "has 4 experts, the model has 8");
  expect_error(R"({"expert_to_rank": [0, 0, 1, 1, 2, 2, 3, 3]})",
               "placement is for 4 ranks, --ep-size is 2");
  expect_error(R"({"ranks": 2, "expert_to_rank": [0, 0, 1, 1, 2, 2, 3, 3]})", "is on rank 2");
  expect_error(
      R"({"expert_to_rank": [0, 0, 0, 0, 1, 1, 1, 1], "layers": {"1": [0, 0, 0, 0, 1, 1, 1, 1]}})",
      "not a MoE layer");
  expect_error(
      R"({"expert_to_rank": [0, 0, 0, 0, 1, 1, 1, 1], "layers": {"2": [0, 0, 0, 1, 1, 1, 1, 1]}})",
      "layers[\"2\"]: rank 0 holds 3");
  expect_error(R"({"expert_to_rank": [0, 0, 0, 0, 1, 1, 1, 1], "expert_to_ranks": []})",
               "exactly one of");
  expect_error(R"({"expert_to_rank": [0, "a", 0, 0, 1, 1, 1, 1]})", "is not a rank");
  expect_error("{nope", "not JSON");
  expect_error(R"({"ranks": 3, "expert_to_rank": [0, 0, 1, 1, 2, 2, 0, 1]})", "do not divide");
  // Bad files fail with one rank too.
  expect_error(R"({"expert_to_rank": [0, 0, 0, 0, 0, 1, 1, 1]})", "rank 0 holds 5 experts", 1);
  EXPECT_THROW(ie::load_expert_placement("/nonexistent/placement.json", c, 2, 0),
               std::invalid_argument);
}
