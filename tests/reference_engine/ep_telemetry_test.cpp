// Expert parallelism through the agent: two ranks (threads, host
// communicator) each with a real agent shipping to its own loopback sink.
// Each rank's hello names its EP rank, the world size and the placement
// (expert_to_rank); every rank sends one ExpertParallelStep per MoE layer per
// step (idle steps included) with the same (step, layer) keys on both ranks;
// the rows computed over both ranks equal the assignments both ranks kept;
// and the ep.dispatch / ep.experts / ep.combine ranges are named.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include "capture_sink.hpp"
#include "inferscope/agent.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/telemetry.hpp"
#include "inferscope/engine/workload.hpp"

namespace ie = inferscope::engine;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;
using inferscope_test::CaptureSink;

namespace {

struct RankCapture {
  std::vector<wire::Record> records;
  ie::EngineStats stats;
};

RankCapture run_rank(int rank, const std::string& dir, int requests) {
  ie::ModelConfig c = ie::load_model_config(std::string(INFERSCOPE_ENGINE_MODELS) + "/tiny.json");
  CaptureSink sink;
  auto be = ie::create_cpu_backend({1, 0});
  ie::CommOptions co;
  co.rank = rank;
  co.size = 2;
  co.rendezvous_dir = dir;
  co.timeout = std::chrono::milliseconds(20000);
  auto comm = ie::create_communicator("host", *be, co);
  const auto placement = ie::ExpertPlacement::make(c.moe.experts, 2, rank);
  ie::Model model(*be, c, "", placement);
  model.attach_expert_parallel(*comm, &inferscope::agent::now_ns);
  inferscope::agent::Config acfg;
  acfg.collector = "tcp://127.0.0.1:" + std::to_string(sink.port());
  acfg.nvtx = false;
  auto telemetry = std::make_unique<ie::Telemetry>(acfg, c, placement);
  RankCapture out;
  {
    ie::Engine engine(model, telemetry.get());
    ie::WorkloadSpec spec = ie::workload_by_name("skewed-ep");
    spec.prompt_mean = 12;
    spec.output_mean = 5;
    ie::WorkloadGenerator gen(spec, c, 40 + static_cast<uint64_t>(rank));
    double t;
    for (int i = 0; i < requests; ++i) engine.submit(gen.next(&t));
    engine.run_to_completion();
    out.stats = engine.stats();
  }
  EXPECT_TRUE(telemetry->agent().flush(std::chrono::milliseconds(5000)));
  telemetry.reset();
  sink.wait();
  out.records = sink.records();
  return out;
}

}  // namespace

TEST(ExpertParallelTelemetry, EveryRankReportsEveryMoeLayerOfEveryStep) {
  std::string dir = (fs::temp_directory_path() / "ep-telemetry-XXXXXX").string();
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  std::vector<RankCapture> ranks(2);
  std::vector<std::thread> threads;
  const int requests[2] = {6, 2};  // rank 1 runs out of work first: idle steps
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] { ranks[static_cast<size_t>(r)] = run_rank(r, dir, requests[r]); });
  for (auto& t : threads) t.join();
  fs::remove_all(dir);

  std::set<std::pair<uint64_t, uint32_t>> keys[2];
  uint64_t computed = 0, kept = 0;
  // Issue 24: (step, layer, rank) -> rows sent to it (the matrix column) / rows it computed.
  std::map<std::tuple<uint64_t, uint32_t, uint32_t>, uint64_t> column, computed_at;
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const RankCapture& rc = ranks[static_cast<size_t>(r)];
    bool hello = false;
    std::set<std::string> names;
    for (const auto& rec : rc.records) {
      if (auto* h = std::get_if<wire::Hello>(&rec)) {
        hello = true;
        EXPECT_EQ(h->rank, static_cast<uint32_t>(r));
        EXPECT_EQ(h->world_size, 2u);
        EXPECT_EQ(h->model.expert_to_rank, (std::vector<uint32_t>{0, 0, 1, 1}));
      } else if (auto* s = std::get_if<wire::StringDef>(&rec)) {
        names.insert(s->value);
      } else if (auto* e = std::get_if<wire::ExpertParallelStep>(&rec)) {
        EXPECT_TRUE(keys[r].insert({e->step, e->layer}).second) << "duplicate (step, layer)";
        EXPECT_TRUE(e->layer == 0 || e->layer == 2) << "tiny's MoE layers are 0 and 2";
        EXPECT_GE(e->dispatch_ns, 0);
        EXPECT_GE(e->compute_ns, 0);
        EXPECT_GE(e->combine_ns, 0);
        EXPECT_GT(e->timestamp_ns, 0);
        computed += e->rows_computed;
        // The traffic row travelled engine -> agent ring -> wire intact.
        ASSERT_EQ(e->rows_to_rank.size(), 2u);
        EXPECT_EQ(e->rows_sent, e->rows_to_rank[static_cast<size_t>(1 - r)]);
        EXPECT_GT(e->row_bytes, 0u);
        for (uint32_t d = 0; d < 2; ++d) column[{e->step, e->layer, d}] += e->rows_to_rank[d];
        computed_at[{e->step, e->layer, static_cast<uint32_t>(r)}] = e->rows_computed;
      } else if (auto* l = std::get_if<wire::ExpertLoad>(&rec)) {
        for (uint32_t x : l->routed) kept += x;
        kept -= l->dropped;
      }
    }
    EXPECT_TRUE(hello);
    for (const char* n : {"ep.dispatch", "ep.experts", "ep.combine"})
      EXPECT_TRUE(names.count(n)) << n;
    const uint64_t steps = rc.stats.steps + rc.stats.idle_steps;
    EXPECT_EQ(keys[r].size(), steps * 2) << "one record per MoE layer per step";
  }
  EXPECT_GT(ranks[1].stats.idle_steps, 0u);
  EXPECT_EQ(keys[0], keys[1]) << "step ids must agree across ranks";
  EXPECT_EQ(computed, kept) << "every kept assignment is computed once, on its expert's rank";
  // What every rank sent to d in dispatch is exactly what d's experts computed.
  EXPECT_EQ(column, computed_at);
}
