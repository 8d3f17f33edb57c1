// engine_bench: prefill and decode tokens/s of a model (default demo.json) with
// telemetry off and on, measured in one run, and the ratio.
//
//   engine_bench [model.json] [--threads N] [--rounds R]
//
// "On" means a real agent shipping every record (ranges per layer, expert
// loads, memory, stages, requests) over TCP to a loopback sink that reads and
// discards the bytes. Off and on alternate for R rounds and the best round of
// each counts, so that noise from other processes on the machine hits both
// alike. Prefill: 8 requests of 128 prompt tokens, one output token each.
// Decode: 32 sequences decoding 48 tokens each after a 16-token prompt; only
// decode-only steps count.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "inferscope/agent.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/telemetry.hpp"

namespace ie = inferscope::engine;

namespace {

// Accepts connections on 127.0.0.1:<ephemeral> and discards what arrives.
class Sink {
 public:
  Sink() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 4) != 0) {
      std::perror("sink");
      std::exit(1);
    }
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      while (!stop_) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) break;
        char buf[65536];
        ssize_t n;
        while ((n = ::read(c, buf, sizeof buf)) > 0) bytes_ += static_cast<uint64_t>(n);
        ::close(c);
      }
    });
  }
  ~Sink() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  int port() const { return port_; }
  uint64_t bytes() const { return bytes_; }

 private:
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> bytes_{0};
  std::thread thread_;
};

std::vector<int32_t> prompt(int n, std::mt19937_64& rng) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = 33 + static_cast<int32_t>(rng() % 94);
  return t;
}

struct Result {
  double prefill_tps = 0, decode_tps = 0;
  double prefill_cpu_us = 0, decode_cpu_us = 0;  // process CPU time per token (all threads)
};

// Process CPU time (every thread, the agent's shipper included): robust to
// other processes competing for the cores, unlike wall-clock throughput.
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

Result run_once(ie::Model& model, ie::Telemetry* telemetry, uint64_t seed) {
  Result r;
  std::mt19937_64 rng(seed);
  double c0 = cpu_seconds();
  {
    ie::Engine e(model, telemetry);
    for (int i = 0; i < 8; ++i) {
      ie::Request q;
      q.id = static_cast<uint64_t>(i + 1);
      q.text = prompt(127, rng);
      q.max_new_tokens = 1;
      e.submit(std::move(q));
    }
    e.run_to_completion();
    const auto& s = e.stats();
    r.prefill_tps = static_cast<double>(s.prefill_tokens) /
                    (static_cast<double>(s.prefill_ns + s.mixed_ns) / 1e9);
    r.prefill_cpu_us = (cpu_seconds() - c0) * 1e6 / static_cast<double>(s.prefill_tokens);
  }
  c0 = cpu_seconds();
  {
    ie::Engine e(model, telemetry);
    for (int i = 0; i < 32; ++i) {
      ie::Request q;
      q.id = static_cast<uint64_t>(100 + i);
      q.text = prompt(15, rng);
      q.max_new_tokens = 48;
      e.submit(std::move(q));
    }
    e.run_to_completion();
    const auto& s = e.stats();
    // Decode-only steps: every sequence's later tokens.
    double decode_only_tokens =
        static_cast<double>(s.decode_tokens) - 32.0;  // first decodes may share a step with prefill
    r.decode_tps = std::max(0.0, decode_only_tokens) / (static_cast<double>(s.decode_ns) / 1e9);
    r.decode_cpu_us =
        (cpu_seconds() - c0) * 1e6 / static_cast<double>(s.decode_tokens + s.prefill_tokens);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = std::string(INFERSCOPE_ENGINE_MODELS) + "/demo.json";
  int threads = 2, rounds = 3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc)
      threads = std::stoi(argv[++i]);
    else if (a == "--rounds" && i + 1 < argc)
      rounds = std::stoi(argv[++i]);
    else if (a.size() > 5 && a.substr(a.size() - 5) == ".json")
      model_path = a;
    else {
      std::fprintf(stderr, "usage: engine_bench [model.json] [--threads N] [--rounds R]\n");
      return 2;
    }
  }
  ie::ModelConfig config = ie::load_model_config(model_path);
  config.cache.prefix_caching = false;  // every round does the same work
  auto be = ie::create_cpu_backend(ie::BackendOptions{threads, 0});
  ie::Model model(*be, config);
  Sink sink;
  inferscope::agent::Config acfg;
  acfg.collector = "tcp://127.0.0.1:" + std::to_string(sink.port());
  acfg.nvtx = false;
  ie::Telemetry telemetry(acfg, config);

  run_once(model, nullptr, 1);  // warm-up: page in weights, start BLAS threads
  Result best_off{0, 0, 1e30, 1e30}, best_on{0, 0, 1e30, 1e30};
  auto keep_best = [](Result& best, const Result& r) {
    best.prefill_tps = std::max(best.prefill_tps, r.prefill_tps);
    best.decode_tps = std::max(best.decode_tps, r.decode_tps);
    best.prefill_cpu_us = std::min(best.prefill_cpu_us, r.prefill_cpu_us);
    best.decode_cpu_us = std::min(best.decode_cpu_us, r.decode_cpu_us);
  };
  for (int r = 0; r < rounds; ++r) {
    // Alternate which goes first, so drift in machine load hits both alike.
    Result off, on;
    if (r % 2 == 0) {
      off = run_once(model, nullptr, 10 + static_cast<uint64_t>(r));
      on = run_once(model, &telemetry, 10 + static_cast<uint64_t>(r));
    } else {
      on = run_once(model, &telemetry, 10 + static_cast<uint64_t>(r));
      off = run_once(model, nullptr, 10 + static_cast<uint64_t>(r));
    }
    keep_best(best_off, off);
    keep_best(best_on, on);
    std::printf("round %d: prefill off %.1f on %.1f tok/s, decode off %.1f on %.1f tok/s\n", r + 1,
                off.prefill_tps, on.prefill_tps, off.decode_tps, on.decode_tps);
  }
  telemetry.agent().flush(std::chrono::milliseconds(2000));
  auto st = telemetry.agent().stats();
  std::printf("\nengine_bench: model %s, backend %s, %d threads, best of %d rounds\n",
              config.name.c_str(), be->name().c_str(), threads, rounds);
  std::printf("%-10s %16s %16s %10s\n", "phase", "telemetry off", "telemetry on", "on/off");
  std::printf("%-10s %12.1f t/s %12.1f t/s %10.3f\n", "prefill", best_off.prefill_tps,
              best_on.prefill_tps, best_on.prefill_tps / best_off.prefill_tps);
  std::printf("%-10s %12.1f t/s %12.1f t/s %10.3f\n", "decode", best_off.decode_tps,
              best_on.decode_tps, best_on.decode_tps / best_off.decode_tps);
  std::printf("%-10s %12.1f us/t %12.1f us/t %10.3f   (process CPU time per token)\n",
              "prefill cpu", best_off.prefill_cpu_us, best_on.prefill_cpu_us,
              best_on.prefill_cpu_us / best_off.prefill_cpu_us);
  std::printf("%-10s %12.1f us/t %12.1f us/t %10.3f\n", "decode cpu", best_off.decode_cpu_us,
              best_on.decode_cpu_us, best_on.decode_cpu_us / best_off.decode_cpu_us);
  std::printf("agent: %llu records sent, %llu dropped, %llu bytes to the sink\n",
              static_cast<unsigned long long>(st.records_sent),
              static_cast<unsigned long long>(st.records_dropped),
              static_cast<unsigned long long>(sink.bytes()));
  return 0;
}
