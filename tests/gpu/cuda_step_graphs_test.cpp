// Issue 18 part 4 on the GPU: CUDA-graph decode. The same steps through an
// eager model (asynchronous routing) and a graph model (set_step_graphs) on
// the CUDA backend, on the three small models: 8 sequences decode (bucket 8:
// warm-up, capture, replays), then 5 of them (bucket 8 replayed with 3 padding
// rows, masked out of routing), then 1 (bucket 1). Every step: per-layer
// routed / kept / dropped / rerouted counts equal, logits within the bf16
// tolerance of the CUDA-vs-CPU tests (the same kernels run, so the printed
// error is expected to be 0), and every replayed step waits for the device
// exactly once (Backend::host_syncs, counted in the backend).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gpu_test_util.hpp"
#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/config.hpp"
#include "inferscope/engine/model.hpp"
#include "paired_decode.hpp"

namespace ie = inferscope::engine;
using inferscope::engine::gpu_test::PairedDecode;
using inferscope::engine::gpu_test::rel_l2;
using Recorder = inferscope::engine::gpu_test::RouteRecorder;

namespace {

class CudaStepGraphs : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA(); }
};

TEST_P(CudaStepGraphs, ReplayedDecodeEqualsEagerWithOneWaitPerStep) {
  const ie::ModelConfig cfg = ie::load_model_config(
      std::string(INFERSCOPE_SOURCE_DIR) + "/reference_engine/models/" + GetParam() + ".json");
  auto ge = ie::create_backend("cuda", {}), gg = ie::create_backend("cuda", {});
  ie::Model eager(*ge, cfg), graphs(*gg, cfg);
  eager.set_async_routing(true);
  graphs.set_step_graphs(true);
  ASSERT_TRUE(graphs.step_graphs());
  const int S = 8;
  PairedDecode run(cfg, S, eager, graphs);
  double max_err = 0;
  int replays_checked = 0;
  // step 0: prefill of all 8; then 12 decode steps of 8 rows, 6 of 5 rows, 5 of 1 row.
  std::vector<int> rows = {S};
  for (int i = 0; i < 12; ++i) rows.push_back(8);
  for (int i = 0; i < 6; ++i) rows.push_back(5);
  for (int i = 0; i < 5; ++i) rows.push_back(1);
  for (size_t step = 0; step < rows.size(); ++step) {
    const ie::StepBatch b = run.next_step(rows[step]);
    Recorder re, rg;
    std::vector<float> le, lg;
    const uint64_t launches0 = gg->graph_launches(), captured0 = gg->graphs_captured();
    const uint64_t w0 = gg->host_syncs();
    eager.forward(b, le, &re);
    graphs.forward(b, lg, &rg);
    const uint64_t waits = gg->host_syncs() - w0;
    SCOPED_TRACE("step " + std::to_string(step) + ", " + std::to_string(rows[step]) + " rows");
    EXPECT_EQ(re.routed, rg.routed);
    EXPECT_EQ(re.kept, rg.kept);
    EXPECT_EQ(re.dropped, rg.dropped);
    EXPECT_EQ(re.rerouted, rg.rerouted);
    const double err = rel_l2(lg, le);
    max_err = std::max(max_err, err);
    EXPECT_LT(err, 8e-2);
    if (gg->graph_launches() > launches0 && gg->graphs_captured() == captured0) {
      ++replays_checked;
      EXPECT_EQ(waits, 1u) << "a replayed step waits once (the logits and counts download)";
    }
    run.choose_next(le, rows[step]);
  }
  // Bucket 8: warm-up, capture, then replays (also for the 5-row steps);
  // bucket 1: warm-up, capture, replays. 11 + 6 + 4 launches.
  EXPECT_EQ(graphs.graph_error(), "") << "a capture failed; those steps ran eagerly";
  EXPECT_EQ(gg->graphs_captured(), 2u);
  EXPECT_EQ(gg->graph_launches(), 21u);
  EXPECT_EQ(graphs.graph_steps(), 23u);
  EXPECT_GT(replays_checked, 15);
  std::printf(
      "[ %s ] graph vs eager decode: max logit rel err %.3e over %zu steps, %llu graphs, "
      "%llu launches, %d replays checked at 1 host wait each\n",
      GetParam().c_str(), max_err, rows.size(),
      static_cast<unsigned long long>(gg->graphs_captured()),
      static_cast<unsigned long long>(gg->graph_launches()), replays_checked);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaStepGraphs, ::testing::Values("tiny", "demo", "hybrid-moe"));

}  // namespace
