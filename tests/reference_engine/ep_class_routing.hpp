// The "class routing" construction of the expert-parallel truth tests (traffic
// matrix, EPLB advisor): a token of class c has the unit vector of dim c as its
// hidden state, and the router gives it logit 4 for expert c, 3 for expert
// second_expert(c), 0 for the rest, so its top-2 is those two experts whatever
// the placement. One rank's pass of the MoE layer under a placement, on its own
// CPU backend and a real host communicator, returns what the engine measured.
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/expert_parallel.hpp"
#include "inferscope/engine/layers.hpp"

namespace inferscope::engine::test {

inline constexpr int kClassExperts = 8;  // experts of the layer (= token classes)
inline constexpr int kClassD = 12;       // d_model: one dim per class, and spare
inline constexpr int kClassF = 5;        // expert hidden size

inline int second_expert(int c) {
  return (c + 3) % kClassExperts;
}

struct ClassRankResult {
  EpLayerStats stats;
  RouteCounts counts;
};

// `c` must have d_model kClassD and moe.experts kClassExperts (top-2, dropless).
// The router rows are permuted the way the model loader applies a placement
// (weights.cpp): physical slot p gets logical expert relabel[p]'s row, so tokens
// pick the same logical experts and only where they are computed changes.
inline ClassRankResult run_class_routed_rank(const ModelConfig& c, int32_t layer, int rank,
                                             int ranks, const std::vector<int>& classes,
                                             const ExpertPlacement& pl, const std::string& dir,
                                             int max_tokens) {
  constexpr int kE = kClassExperts, kD = kClassD, kF = kClassF;
  const int per_rank = kE / ranks;
  auto be = create_cpu_backend({1, 0});
  const int T = static_cast<int>(classes.size());
  std::vector<float> logical(kE * kD, 0.0f), router(kE * kD, 0.0f);
  for (int cl = 0; cl < kE; ++cl) {
    logical[static_cast<size_t>(cl * kD + cl)] = 4.0f;
    logical[static_cast<size_t>(second_expert(cl) * kD + cl)] = 3.0f;
  }
  const std::vector<int32_t>* m = pl.relabel(layer);
  for (int p = 0; p < kE; ++p) {
    const int l = m ? (*m)[static_cast<size_t>(p)] : p;
    std::copy_n(logical.begin() + l * kD, kD, router.begin() + p * kD);
  }
  std::vector<float> h(static_cast<size_t>(std::max(T, 1) * kD), 0.0f);
  for (int t = 0; t < T; ++t)
    h[static_cast<size_t>(t * kD + classes[static_cast<size_t>(t)])] = 1.0f;
  std::vector<float> gu(per_rank * 2 * kF * kD, 0.01f), down(per_rank * kD * kF, 0.01f),
      sgu(2 * kF * kD, 0.01f), sdown(kD * kF, 0.01f);

  CommOptions co;
  co.rank = rank;
  co.size = ranks;
  co.rendezvous_dir = dir;
  co.timeout = std::chrono::milliseconds(30000);
  auto comm = create_host_communicator(co);
  Buffer br(*be, kE, kD), bgu(*be, per_rank * 2 * kF, kD), bdown(*be, per_rank * kD, kF),
      bsgu(*be, 2 * kF, kD), bsdown(*be, kD, kF), bh(*be, std::max(T, 1), kD),
      bout(*be, std::max(T, 1), kD);
  be->upload(br, router.data());
  be->upload(bgu, gu.data());
  be->upload(bdown, down.data());
  be->upload(bsgu, sgu.data());
  be->upload(bsdown, sdown.data());
  be->upload(bh, h.data());
  ExpertParallel ep;
  ep.comm = comm.get();
  ep.placement = pl;
  ep.scratch = EpScratch(*be, c, pl, max_tokens);
  MoeWeights w{br.tensor(), {}, bgu.tensor(), bdown.tensor(), bsgu.tensor(), bsdown.tensor()};
  MoeScratch s(*be, c, max_tokens);
  ClassRankResult out;
  out.stats.layer = layer;
  moe_ffn_ep(*be, c.moe, w, s, ep, bh.tensor().rows_view(0, T), bout.tensor().rows_view(0, T),
             out.counts, 0, out.stats);
  be->synchronize();
  ep_read_timing(ep, 0, out.stats);
  return out;
}

}  // namespace inferscope::engine::test
