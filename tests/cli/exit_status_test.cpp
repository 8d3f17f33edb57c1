// One exit-status convention for every binary and script (docs/cli.md), as a
// user meets it: 2 and a message naming the flag for a bad command line, 1 and
// a message naming the flag, the address and the OS's reason when a port is in
// use or a file cannot be read, 0 for --help. Each case runs the real program.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct Result {
  int status = -1;  // exit status; 128 + signal when killed
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs argv[0] with stdout and stderr captured in files (no pipe to fill up).
// A program that is still running after 60 s is killed: the status then says
// so (137) instead of the test hanging, and the expectation fails.
Result run(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  static int counter = 0;
  const fs::path base =
      fs::temp_directory_path() /
      ("inferscope-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  const fs::path out = base.string() + ".out", err = base.string() + ".err";
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(o, 1);
    ::dup2(e, 2);
    const int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    for (const auto& kv : env) ::putenv(const_cast<char*>(kv.c_str()));
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    _exit(127);
  }
  Result r;
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

std::string script(const std::string& name) {
  return std::string(INFERSCOPE_SOURCE_DIR) + "/scripts/" + name;
}

#define EXPECT_USAGE_ERROR(result, word)                        \
  do {                                                          \
    const Result& r_ = (result);                                \
    EXPECT_EQ(r_.status, 2) << "stderr: " << r_.err;            \
    EXPECT_NE(r_.err.find(word), std::string::npos)             \
        << "stderr does not name " << (word) << ": " << r_.err; \
  } while (0)

#define EXPECT_RUNTIME_FAILURE(result, word)                    \
  do {                                                          \
    const Result& r_ = (result);                                \
    EXPECT_EQ(r_.status, 1) << "stderr: " << r_.err;            \
    EXPECT_NE(r_.err.find(word), std::string::npos)             \
        << "stderr does not name " << (word) << ": " << r_.err; \
  } while (0)

// A loopback port held by a listening socket for the test's lifetime.
class BusyPort {
 public:
  BusyPort() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(fd_, 4) != 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      ADD_FAILURE() << "cannot hold a loopback port";
    port_ = ntohs(a.sin_port);
  }
  ~BusyPort() { ::close(fd_); }
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

// The collector with the arguments; quiet: a free ingest port and no metrics
// or viewer listener unless the case sets them, so no default port (7431,
// 9464, 7433) in use on the machine matters.
std::vector<std::string> collector(std::vector<std::string> args, bool quiet = true) {
  args.insert(args.begin(), INFERSCOPE_COLLECTOR_BIN);
  if (quiet) {
    bool has_listen = false, has_metrics = false, has_viewer = false;
    for (const auto& a : args) {
      has_listen |= a == "--listen";
      has_metrics |= a == "--metrics";
      has_viewer |= a == "--viewer";
    }
    if (!has_listen) args.insert(args.end(), {"--listen", "tcp://127.0.0.1:0"});
    if (!has_metrics) args.insert(args.end(), {"--metrics", ""});
    if (!has_viewer) args.insert(args.end(), {"--viewer", ""});
  }
  return args;
}

}  // namespace

TEST(ExitStatus, CollectorUsageErrorsExit2NamingTheFlag) {
  EXPECT_USAGE_ERROR(run(collector({"--no-such-flag"})), "--no-such-flag");
  EXPECT_USAGE_ERROR(run(collector({"--listen", "foo"})), "--listen");
  EXPECT_USAGE_ERROR(run(collector({"--metrics", "no-port-here"})), "--metrics");
  EXPECT_USAGE_ERROR(run(collector({"--max-connections", "many"})), "--max-connections");
  EXPECT_USAGE_ERROR(run(collector({"--window", "soon"})), "--window");
  const Result help = run(collector({"--help"}, false));
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("--listen"), std::string::npos) << help.out;
}

TEST(ExitStatus, CollectorRuntimeFailuresExit1) {
  EXPECT_RUNTIME_FAILURE(run(collector({"--auth-token-file", "/nonexistent/token"})),
                         "--auth-token-file");
  EXPECT_RUNTIME_FAILURE(run(collector({"--placement", "/nonexistent/placement.json"})),
                         "--placement");
}

// A port in use: the message names the flag, the address and the OS's reason,
// for each listening flag (the metrics one used to say only "null context when
// constructing CivetServer").
TEST(ExitStatus, CollectorPortInUseNamesFlagAddressAndReason) {
  BusyPort busy;
  for (const std::string flag : {"--listen", "--metrics", "--viewer"}) {
    const std::string value = flag == "--listen" ? "tcp://" + busy.address() : busy.address();
    const Result r = run(collector({flag, value}));
    EXPECT_RUNTIME_FAILURE(r, flag + " " + value);
    EXPECT_NE(r.err.find("in use"), std::string::npos) << flag << ": " << r.err;
  }
}

TEST(ExitStatus, Export) {
  // Required arguments present: a missing one would be reported first.
  EXPECT_USAGE_ERROR(run({INFERSCOPE_EXPORT_BIN, "x", "-o", "y", "--no-such-flag"}),
                     "--no-such-flag");
  EXPECT_USAGE_ERROR(run({INFERSCOPE_EXPORT_BIN, "some.istrace"}), "--output");
  EXPECT_USAGE_ERROR(run({INFERSCOPE_EXPORT_BIN, "x", "-o", "y", "--from", "early"}), "--from");
  EXPECT_RUNTIME_FAILURE(
      run({INFERSCOPE_EXPORT_BIN, "/nonexistent/trace", "-o", "/tmp/never.json"}),
      "/nonexistent/trace");
  EXPECT_EQ(run({INFERSCOPE_EXPORT_BIN, "--help"}).status, 0);
}

#ifdef INFERSCOPE_ENGINE_BIN
TEST(ExitStatus, Engine) {
  const std::string model =
      std::string(INFERSCOPE_SOURCE_DIR) + "/reference_engine/models/tiny.json";
  const std::string e = INFERSCOPE_ENGINE_BIN;
  EXPECT_USAGE_ERROR(run({e, "--model", model, "--requests", "1", "--no-such-flag"}),
                     "--no-such-flag");
  EXPECT_USAGE_ERROR(run({e, "--model", model, "--requests", "1", "--workload", "nope"}),
                     "--workload");
  EXPECT_USAGE_ERROR(run({e, "--model", model, "--requests", "many"}), "--requests");
  EXPECT_USAGE_ERROR(run({e, "--model", model}), "--requests");
  EXPECT_USAGE_ERROR(
      run({e, "--model", model, "--requests", "1", "--ep-size", "2", "--ep-rank", "2"}),
      "--ep-rank");
  EXPECT_RUNTIME_FAILURE(
      run({e, "--model", "/nonexistent/model.json", "--requests", "1", "--collector", ""}),
      "/nonexistent/model.json");
  EXPECT_EQ(run({e, "--help"}).status, 0);
}
#endif

#ifdef INFERSCOPE_VIEWER_BIN
TEST(ExitStatus, Viewer) {
  const std::string v = INFERSCOPE_VIEWER_BIN;
  EXPECT_USAGE_ERROR(run({v, "--no-such-flag"}), "--no-such-flag");
  EXPECT_USAGE_ERROR(run({v, "--theme", "purple"}), "--theme");
  EXPECT_USAGE_ERROR(run({v, "--view", "nope"}), "--view");
  EXPECT_RUNTIME_FAILURE(
      run({v, "--connect", "127.0.0.1:1", "--auth-token-file", "/nonexistent/token"}),
      "--auth-token-file");
  EXPECT_EQ(run({v, "--help"}).status, 0);
}
#endif

// The scripts that take arguments: a bad one exits 2 before anything is built
// or started; --help exits 0.
TEST(ExitStatus, Scripts) {
  EXPECT_USAGE_ERROR(run({"bash", script("run-demo.sh"), "--bogus"}), "--bogus");
  EXPECT_USAGE_ERROR(run({"bash", script("run-demo.sh"), "--duration", "long"}), "--duration");
  EXPECT_USAGE_ERROR(run({"bash", script("soak.sh"), "--bogus"}), "--bogus");
  EXPECT_USAGE_ERROR(run({"bash", script("gpu-check"), "--bogus"}), "--bogus");
  EXPECT_USAGE_ERROR(run({"bash", script("fuzz.sh"), "soon"}), "soon");
  EXPECT_USAGE_ERROR(run({"bash", script("gpu-ep-scenario")}), "BUILD_DIR");
  EXPECT_USAGE_ERROR(run({"bash", script("ep-run")}), "ep-run N");
  EXPECT_USAGE_ERROR(run({"bash", script("ep-run"), "2", "--ep-rank", "1"}), "--ep-rank");
  EXPECT_USAGE_ERROR(
      run({"python3", script("ep-placement"), "--contiguous", "--ranks", "2", "x.json", "--bogus"}),
      "--bogus");
  EXPECT_USAGE_ERROR(
      run({"python3", script("ep-placement"), "--contiguous", "--ranks", "0", "x.json"}),
      "--ranks");
  EXPECT_RUNTIME_FAILURE(
      run({"python3", script("ep-placement"), "--contiguous", "--ranks", "2", "/nonexistent.json"}),
      "/nonexistent.json");
  for (const char* s : {"run-demo.sh", "soak.sh", "gpu-check"})
    EXPECT_EQ(run({"bash", script(s), "--help"}).status, 0) << s;
}
