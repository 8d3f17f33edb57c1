// ep_bench: expert parallelism, EP=N against EP=1, for the skewed-ep and the
// balanced workload, printed as one table.
//
//   ep_bench [model.json] [--ranks N] [--backend cpu|cuda] [--threads T]
//            [--requests R] [--workloads skewed-ep,balanced] [--capacity-factor X]
//
// --capacity-factor 0 runs dropless (as DeepSeek-style EP serving does): the
// hot experts then take all their rows and the hot rank shows in the compute
// and in the other ranks' combine wait; with the model's capacity the excess
// is dropped by the routing rank instead.
// Ranks are threads of this process, each with its own backend (cuda: rank r
// on GPU r), its own engine and its own R requests (workload seed + rank),
// talking over the host communicator (cpu) or NCCL (cuda) through a temp
// rendezvous directory. EP=1 serves rank 0's requests alone with every expert.
// Columns: steps, wall seconds, mean ms per step, decode and prefill tok/s of
// the rank, and per MoE layer per step the dispatch / experts / combine ms and
// the rows this rank's experts computed (own + received) per step. "r0 load":
// the share of the rank's routed assignments (before capacity) whose expert
// sits on rank 0's shard (N ranks: 1/N is balanced). On the CPU
// the ranks share the machine's cores; absolute numbers mean little there,
// the split between phases and ranks is the point.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/ep_workload.hpp"
#include "inferscope/engine/workload.hpp"

namespace ie = inferscope::engine;
namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model = std::string(INFERSCOPE_ENGINE_MODELS) + "/demo.json";
  std::string backend = "cpu";
  int ranks = 2, threads = 1, requests = 16;
  double capacity_factor = -1.0;  // >= 0 overrides the model's
  std::vector<std::string> workloads = {"skewed-ep", "balanced"};
};

struct RankResult {
  uint64_t steps = 0, idle_steps = 0, decode_tokens = 0, prefill_tokens = 0;
  double wall_s = 0;
  double dispatch_ms = 0, compute_ms = 0, combine_ms = 0,
         rows_per_step = 0;  // per MoE layer per step
  double rank0_share =
      0;  // share of this rank's routed assignments whose expert is on rank 0's shard
  std::string error;
};

RankResult run_rank(const Options& o, const std::string& workload, int rank, int ranks,
                    const std::string& dir) {
  RankResult res;
  try {
    ie::ModelConfig config = ie::load_model_config(o.model);
    if (o.capacity_factor >= 0) config.moe.capacity_factor = static_cast<float>(o.capacity_factor);
    auto be = ie::create_backend(o.backend, {o.threads, o.backend == "cuda" ? rank : 0});
    std::unique_ptr<ie::Communicator> comm;
    ie::ExpertPlacement placement;
    if (ranks > 1) {
      placement = ie::ExpertPlacement::make(config.moe.experts, ranks, rank);
      ie::CommOptions co;
      co.rank = rank;
      co.size = ranks;
      co.rendezvous_dir = dir;
      co.timeout = std::chrono::milliseconds(120000);
      comm = ie::create_communicator(be->host_memory() ? "host" : "nccl", *be, co);
    }
    ie::Model model(*be, config, "", placement);
    if (comm) model.attach_expert_parallel(*comm);
    ie::WorkloadSpec spec = ie::workload_by_name(workload);
    if (spec.fixed_topic >= 0) {  // skewed-ep: rank 0 of the EP=N placement hot
      spec.fixed_topic = ie::ep_hot_topic(config, o.ranks, 0);
      for (const auto& hb : ie::ep_hot_bytes(model, o.ranks, 0, 12))
        spec.alphabet.push_back(hb.byte);
    }
    ie::WorkloadGenerator gen(spec, config, 1000 + static_cast<uint64_t>(rank));
    ie::Engine engine(model, nullptr);
    for (int i = 0; i < o.requests; ++i) {
      double at = 0;
      engine.submit(gen.next(&at));
    }
    if (comm) comm->any(true);  // start together
    const auto t0 = std::chrono::steady_clock::now();
    engine.run_to_completion();
    be->synchronize();
    res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto& st = engine.stats();
    res.steps = st.steps + st.idle_steps;
    res.idle_steps = st.idle_steps;
    res.decode_tokens = st.decode_tokens;
    res.prefill_tokens = st.prefill_tokens;
    const int32_t shard = config.moe.experts / o.ranks;  // rank 0 of the EP=N placement
    uint64_t routed = 0, routed_r0 = 0;
    for (const auto& l : st.layers)
      for (size_t e = 0; e < l.routed.size(); ++e) {
        routed += l.routed[e];
        if (static_cast<int32_t>(e) < shard) routed_r0 += l.routed[e];
      }
    res.rank0_share = routed ? static_cast<double>(routed_r0) / static_cast<double>(routed) : 0.0;
    uint64_t layer_steps = 0, rows = 0;
    int64_t d = 0, c = 0, m = 0;
    for (const auto& l : st.ep_layers) {
      layer_steps += l.steps;
      d += l.dispatch_ns;
      c += l.compute_ns;
      m += l.combine_ns;
      rows += l.rows_computed;
    }
    if (layer_steps > 0) {
      const double n = static_cast<double>(layer_steps);
      res.dispatch_ms = static_cast<double>(d) / 1e6 / n;
      res.compute_ms = static_cast<double>(c) / 1e6 / n;
      res.combine_ms = static_cast<double>(m) / 1e6 / n;
      res.rows_per_step = static_cast<double>(rows) / n;
    }
  } catch (const std::exception& e) {
    res.error = e.what();
  }
  return res;
}

std::vector<RankResult> run(const Options& o, const std::string& workload, int ranks) {
  std::string dir = (fs::temp_directory_path() / "ep-bench-XXXXXX").string();
  if (!mkdtemp(dir.data())) {
    std::perror("mkdtemp");
    std::exit(1);
  }
  std::vector<RankResult> out(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back(
        [&, r] { out[static_cast<size_t>(r)] = run_rank(o, workload, r, ranks, dir); });
  for (auto& t : threads) t.join();
  std::error_code ec;
  fs::remove_all(dir, ec);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "ep_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--ranks")
      o.ranks = std::atoi(next().c_str());
    else if (a == "--backend")
      o.backend = next();
    else if (a == "--threads")
      o.threads = std::atoi(next().c_str());
    else if (a == "--requests")
      o.requests = std::atoi(next().c_str());
    else if (a == "--capacity-factor")
      o.capacity_factor = std::atof(next().c_str());
    else if (a == "--workloads") {
      o.workloads.clear();
      std::stringstream ss(next());
      for (std::string w; std::getline(ss, w, ',');) o.workloads.push_back(w);
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr,
                   "usage: ep_bench [model.json] [--ranks N] [--backend cpu|cuda] [--threads T] "
                   "[--requests R] [--workloads skewed-ep,balanced] [--capacity-factor X]\n");
      return 2;
    } else {
      o.model = a;
    }
  }
  if (o.ranks < 2) {
    std::fprintf(stderr, "ep_bench: --ranks must be >= 2\n");
    return 2;
  }
  std::printf(
      "ep_bench: %s, backend %s, %d ranks (threads of one process), %d requests per rank, %d CPU "
      "threads "
      "per rank, capacity factor %s\n",
      fs::path(o.model).filename().c_str(), o.backend.c_str(), o.ranks, o.requests, o.threads,
      o.capacity_factor >= 0 ? std::to_string(o.capacity_factor).c_str() : "of the model");
  std::printf("%-10s %3s %4s %6s %6s %8s %8s %9s %9s %7s | %9s %9s %9s %8s\n", "workload", "EP",
              "rank", "steps", "idle", "wall s", "ms/step", "decode/s", "prefill/s", "r0 load",
              "disp ms", "exp ms", "comb ms", "rows");
  int failures = 0;
  for (const auto& w : o.workloads) {
    for (int ranks : {1, o.ranks}) {
      const auto res = run(o, w, ranks);
      for (int r = 0; r < ranks; ++r) {
        const RankResult& x = res[static_cast<size_t>(r)];
        if (!x.error.empty()) {
          std::printf("%-10s %3d %4d  failed: %s\n", w.c_str(), ranks, r, x.error.c_str());
          ++failures;
          continue;
        }
        const double wall = std::max(x.wall_s, 1e-9);
        std::printf("%-10s %3d %4d %6llu %6llu %8.3f %8.3f %9.1f %9.1f %7.3f", w.c_str(), ranks, r,
                    static_cast<unsigned long long>(x.steps),
                    static_cast<unsigned long long>(x.idle_steps), x.wall_s,
                    x.steps ? 1e3 * x.wall_s / static_cast<double>(x.steps) : 0.0,
                    static_cast<double>(x.decode_tokens) / wall,
                    static_cast<double>(x.prefill_tokens) / wall, x.rank0_share);
        if (ranks > 1)
          std::printf(" | %9.3f %9.3f %9.3f %8.1f\n", x.dispatch_ms, x.compute_ms, x.combine_ms,
                      x.rows_per_step);
        else
          std::printf(" | %9s %9s %9s %8s\n", "-", "-", "-", "-");
      }
    }
  }
  return failures ? 1 : 0;
}
