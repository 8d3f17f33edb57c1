// inferscope-engine under expert parallelism, as real processes over the host
// communicator (Unix sockets in a temp rendezvous directory), on tiny.json:
//   - two ranks serving the same request stream, greedy, produce exactly the
//     tokens a single-rank run produces;
//   - a rank with fewer requests than its peer keeps stepping (idle steps) and
//     both finish, each with its single-rank tokens;
//   - killing one rank (once both are connected) makes the other exit with a
//     clear error;
//   - two ranks with a shuffled --ep-placement (and a layer override) produce
//     the single-rank tokens and report per-expert counts in logical ids; a
//     bad placement file is a clear error.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ep_test_util.hpp"

namespace fs = std::filesystem;
using inferscope::engine::test::TempDir;

namespace {

const std::string kEngine = INFERSCOPE_ENGINE_BIN;
const std::string kTiny = std::string(INFERSCOPE_ENGINE_MODELS) + "/tiny.json";

// A child process with stdout+stderr in a file.
struct Proc {
  pid_t pid = -1;
  fs::path log;
  int status = -1;

  Proc(std::vector<std::string> args, const fs::path& log_path) : log(log_path) {
    pid = fork();
    if (pid == 0) {
      FILE* f = std::freopen(log_path.c_str(), "w", stdout);
      if (!f) _exit(126);
      dup2(fileno(stdout), 2);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Proc() {
    if (pid > 0 && status < 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  // Waits up to `timeout`; false (and the child killed) if it did not exit.
  bool wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) == pid) {
        status = st;
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return false;
  }
  // Polls the log until it contains `needle`; false if the child exits first or
  // `timeout` passes. A liveness deadline only: on a loaded machine a rank may
  // take many seconds to start, so tests wait for what they need, not a time.
  bool wait_for_output(const std::string& needle, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (output().find(needle) != std::string::npos) return true;
      if (waitpid(pid, &status, WNOHANG) == pid) return output().find(needle) != std::string::npos;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  bool ok() const { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  std::string output() const {
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
};

std::vector<std::string> engine_args(int requests, const fs::path& tokens) {
  return {kEngine,
          "--model",
          kTiny,
          "--workload",
          "text",
          "--requests",
          std::to_string(requests),
          "--offline",
          "--collector",
          "",
          "--quiet",
          "--threads",
          "1",
          "--seed",
          "11",
          "--tokens-out",
          tokens.string()};
}

std::vector<std::string> with_ep(std::vector<std::string> a, int rank, int size,
                                 const fs::path& dir) {
  const std::vector<std::string> ep = {
      "--ep-size",          std::to_string(size), "--ep-rank", std::to_string(rank),
      "--ep-rendezvous",    dir.string(),         "--ep-comm", "host",
      "--ep-same-requests", "--ep-timeout",       "20"};
  a.insert(a.end(), ep.begin(), ep.end());
  return a;
}

// request id -> output tokens line.
std::map<std::string, std::string> read_tokens(const fs::path& p) {
  std::map<std::string, std::string> m;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon != std::string::npos) m[line.substr(0, colon)] = line.substr(colon + 1);
  }
  return m;
}

std::map<std::string, std::string> single_rank_tokens(const TempDir& tmp, int requests) {
  const fs::path tok = tmp.path / ("single-" + std::to_string(requests) + ".txt");
  Proc p(engine_args(requests, tok), tmp.path / "single.log");
  EXPECT_TRUE(p.wait(std::chrono::seconds(60)));
  EXPECT_TRUE(p.ok()) << p.output();
  return read_tokens(tok);
}

}  // namespace

TEST(ExpertParallelEngine, TwoRanksGiveTheSingleRankTokens) {
  TempDir tmp{"ep-engine-test"};
  const auto expected = single_rank_tokens(tmp, 10);
  ASSERT_EQ(expected.size(), 10u);
  std::vector<std::unique_ptr<Proc>> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.push_back(std::make_unique<Proc>(
        with_ep(engine_args(10, tmp.path / ("tok" + std::to_string(r))), r, 2, tmp.path),
        tmp.path / ("rank" + std::to_string(r) + ".log")));
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(ranks[static_cast<size_t>(r)]->wait(std::chrono::seconds(60)))
        << "rank " << r << " hung";
    ASSERT_TRUE(ranks[static_cast<size_t>(r)]->ok()) << ranks[static_cast<size_t>(r)]->output();
    EXPECT_EQ(read_tokens(tmp.path / ("tok" + std::to_string(r))), expected) << "rank " << r;
  }
  EXPECT_NE(ranks[0]->output().find("experts [0, 2) of 4"), std::string::npos)
      << ranks[0]->output();
  EXPECT_NE(ranks[1]->output().find("experts [2, 4) of 4"), std::string::npos)
      << ranks[1]->output();
}

TEST(ExpertParallelEngine, RankWithFewerRequestsKeepsSteppingUntilAllFinish) {
  TempDir tmp{"ep-engine-test"};
  const auto expected_many = single_rank_tokens(tmp, 10);
  const auto expected_few = single_rank_tokens(tmp, 2);
  auto a0 = with_ep(engine_args(10, tmp.path / "tok0"), 0, 2, tmp.path);
  auto a1 = with_ep(engine_args(2, tmp.path / "tok1"), 1, 2, tmp.path);
  a1.push_back("--summary-json");
  a1.push_back((tmp.path / "summary1.json").string());
  Proc r0(a0, tmp.path / "rank0.log"), r1(a1, tmp.path / "rank1.log");
  ASSERT_TRUE(r0.wait(std::chrono::seconds(60))) << "rank 0 hung";
  ASSERT_TRUE(r1.wait(std::chrono::seconds(60))) << "rank 1 hung";
  ASSERT_TRUE(r0.ok()) << r0.output();
  ASSERT_TRUE(r1.ok()) << r1.output();
  EXPECT_EQ(read_tokens(tmp.path / "tok0"), expected_many);
  EXPECT_EQ(read_tokens(tmp.path / "tok1"), expected_few);
  std::ifstream in(tmp.path / "summary1.json");
  const auto summary = nlohmann::json::parse(in);
  const auto& ep = summary.at("expert_parallel");
  EXPECT_EQ(ep.at("rank"), 1);
  EXPECT_GT(ep.at("idle_steps").get<uint64_t>(), 0u)
      << "rank 1 ran out of work first and must keep stepping";
  uint64_t computed = 0;
  for (const auto& l : ep.at("layers")) computed += l.at("rows_computed").get<uint64_t>();
  EXPECT_GT(computed, 0u);
}

TEST(ExpertParallelEngine, KilledRankMakesThePeerExitWithAClearError) {
  TempDir tmp{"ep-engine-test"};
  std::vector<std::string> base = {
      kEngine,  "--model", kTiny,         "--workload", "text",    "--duration", "60",
      "--rate", "50",      "--collector", "",           "--quiet", "--threads",  "1"};
  Proc r0(with_ep(base, 0, 2, tmp.path), tmp.path / "rank0.log");
  Proc r1(with_ep(base, 1, 2, tmp.path), tmp.path / "rank1.log");
  // Kill rank 1 only once both ranks are connected: each prints its "expert
  // parallel" line after the communicator's rendezvous returned (all peers
  // connected). Killing it earlier tests the rendezvous timeout instead.
  ASSERT_TRUE(r1.wait_for_output("expert parallel: rank 1", std::chrono::seconds(60)))
      << "rank 1 did not connect: " << r1.output();
  ASSERT_TRUE(r0.wait_for_output("expert parallel: rank 0", std::chrono::seconds(60)))
      << "rank 0 did not connect: " << r0.output();
  ASSERT_EQ(waitpid(r0.pid, nullptr, WNOHANG), 0) << "rank 0 exited early: " << r0.output();
  const auto t0 = std::chrono::steady_clock::now();
  kill(r1.pid, SIGKILL);
  r1.wait(std::chrono::seconds(30));
  ASSERT_TRUE(r0.wait(std::chrono::seconds(60))) << "rank 0 hung after its peer died";
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(r0.ok());
  const std::string out = r0.output();
  EXPECT_NE(out.find("rank 1"), std::string::npos) << out;
  std::printf("rank 0 exited %.2f s after rank 1 was killed: %s\n", secs,
              out.substr(out.rfind("inferscope-engine:")).c_str());
}

namespace {

// tiny.json has 4 experts: rank 0 holds {1, 2} by default and {0, 3} in layer 2.
void write_shuffled_placement(const fs::path& p) {
  std::ofstream(p)
      << R"({"ranks": 2, "expert_to_rank": [1, 0, 0, 1], "layers": {"2": [[0], [1], [1], [0]]}})";
}

// layer -> routed counts per expert, from a --summary-json file.
std::map<int, std::vector<uint64_t>> routed_of(const fs::path& summary_path) {
  std::ifstream in(summary_path);
  const auto summary = nlohmann::json::parse(in);
  std::map<int, std::vector<uint64_t>> m;
  for (const auto& l : summary.at("moe_layers"))
    m[l.at("layer").get<int>()] = l.at("routed").get<std::vector<uint64_t>>();
  return m;
}

}  // namespace

TEST(ExpertParallelEngine, ShuffledPlacementGivesTheSingleRankTokensAndLogicalCounts) {
  TempDir tmp{"ep-engine-test"};
  const fs::path placement = tmp.path / "placement.json";
  write_shuffled_placement(placement);
  auto single_args = engine_args(10, tmp.path / "single.txt");
  single_args.insert(single_args.end(), {"--summary-json", (tmp.path / "single.json").string()});
  Proc single(single_args, tmp.path / "single.log");
  ASSERT_TRUE(single.wait(std::chrono::seconds(60)));
  ASSERT_TRUE(single.ok()) << single.output();
  const auto expected = read_tokens(tmp.path / "single.txt");
  ASSERT_EQ(expected.size(), 10u);
  const auto expected_routed = routed_of(tmp.path / "single.json");
  ASSERT_EQ(expected_routed.size(), 2u);  // MoE layers 0 and 2

  std::vector<std::unique_ptr<Proc>> ranks;
  for (int r = 0; r < 2; ++r) {
    auto a = with_ep(engine_args(10, tmp.path / ("tok" + std::to_string(r))), r, 2, tmp.path);
    a.insert(a.end(), {"--ep-placement", placement.string(), "--summary-json",
                       (tmp.path / ("summary" + std::to_string(r) + ".json")).string()});
    ranks.push_back(std::make_unique<Proc>(a, tmp.path / ("rank" + std::to_string(r) + ".log")));
  }
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    ASSERT_TRUE(ranks[static_cast<size_t>(r)]->wait(std::chrono::seconds(60))) << "hung";
    ASSERT_TRUE(ranks[static_cast<size_t>(r)]->ok()) << ranks[static_cast<size_t>(r)]->output();
    EXPECT_EQ(read_tokens(tmp.path / ("tok" + std::to_string(r))), expected);
    // Same requests as the single-rank run: the same routing, reported in the
    // model's own expert ids whatever slots the placement gave them.
    EXPECT_EQ(routed_of(tmp.path / ("summary" + std::to_string(r) + ".json")), expected_routed);
    EXPECT_NE(ranks[static_cast<size_t>(r)]->output().find("placement " + placement.string()),
              std::string::npos);
  }

  // One rank: the file is checked but changes nothing.
  auto one = engine_args(10, tmp.path / "one.txt");
  one.insert(one.end(), {"--ep-placement", placement.string()});
  Proc p1(one, tmp.path / "one.log");
  ASSERT_TRUE(p1.wait(std::chrono::seconds(60)));
  ASSERT_TRUE(p1.ok()) << p1.output();
  EXPECT_EQ(read_tokens(tmp.path / "one.txt"), expected);
}

TEST(ExpertParallelEngine, BadPlacementFileIsAClearError) {
  TempDir tmp{"ep-engine-test"};
  const fs::path uneven = tmp.path / "uneven.json", replicas = tmp.path / "replicas.json";
  std::ofstream(uneven) << R"({"expert_to_rank": [0, 0, 0, 1]})";
  std::ofstream(replicas) << R"({"expert_to_ranks": [[0, 1], [0], [1], [1]]})";
  for (const auto& [file, part] :
       {std::pair{uneven, std::string("rank 0 holds 3 experts")},
        std::pair{replicas, std::string("not supported by the engine")}}) {
    auto a = engine_args(2, tmp.path / "tok.txt");
    a.insert(a.end(), {"--ep-placement", file.string()});  // one rank: still checked
    Proc p(a, tmp.path / "bad.log");
    ASSERT_TRUE(p.wait(std::chrono::seconds(30)));
    EXPECT_FALSE(p.ok());
    EXPECT_NE(p.output().find(part), std::string::npos) << p.output();
    EXPECT_NE(p.output().find(file.string()), std::string::npos) << p.output();
  }
}
