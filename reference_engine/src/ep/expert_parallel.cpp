// The expert-parallel MoE layer (expert_parallel.hpp).
#include "inferscope/engine/expert_parallel.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <stdexcept>
#include <string>

#include "inferscope/engine/weights.hpp"

namespace inferscope::engine {

ExpertPlacement ExpertPlacement::make(int32_t experts, int32_t ranks, int32_t rank) {
  if (ranks < 1)
    throw std::invalid_argument("--ep-size must be >= 1, got " + std::to_string(ranks));
  if (rank < 0 || rank >= ranks)
    throw std::invalid_argument("--ep-rank " + std::to_string(rank) + " is not in [0, " +
                                std::to_string(ranks) + ")");
  if (experts % ranks != 0)
    throw std::invalid_argument("expert parallelism needs the routed experts (" +
                                std::to_string(experts) + ") divisible by --ep-size (" +
                                std::to_string(ranks) + ")");
  return ExpertPlacement{experts, ranks, rank};
}

ExpertPlacement ExpertPlacement::validated(int32_t e) const {
  ExpertPlacement p = make(e, ranks, rank);
  for (size_t l = 0; l < slot_to_logical.size(); ++l) {
    const auto& m = slot_to_logical[l];
    if (m.empty()) continue;
    std::vector<char> seen(static_cast<size_t>(e), 0);
    if (m.size() != static_cast<size_t>(e))
      throw std::invalid_argument("expert placement of layer " + std::to_string(l) + " has " +
                                  std::to_string(m.size()) + " experts, the model has " +
                                  std::to_string(e));
    for (int32_t x : m) {
      if (x < 0 || x >= e || seen[static_cast<size_t>(x)])
        throw std::invalid_argument("expert placement of layer " + std::to_string(l) +
                                    " is not a permutation");
      seen[static_cast<size_t>(x)] = 1;
    }
  }
  if (!default_expert_to_rank.empty() && default_expert_to_rank.size() != static_cast<size_t>(e))
    throw std::invalid_argument("expert placement's default map has the wrong number of experts");
  p.slot_to_logical = slot_to_logical;
  p.default_expert_to_rank = default_expert_to_rank;
  return p;
}

std::vector<uint32_t> ExpertPlacement::expert_to_rank() const {
  if (!default_expert_to_rank.empty()) return default_expert_to_rank;
  std::vector<uint32_t> m(static_cast<size_t>(experts));
  for (int32_t e = 0; e < experts; ++e) m[static_cast<size_t>(e)] = static_cast<uint32_t>(owner(e));
  return m;
}

const char* to_string(EpPhase p) {
  switch (p) {
    case EpPhase::kDispatch:
      return "ep.dispatch";
    case EpPhase::kExperts:
      return "ep.experts";
    case EpPhase::kCombine:
      return "ep.combine";
  }
  return "ep.?";
}

EpScratch::EpScratch(Backend& be, const ModelConfig& c, const ExpertPlacement& p,
                     int64_t max_tokens) {
  // Worst case: every rank routes all of its assignments to this rank's experts.
  const int64_t rows = max_tokens * c.moe.top_k * p.ranks;
  xrecv = Buffer(be, rows, c.d_model);
  hrecv = Buffer(be, rows, 2 * c.moe.expert_hidden);
  arecv = Buffer(be, rows, c.moe.expert_hidden);
  yrecv = Buffer(be, rows, c.d_model);
  gathered.reserve(static_cast<size_t>(c.moe.experts) * static_cast<size_t>(p.ranks));
  send_counts.assign(static_cast<size_t>(p.ranks), 0);
  recv_counts.assign(static_cast<size_t>(p.ranks), 0);
  local_offsets.assign(static_cast<size_t>(p.per_rank()) + 1, 0);
  kept.assign(static_cast<size_t>(c.moe.experts), 0);
}

size_t EpScratch::bytes() const {
  return xrecv.bytes() + hrecv.bytes() + arecv.bytes() + yrecv.bytes();
}

namespace {

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Brackets a phase with the hook's range.
struct PhaseScope {
  EpPhaseHook* hook;
  int32_t layer;
  EpPhase phase;
  PhaseScope(EpPhaseHook* h, int32_t l, EpPhase p) : hook(h), layer(l), phase(p) {
    if (hook) hook->ep_phase_begin(layer, phase);
  }
  ~PhaseScope() {
    if (hook) hook->ep_phase_end(layer, phase);
  }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;
};

}  // namespace

void moe_ffn_ep(Backend& be, const MoeConfig& moe, const MoeWeights& w, MoeScratch& s,
                ExpertParallel& ep, const Tensor& h, const Tensor& out, RouteCounts& counts,
                int mark_base, EpLayerStats& stats, EpPhaseHook* hook, MoeOut mode) {
  if (!ep.comm) throw std::logic_error("moe_ffn_ep: no communicator");
  const ExpertPlacement& pl = ep.placement;
  Communicator& comm = *ep.comm;
  EpScratch& x = ep.scratch;
  const int64_t T = h.rows, E = moe.experts, F = moe.expert_hidden;
  const int32_t N = pl.ranks, El = pl.per_rank(), me = pl.rank;
  if (comm.size() != N || comm.rank() != me)
    throw std::logic_error("moe_ffn_ep: communicator and placement disagree");

  // Route and permute locally (the same first half as moe_ffn).
  Tensor aw;
  int64_t A = 0;
  if (T > 0) {
    A = moe_route_and_permute(be, moe, w, s, h, out, counts, mode);
    aw = s.assign_weight.tensor().rows_view(0, T);
    std::copy(counts.kept.begin(), counts.kept.end(), x.kept.begin());
  } else {
    counts.routed.assign(static_cast<size_t>(E), 0);
    counts.kept.assign(static_cast<size_t>(E), 0);
    counts.dropped = counts.rerouted = 0;
    std::fill(x.kept.begin(), x.kept.end(), 0);
  }

  // Dispatch: counts first, then rows.
  stats.timestamp_ns = ep.clock ? ep.clock() : steady_ns();
  comm.mark(mark_base + 0);
  int64_t R = 0;
  {
    PhaseScope scope(hook, stats.layer, EpPhase::kDispatch);
    comm.all_gather(x.kept, x.gathered);
    for (int32_t d = 0; d < N; ++d) {
      int32_t sc = 0, rc = 0;
      for (int32_t j = 0; j < El; ++j) {
        sc += x.kept[static_cast<size_t>(d * El + j)];
        rc += x.gathered[static_cast<size_t>(d) * static_cast<size_t>(E) +
                         static_cast<size_t>(me * El + j)];
      }
      x.send_counts[static_cast<size_t>(d)] = sc;
      x.recv_counts[static_cast<size_t>(d)] = rc;
      R += rc;
    }
    if (R > x.xrecv.tensor().rows)
      throw std::logic_error("moe_ffn_ep: received rows exceed the scratch");
    comm.all_to_all_v(s.xp.tensor().rows_view(0, A), x.send_counts,
                      x.xrecv.tensor().rows_view(0, R), x.recv_counts);
  }
  comm.mark(mark_base + 1);

  // Local experts, one grouped SwiGLU per source block.
  {
    PhaseScope scope(hook, stats.layer, EpPhase::kExperts);
    int64_t row = 0;
    for (int32_t src = 0; src < N; ++src) {
      const int64_t n = x.recv_counts[static_cast<size_t>(src)];
      if (n == 0) continue;
      x.local_offsets[0] = 0;
      for (int32_t j = 0; j < El; ++j)
        x.local_offsets[static_cast<size_t>(j) + 1] =
            x.local_offsets[static_cast<size_t>(j)] +
            x.gathered[static_cast<size_t>(src) * static_cast<size_t>(E) +
                       static_cast<size_t>(me * El + j)];
      Tensor xs = x.xrecv.tensor().rows_view(row, n), hs = x.hrecv.tensor().rows_view(row, n);
      Tensor as = x.arecv.tensor().rows_view(row, n), ys = x.yrecv.tensor().rows_view(row, n);
      be.grouped_linear(xs, w.experts_gu, x.local_offsets, hs);
      be.mul_silu(hs.cols_view(F, F), hs.cols_view(0, F), as);
      be.grouped_linear(as, w.experts_down, x.local_offsets, ys);
      row += n;
    }
  }
  comm.mark(mark_base + 2);

  // Combine: results return in the order they were sent (= the permuted order).
  {
    PhaseScope scope(hook, stats.layer, EpPhase::kCombine);
    comm.all_to_all_v(x.yrecv.tensor().rows_view(0, R), x.recv_counts,
                      s.yp.tensor().rows_view(0, A), x.send_counts);
  }
  comm.mark(mark_base + 3);
  if (A > 0)
    be.moe_unpermute(s.yp.tensor().rows_view(0, A), s.perm.tensor(), aw, moe.top_k, A, out);

  stats.rows_sent = static_cast<uint32_t>(A - x.send_counts[static_cast<size_t>(me)]);
  stats.rows_computed = static_cast<uint32_t>(R);
  // The traffic row is exactly the dispatch's send counts (per destination rank).
  stats.rows_to_rank.resize(static_cast<size_t>(N));
  for (int32_t d = 0; d < N; ++d)
    stats.rows_to_rank[static_cast<size_t>(d)] =
        static_cast<uint32_t>(x.send_counts[static_cast<size_t>(d)]);
  const Tensor xp = s.xp.tensor();
  stats.row_bytes = static_cast<uint32_t>(static_cast<size_t>(xp.cols) * dtype_size(xp.dtype));
}

void ep_read_timing(ExpertParallel& ep, int mark_base, EpLayerStats& stats) {
  stats.dispatch_ns = ep.comm->elapsed_ns(mark_base + 0, mark_base + 1);
  stats.compute_ns = ep.comm->elapsed_ns(mark_base + 1, mark_base + 2);
  stats.combine_ns = ep.comm->elapsed_ns(mark_base + 2, mark_base + 3);
}

int32_t ep_hot_topic(const ModelConfig& c, int32_t ranks, int32_t rank) {
  const ExpertPlacement pl = ExpertPlacement::make(c.moe.experts, ranks, rank);
  int32_t best = 0, best_layers = -1;
  for (int32_t t = 0; t < std::max(1, c.init.topics); ++t) {
    int32_t on_rank = 0;
    for (int32_t l = 0; l < c.n_layers(); ++l)
      if (c.is_moe(l) && pl.owner(topic_hot_expert(c, l, t)) == rank) ++on_rank;
    if (on_rank > best_layers) {
      best = t;
      best_layers = on_rank;
    }
  }
  return best;
}

}  // namespace inferscope::engine
