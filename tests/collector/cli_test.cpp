// The inferscope-collector and inferscope-export binaries as a user runs them:
// port 0, the "listening ..." lines on stdout, SIGTERM for a clean shutdown that
// flushes the trace, then an export of the trace directory.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_client.hpp"

using namespace inferscope::collector::testing;
namespace wire = inferscope::wire;
namespace fs = std::filesystem;

namespace {

struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (out) std::fclose(out);
  }
};

Child spawn(const std::vector<std::string>& args) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  Child c;
  c.pid = ::fork();
  if (c.pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  ::close(fds[1]);
  c.out = ::fdopen(fds[0], "r");
  return c;
}

int wait_exit(Child& c) {
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  c.pid = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST(CollectorCli, PortZeroLinesSigtermAndExport) {
  const fs::path dir = fs::temp_directory_path() / ("inferscope-cli-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  Child c = spawn({INFERSCOPE_COLLECTOR_BIN, "--listen", "tcp://127.0.0.1:0", "--metrics",
                   "127.0.0.1:0", "--viewer", "127.0.0.1:0", "--trace-dir", dir.string(),
                   "--window", "200ms", "--hot-windows", "2"});
  uint16_t ingest = 0, metrics = 0, viewer = 0;
  char line[512];
  for (int i = 0; i < 3 && std::fgets(line, sizeof line, c.out); ++i) {
    std::string l(line);
    const uint16_t port = static_cast<uint16_t>(std::stoi(l.substr(l.rfind(':') + 1)));
    if (l.rfind("listening ingest tcp://127.0.0.1:", 0) == 0) ingest = port;
    if (l.rfind("listening metrics 127.0.0.1:", 0) == 0) metrics = port;
    if (l.rfind("listening viewer 127.0.0.1:", 0) == 0) viewer = port;
  }
  ASSERT_NE(ingest, 0);
  ASSERT_NE(metrics, 0);
  ASSERT_NE(viewer, 0);
  {
    FakeAgent a(ingest);
    a.send({make_hello("cli", 1, 1, 4), wire::StringDef{1, "decode"}});
    for (int w = 0; w < 4; ++w) a.send({make_load(0, w * 200'000'000 + 5, {70, 10, 10, 10})});
    wire::Span s;
    s.name_id = 1;
    s.start_ns = 100;
    s.end_ns = 900;
    a.send({s});
    ASSERT_TRUE(eventually([&] {
      return find_series(parse_exposition(http_get(metrics)),
                         "inferscope_moe_expert_episodes_total",
                         {"model=\"cli\"", "kind=\"hot\""}) == 1.0;
    }));
  }
  ASSERT_EQ(::kill(c.pid, SIGTERM), 0);
  EXPECT_EQ(wait_exit(c), 0);

  const fs::path json = dir / "out.json";
  Child e = spawn({INFERSCOPE_EXPORT_BIN, dir.string(), "-o", json.string()});
  EXPECT_EQ(wait_exit(e), 0);
  std::ifstream in(json);
  const auto j = nlohmann::json::parse(in);
  bool span = false, alert = false;
  for (const auto& ev : j["traceEvents"]) {
    if (ev["ph"] == "X" && ev["name"] == "decode") span = true;
    if (ev.value("cat", "") == "alert") alert = true;
  }
  EXPECT_TRUE(span);
  EXPECT_TRUE(alert);
  fs::remove_all(dir);
}

TEST(CollectorCli, BadArgumentsExitWithAMessage) {
  Child c = spawn({INFERSCOPE_COLLECTOR_BIN, "--window", "soon", "--metrics", "", "--viewer", ""});
  EXPECT_EQ(wait_exit(c), 2);
  Child d =
      spawn({INFERSCOPE_COLLECTOR_BIN, "--listen", "nonsense", "--metrics", "", "--viewer", ""});
  EXPECT_EQ(wait_exit(d), 2);  // a malformed address is a usage error (docs/cli.md)
}
