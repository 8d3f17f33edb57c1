// Issue 18 part 4, asynchronous routing: the MoE layers keep their routing on
// the device and the step's counts reach the host once, with the logits. On
// the three small models (and with a tight capacity, so drops and reroutes
// happen) the asynchronous path must give the synchronous path's logits and
// per-layer routed / kept / dropped / rerouted counts exactly, reported in the
// same order, and wait once per step where the synchronous path waits once
// per MoE layer plus once for the logits.
// The CUDA-graph path pads a decode step to a bucket of 1, 2, 4, ... rows; on
// the CPU (no graphs) the padded step runs eagerly, which checks what the
// padding must not change: the real rows' logits and every count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/layers.hpp"
#include "inferscope/engine/model.hpp"

namespace ie = inferscope::engine;

namespace {

struct Routed {
  int32_t layer = 0, tokens = 0;
  std::vector<uint32_t> routed;
  std::vector<int32_t> kept;
  uint32_t dropped = 0, rerouted = 0;
  bool operator==(const Routed&) const = default;
};

class Recorder : public ie::ForwardObserver {
 public:
  std::vector<Routed> calls;
  void layer_begin(int32_t) override {}
  void layer_end(int32_t) override {}
  void moe_routed(int32_t layer, const ie::RouteCounts& c, int32_t tokens) override {
    calls.push_back({layer, tokens, c.routed, c.kept, c.dropped, c.rerouted});
  }
};

enum class Path { kSync, kAsync, kGraphs };

// One step's results on one path.
struct Step {
  std::vector<float> logits;
  std::vector<Routed> routed;
  uint64_t waits = 0;  // Backend::host_syncs() during the step
};

// Three sequences: a prefill of 5 / 9 / 13 tokens (logits for all), a second
// prefill chunk of sequence 0 that wants no logits (the R == 0 path), then
// decode steps of one row per sequence.
std::vector<Step> run(const ie::ModelConfig& c, Path path, int32_t S = 3,
                      uint64_t* graph_steps = nullptr) {
  auto be = ie::create_cpu_backend();
  ie::Model model(*be, c);
  model.set_async_routing(path != Path::kSync);
  if (path == Path::kGraphs) model.set_step_graphs(true);
  EXPECT_EQ(model.async_routing(), path != Path::kSync);
  const int32_t bs = c.cache.block_size, per_seq = 8;
  std::vector<std::vector<int32_t>> blocks(static_cast<size_t>(S));
  for (int32_t s = 0; s < S; ++s) {
    for (int32_t b = 0; b < per_seq; ++b) blocks[s].push_back(s * per_seq + b);
    model.clear_state(s);
  }
  std::vector<int32_t> len = {5, 9, 13, 6, 7};
  len.resize(static_cast<size_t>(S));
  std::vector<Step> steps;
  auto forward = [&](const ie::StepBatch& batch) {
    Recorder rec;
    Step st;
    const uint64_t before = be->host_syncs();
    model.forward(batch, st.logits, &rec);
    st.waits = be->host_syncs() - before;
    st.routed = rec.calls;
    steps.push_back(std::move(st));
  };
  auto tokens = [](int32_t seq, int32_t first, int32_t n) {
    std::vector<int32_t> t;
    for (int32_t i = 0; i < n; ++i) t.push_back(33 + ((first + i) * 7 + seq * 13) % 90);
    return t;
  };
  ie::StepBatch batch;
  batch.clear();
  for (int32_t s = 0; s < S; ++s) batch.add_chunk(tokens(s, 0, len[s]), 0, s, blocks[s], bs, true);
  forward(batch);
  batch.clear();
  batch.add_chunk(tokens(0, len[0], 3), len[0], 0, blocks[0], bs, false);
  forward(batch);
  len[0] += 3;
  for (int step = 0; step < 5; ++step) {
    batch.clear();
    for (int32_t s = 0; s < S; ++s)
      batch.add_chunk(tokens(s, len[s], 1), len[s], s, blocks[s], bs, true);
    forward(batch);
    for (auto& l : len) ++l;
  }
  if (graph_steps) *graph_steps = model.graph_steps();
  return steps;
}

int moe_layers(const ie::ModelConfig& c) {
  int n = 0;
  for (int32_t l = 0; l < c.n_layers(); ++l) n += c.is_moe(l) ? 1 : 0;
  return n;
}

struct Case {
  const char* model;
  float capacity_factor;  // < 0: the model's own
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.model << " capacity factor " << c.capacity_factor;
}

class AsyncRouting : public ::testing::TestWithParam<Case> {};

TEST_P(AsyncRouting, EqualsTheSynchronousPathWithOneWaitPerStep) {
  ie::ModelConfig c =
      ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/" + GetParam().model);
  if (GetParam().capacity_factor >= 0.0f) c.moe.capacity_factor = GetParam().capacity_factor;
  const std::vector<Step> sync = run(c, Path::kSync), async = run(c, Path::kAsync);
  ASSERT_EQ(sync.size(), async.size());
  const int n_moe = moe_layers(c);
  ASSERT_GT(n_moe, 0);
  uint64_t lost = 0;  // dropped + rerouted over the run: capacity must have acted
  for (size_t i = 0; i < sync.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i));
    EXPECT_EQ(sync[i].logits, async[i].logits);  // exact: the same ops in the same order
    ASSERT_EQ(sync[i].routed.size(), static_cast<size_t>(n_moe));
    EXPECT_EQ(sync[i].routed, async[i].routed);
    for (const Routed& r : async[i].routed) {
      uint64_t routed = 0, kept = 0;
      for (uint32_t v : r.routed) routed += v;
      for (int32_t v : r.kept) kept += static_cast<uint64_t>(v);
      EXPECT_EQ(routed, kept + r.dropped) << "layer " << r.layer;
      lost += r.dropped + r.rerouted;
    }
    const bool has_logits = !sync[i].logits.empty();
    EXPECT_EQ(async[i].waits, 1u);  // the logits download, or the counts alone without logits
    EXPECT_EQ(sync[i].waits, static_cast<uint64_t>(n_moe) + (has_logits ? 1 : 0));
  }
  if (c.moe.capacity_factor > 0.0f && c.moe.capacity_factor < 1.0f) {
    EXPECT_GT(lost, 0u) << "a tight capacity must drop or reroute";
  }
}

INSTANTIATE_TEST_SUITE_P(SmallModels, AsyncRouting,
                         ::testing::Values(Case{"tiny.json", -1.0f}, Case{"demo.json", -1.0f},
                                           Case{"hybrid-moe.json", -1.0f}, Case{"tiny.json", 0.5f},
                                           Case{"hybrid-moe.json", 0.5f}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           std::string n = i.param.model;
                           n = n.substr(0, n.find('.'));
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n + (i.param.capacity_factor >= 0.0f ? "_tight" : "_own");
                         });

// The padded decode steps of the graph path (5 rows -> bucket 8; the tiny
// model also 3 -> 4):
// the real rows' logits equal the unpadded step's within fp32 GEMM rounding
// (the GEMMs see more rows), counts exactly, one wait per step.
TEST_P(AsyncRouting, PaddedGraphStepsChangeNoLogitsAndNoCounts) {
  ie::ModelConfig c =
      ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/" + GetParam().model);
  if (GetParam().capacity_factor >= 0.0f) c.moe.capacity_factor = GetParam().capacity_factor;
  const bool tiny = std::string(GetParam().model) == "tiny.json";
  for (int32_t S : {5, 3}) {
    if (S == 3 && !tiny) break;  // the big models once: each run builds two models
    SCOPED_TRACE("sequences " + std::to_string(S));
    uint64_t graph_steps = 0;
    const std::vector<Step> plain = run(c, Path::kAsync, S),
                            padded = run(c, Path::kGraphs, S, &graph_steps);
    EXPECT_EQ(graph_steps, 5u);  // the decode steps; prefill and the chunk without logits: eager
    ASSERT_EQ(plain.size(), padded.size());
    for (size_t i = 0; i < plain.size(); ++i) {
      SCOPED_TRACE("step " + std::to_string(i));
      EXPECT_EQ(plain[i].routed, padded[i].routed);
      ASSERT_EQ(plain[i].logits.size(), padded[i].logits.size());
      double num = 0, den = 0;
      for (size_t j = 0; j < plain[i].logits.size(); ++j) {
        const double d = double(plain[i].logits[j]) - padded[i].logits[j];
        num += d * d;
        den += double(plain[i].logits[j]) * plain[i].logits[j];
      }
      EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), 1e-5);
      EXPECT_EQ(padded[i].waits, 1u);
    }
  }
}

// The serving loop end to end: the same requests through the default path,
// asynchronous routing and the graph path (padded decode steps on the CPU)
// give the same tokens and the same per-layer routing statistics (the
// expert-load signal's totals: routed per expert, tokens, drops, reroutes).
TEST(AsyncRoutingServing, SameTokensAndRoutingStatisticsOnEveryPath) {
  ie::ModelConfig c = ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/tiny.json");
  c.moe.capacity_factor = 0.75f;  // drops in decode steps too
  struct Out {
    std::vector<std::vector<int32_t>> tokens;
    ie::EngineStats stats;
    uint64_t graph_steps = 0;
  };
  auto serve = [&](Path path) {
    auto be = ie::create_cpu_backend();
    ie::Model model(*be, c);
    ie::EngineOptions o;
    o.async_routing = path == Path::kSync ? 0 : 1;
    if (path == Path::kGraphs) model.set_step_graphs(true);
    ie::Engine engine(model, nullptr, o);
    for (uint64_t id = 1; id <= 6; ++id) {
      ie::Request r;
      r.id = id;
      for (int i = 0; i < 5 + 3 * static_cast<int>(id); ++i)
        r.text.push_back(static_cast<int32_t>(33 + (i * 11 + id * 7) % 90));
      r.max_new_tokens = 12;
      engine.submit(std::move(r));
    }
    engine.run_to_completion();
    Out out;
    auto done = engine.take_finished();
    std::sort(done.begin(), done.end(), [](auto& a, auto& b) { return a.id < b.id; });
    for (auto& d : done) out.tokens.push_back(d.output);
    out.stats = engine.stats();
    out.graph_steps = model.graph_steps();
    return out;
  };
  const Out sync = serve(Path::kSync), async = serve(Path::kAsync), graphs = serve(Path::kGraphs);
  ASSERT_EQ(sync.tokens.size(), 6u);
  EXPECT_EQ(sync.graph_steps, 0u);
  EXPECT_GT(graphs.graph_steps, 0u) << "no decode step went through the graph path";
  for (const Out* o : {&async, &graphs}) {
    EXPECT_EQ(o->tokens, sync.tokens);
    ASSERT_EQ(o->stats.layers.size(), sync.stats.layers.size());
    uint64_t dropped = 0;
    for (size_t l = 0; l < sync.stats.layers.size(); ++l) {
      const ie::LayerRouting &a = sync.stats.layers[l], &b = o->stats.layers[l];
      EXPECT_EQ(a.routed, b.routed) << "layer " << l;
      EXPECT_EQ(a.tokens, b.tokens) << "layer " << l;
      EXPECT_EQ(a.dropped, b.dropped) << "layer " << l;
      EXPECT_EQ(a.rerouted, b.rerouted) << "layer " << l;
      EXPECT_EQ(a.steps, b.steps) << "layer " << l;
      dropped += b.dropped;
    }
    EXPECT_GT(dropped, 0u);
  }
}

TEST(AsyncRoutingOps, DeviceOffsetsAreThePrefixSumsOfKept) {
  auto be = ie::create_cpu_backend();
  const int T = 6, E = 4, k = 2;
  std::vector<float> logits(T * E);
  for (int i = 0; i < T * E; ++i) logits[i] = static_cast<float>((i * 37) % 11) * 0.3f;
  ie::Buffer bl(*be, T, E), ae(*be, T, k, ie::DType::kI32), aw(*be, T, k),
      counts(*be, 1, 2 * E + 2, ie::DType::kI32), off(*be, 1, E + 1, ie::DType::kI32);
  be->upload(bl, logits.data());
  ie::RouteParams p;
  p.top_k = k;
  p.capacity = 2;
  p.overflow = ie::OverflowPolicy::kReroute;
  ie::RouteCounts host;
  be->moe_route(bl, {}, p, ae, aw, host);
  be->moe_route_device(bl, {}, p, ae, aw, counts, off);
  std::vector<int32_t> c(2 * E + 2), o(E + 1);
  be->download(counts, c.data());
  be->download(off, o.data());
  for (int e = 0; e < E; ++e) {
    EXPECT_EQ(c[e], static_cast<int32_t>(host.routed[e]));
    EXPECT_EQ(c[E + e], host.kept[e]);
    EXPECT_EQ(o[e + 1] - o[e], host.kept[e]);
  }
  EXPECT_EQ(o[0], 0);
  EXPECT_EQ(c[2 * E], static_cast<int32_t>(host.dropped));
  EXPECT_EQ(c[2 * E + 1], static_cast<int32_t>(host.rerouted));
  EXPECT_GT(host.rerouted + host.dropped, 0u);  // capacity 2 of 12 assignments over 4 experts
}

TEST(AsyncRoutingOps, PaddingRowsAreNeitherRoutedNorCounted) {
  auto be = ie::create_cpu_backend();
  const int T = 8, v = 5, E = 4, k = 2;
  std::vector<float> logits(T * E);
  for (int i = 0; i < T * E; ++i) logits[i] = static_cast<float>((i * 29) % 13) * 0.25f;
  ie::Buffer bl(*be, T, E), ae(*be, T, k, ie::DType::kI32), aw(*be, T, k),
      counts(*be, 1, 2 * E + 2, ie::DType::kI32), off(*be, 1, E + 1, ie::DType::kI32);
  ie::Buffer bl5(*be, v, E), ae5(*be, v, k, ie::DType::kI32), aw5(*be, v, k);
  be->upload(bl, logits.data());
  be->upload(bl5, logits.data());
  ie::RouteParams p;
  p.top_k = k;
  p.capacity_factor = 1.0f;  // capacity from the 5 valid rows: ceil(5 * 2 / 4) = 3
  p.capacity = 4;            // the bucket's (8 rows): replaced
  const int32_t valid[1] = {v};
  be->moe_route_device(bl, {}, p, ae, aw, counts, off, valid);
  ie::RouteParams p5 = p;
  p5.capacity = 3;
  ie::RouteCounts want;
  be->moe_route(bl5, {}, p5, ae5, aw5, want);
  std::vector<int32_t> c(2 * E + 2), a(T * k), a5(v * k);
  be->download(counts, c.data());
  be->download(ae, a.data());
  be->download(ae5, a5.data());
  for (int e = 0; e < E; ++e) {
    EXPECT_EQ(c[e], static_cast<int32_t>(want.routed[e]));
    EXPECT_EQ(c[E + e], want.kept[e]);
  }
  EXPECT_EQ(c[2 * E], static_cast<int32_t>(want.dropped));
  EXPECT_GT(want.dropped, 0u);
  for (int i = 0; i < v * k; ++i) EXPECT_EQ(a[i], a5[i]);
  for (int i = v * k; i < T * k; ++i) EXPECT_EQ(a[i], -1) << "padding row assigned";
}

TEST(AsyncRoutingOps, BadShapesAreClearErrors) {
  auto be = ie::create_cpu_backend();
  ie::Buffer bl(*be, 2, 4), ae(*be, 2, 1, ie::DType::kI32), aw(*be, 2, 1),
      counts(*be, 1, 10, ie::DType::kI32), short_off(*be, 1, 4, ie::DType::kI32),
      f32_off(*be, 1, 5);
  ie::RouteParams p;
  EXPECT_THROW(be->moe_route_device(bl, {}, p, ae, aw, counts, short_off), std::invalid_argument);
  ie::Buffer x(*be, 2, 8), xp(*be, 1, 8), perm(*be, 2, 1, ie::DType::kI32);
  // xp must hold the bound T * top_k = 2 rows.
  EXPECT_THROW(be->moe_permute(x, ae, short_off, xp, perm), std::invalid_argument);
  ie::Buffer w(*be, 4 * 3, 8), y(*be, 2, 3);
  EXPECT_THROW(be->grouped_linear(x, w, f32_off, 2, y), std::invalid_argument);
}

TEST(AsyncRoutingOps, EnvironmentValueIsChecked) {
  ie::ModelConfig c = ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/tiny.json");
  auto be = ie::create_cpu_backend();
  ::setenv("INFERSCOPE_ASYNC_ROUTING", "yes", 1);
  EXPECT_THROW((ie::Model{*be, c}), std::invalid_argument);
  ::setenv("INFERSCOPE_ASYNC_ROUTING", "1", 1);
  EXPECT_TRUE((ie::Model{*be, c}.async_routing()));
  ::unsetenv("INFERSCOPE_ASYNC_ROUTING");
  EXPECT_FALSE((ie::Model{*be, c}.async_routing()));
}

}  // namespace
