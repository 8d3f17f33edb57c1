// The engine's signals through a real agent over a real loopback TCP socket:
// the bytes are decoded with the wire library and checked against the engine's
// own statistics.
#include "inferscope/engine/telemetry.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "capture_sink.hpp"
#include "inferscope/agent.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/workload.hpp"
#include "inferscope/wire/codec.hpp"

namespace ie = inferscope::engine;
namespace wire = inferscope::wire;

namespace {

using inferscope_test::CaptureSink;

TEST(EngineTelemetry, EverySignalArrivesAndMatchesTheEngine) {
  ie::ModelConfig c = ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/tiny.json");
  CaptureSink sink;
  auto be = ie::create_cpu_backend();
  ie::Model model(*be, c);
  inferscope::agent::Config acfg;
  acfg.collector = "tcp://127.0.0.1:" + std::to_string(sink.port());
  acfg.nvtx = false;
  auto telemetry = std::make_unique<ie::Telemetry>(acfg, c);
  ie::EngineStats stats;
  {
    ie::Engine engine(model, telemetry.get());
    ie::WorkloadSpec spec = ie::workload_by_name("skewed-multimodal");
    spec.image_fraction = 0.5;
    spec.system_prompt_fraction = 1.0;
    spec.prompt_mean = 10;
    spec.output_mean = 4;
    ie::WorkloadGenerator gen(spec, c, 3);
    double t;
    for (int i = 0; i < 10; ++i) {
      auto r = gen.next(&t);
      if (i == 0) r.image = ie::synthetic_image(c.vision.image_size, 0, 1);  // at least one image
      engine.submit(std::move(r));
      engine.run_to_completion();  // one at a time, so later ones hit the prefix cache
    }
    stats = engine.stats();
  }
  ASSERT_TRUE(telemetry->agent().flush(std::chrono::milliseconds(5000)));
  telemetry.reset();  // closes the connection
  sink.wait();
  auto records = sink.records();
  ASSERT_FALSE(records.empty());

  std::map<uint32_t, std::string> names;
  uint64_t routed_total = 0, dropped_total = 0, load_records = 0, requests = 0, prefix_q = 0,
           prefix_hit = 0;
  std::set<int> memory_kinds, stages;
  std::map<int, uint64_t> last_used;  // memory kind -> last reported bytes
  bool hello = false;
  std::vector<wire::Span> cpu_ranges;
  for (const auto& r : records) {
    if (auto* sp = std::get_if<wire::Span>(&r); sp && sp->category == wire::SpanCategory::kCpuRange)
      cpu_ranges.push_back(*sp);
    if (auto* h = std::get_if<wire::Hello>(&r)) {
      hello = true;
      EXPECT_EQ(h->model, ie::describe(c));
    } else if (auto* s = std::get_if<wire::StringDef>(&r)) {
      names[s->id] = s->value;
    } else if (auto* l = std::get_if<wire::ExpertLoad>(&r)) {
      ++load_records;
      EXPECT_TRUE(c.is_moe(static_cast<int32_t>(l->layer)));
      uint64_t sum = 0;
      for (uint32_t v : l->routed) sum += v;
      EXPECT_EQ(sum, uint64_t(l->tokens) * c.moe.top_k);  // routed counts are before capacity
      routed_total += sum;
      dropped_total += l->dropped;
    } else if (auto* m = std::get_if<wire::MemorySample>(&r)) {
      memory_kinds.insert(static_cast<int>(m->kind));
      last_used[static_cast<int>(m->kind)] = m->used_bytes;
      EXPECT_LE(m->used_bytes, m->capacity_bytes);
    } else if (auto* st = std::get_if<wire::StageTiming>(&r)) {
      stages.insert(static_cast<int>(st->stage));
      EXPECT_LE(st->start_ns, st->end_ns);
    } else if (auto* q = std::get_if<wire::RequestEvent>(&r)) {
      ++requests;
      EXPECT_GT(q->first_token_ns, q->arrival_ns);
    } else if (auto* p = std::get_if<wire::PrefixCacheSample>(&r)) {
      prefix_q += p->attention_queried_tokens;
      prefix_hit += p->attention_hit_tokens;
    }
  }
  EXPECT_TRUE(hello);
  uint64_t engine_dropped = 0, engine_routed = 0;
  for (const auto& l : stats.layers) {
    engine_dropped += l.dropped;
    for (uint64_t v : l.routed) engine_routed += v;
  }
  EXPECT_EQ(load_records, stats.steps * 2);  // two MoE layers in tiny
  EXPECT_EQ(routed_total, engine_routed);
  EXPECT_EQ(dropped_total, engine_dropped);
  EXPECT_EQ(requests, 10u);
  EXPECT_EQ(memory_kinds.size(), 5u);
  // Everything finished: the final report shows no KV blocks or SSM slots held.
  EXPECT_EQ(last_used[static_cast<int>(wire::MemoryKind::kKvCache)], 0u);
  EXPECT_EQ(last_used[static_cast<int>(wire::MemoryKind::kSsmState)], 0u);
  EXPECT_GT(last_used[static_cast<int>(wire::MemoryKind::kSsmCheckpoints)], 0u);
  EXPECT_EQ(stages.size(), 4u);  // encoder, connector, prefill, decode
  EXPECT_EQ(prefix_q, stats.attention_queried);
  EXPECT_EQ(prefix_hit, stats.attention_hit);
  EXPECT_GT(prefix_hit, 0u);
  bool layer_range = false;
  for (const auto& [id, n] : names) layer_range |= n == "layer.0.ssm+moe";
  EXPECT_TRUE(layer_range);

  // Issue 20: every layer range carries its layer as the typed arg "layer" (the
  // number in its name, which nobody needs to parse); no other range has one.
  uint32_t layer_key = 0;
  for (const auto& [id, n] : names)
    if (n == "layer") layer_key = id;
  ASSERT_NE(layer_key, 0u) << "the arg key is sent as a string";
  std::set<int64_t> layers_seen;
  size_t layer_spans = 0;
  for (const auto& sp : cpu_ranges) {
    const std::string& name = names[sp.name_id];
    int64_t layer = -1;
    for (uint8_t i = 0; i < sp.num_args; ++i)
      if (sp.args[i].key_id == layer_key) layer = sp.args[i].value;
    if (name.rfind("layer.", 0) != 0) {
      EXPECT_EQ(layer, -1) << name;
      continue;
    }
    ++layer_spans;
    EXPECT_EQ(std::to_string(layer), name.substr(6, name.find('.', 6) - 6)) << name;
    layers_seen.insert(layer);
  }
  EXPECT_GT(layer_spans, 0u);
  EXPECT_EQ(layers_seen.size(), static_cast<size_t>(c.n_layers())) << "every layer ran";
}

}  // namespace
