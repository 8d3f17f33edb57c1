// inferscope-engine: serve a synthetic workload on the reference engine and
// print a summary. Telemetry goes to the collector through the agent unless
// --collector "" turns it off.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>

#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/model.hpp"
#include "inferscope/engine/summary.hpp"
#include "inferscope/engine/telemetry.hpp"
#include "inferscope/engine/workload.hpp"

namespace ie = inferscope::engine;

namespace {
std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"inferscope reference engine: hybrid attention/SSM MoE with a vision front end"};
  std::string model_path, workload = "skewed-multimodal", backend = "cpu", weights, save_weights,
                          summary_json, image_path;
  std::string collector = "\x01";  // sentinel: not given -> environment / agent default
  int requests = 0, threads = 2;
  double duration = 0.0, rate = -1.0, topic_period = -1.0, temperature = -1.0;
  uint64_t seed = 1;
  bool offline = false, quiet = false;
  app.add_option("--model", model_path, "model JSON (reference_engine/models/*.json)")->required();
  app.add_option("--workload", workload, "skewed-multimodal | balanced | text");
  app.add_option("--requests", requests, "stop after this many requests");
  app.add_option("--duration", duration, "stop generating requests after this many seconds");
  app.add_option("--collector", collector,
                 "tcp://HOST:PORT or unix:///path; \"\" turns telemetry off (default: $INFERSCOPE_COLLECTOR "
                 "or tcp://127.0.0.1:7431)");
  app.add_option("--seed", seed, "workload seed");
  app.add_option("--threads", threads, "CPU threads (BLAS and the backend's loops)");
  app.add_option("--backend", backend, "cpu or cuda (when built)");
  app.add_option("--weights", weights, "load weights from a safetensors file instead of the seeded init");
  app.add_option("--save-weights", save_weights, "write the weights to a safetensors file and continue");
  app.add_option("--summary-json", summary_json, "also write the summary as JSON to this file");
  app.add_option("--rate", rate, "requests per second (Poisson); default from the workload");
  app.add_option("--topic-period", topic_period, "seconds each topic dominates (skewed workloads)");
  app.add_option("--temperature", temperature, "sampling temperature (0 = greedy)");
  app.add_option("--image", image_path, "binary PPM (P6) used for every image request");
  app.add_flag("--offline", offline, "submit every request at once (throughput run)");
  app.add_flag("--quiet", quiet, "no progress lines");
  CLI11_PARSE(app, argc, argv);
  if (requests <= 0 && duration <= 0.0) {
    std::cerr << "inferscope-engine: give --requests N or --duration S\n";
    return 2;
  }

  try {
    ie::ModelConfig config = ie::load_model_config(model_path);
    auto be = ie::create_backend(backend, ie::BackendOptions{threads, 0});
    ie::Model model(*be, config, weights);
    if (!save_weights.empty()) model.weights().save(save_weights);

    std::unique_ptr<ie::Telemetry> telemetry;
    inferscope::agent::Config acfg = inferscope::agent::Config::from_environment();
    if (collector != "\x01") acfg.collector = collector;
    if (!acfg.collector.empty()) telemetry = std::make_unique<ie::Telemetry>(acfg, config);

    ie::WorkloadSpec spec = ie::workload_by_name(workload);
    if (rate > 0) spec.rate = rate;
    if (topic_period > 0) spec.topic_period = topic_period;
    if (temperature >= 0) spec.temperature = static_cast<float>(temperature);
    ie::WorkloadGenerator gen(spec, config, seed);
    if (!image_path.empty()) gen.set_image(ie::load_ppm(image_path, config.vision.image_size));

    auto engine_ptr = std::make_unique<ie::Engine>(model, telemetry.get());
    ie::Engine& engine = *engine_ptr;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::printf("inferscope-engine: model %s (%d layers %s/%s), backend %s, %d threads, workload %s, telemetry %s\n",
                config.name.c_str(), config.n_layers(), config.mixers.c_str(), config.ffns.c_str(),
                be->name().c_str(), threads, workload.c_str(),
                telemetry ? acfg.collector.c_str() : "off");
    std::fflush(stdout);

    const int64_t start = inferscope::agent::now_ns();
    int generated = 0;
    double next_arrival = 0.0;
    ie::Request next = gen.next(&next_arrival);
    auto more = [&] {
      if (g_stop) return false;
      if (requests > 0 && generated >= requests) return false;
      if (duration > 0 && next_arrival > duration) return false;
      return true;
    };
    std::vector<ie::RequestResult> results;
    int64_t last_report = start;
    while (true) {
      const int64_t now = inferscope::agent::now_ns();
      const double now_s = static_cast<double>(now - start) / 1e9;
      while (more() && (offline || next_arrival <= now_s)) {
        next.arrival_ns = offline ? now : start + static_cast<int64_t>(next_arrival * 1e9);
        engine.submit(std::move(next));
        ++generated;
        next = gen.next(&next_arrival);
      }
      if (engine.idle()) {
        if (!more()) break;
        double wait = std::min(0.05, next_arrival - now_s);
        if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
        continue;
      }
      engine.step();
      for (auto& r : engine.take_finished()) results.push_back(std::move(r));
      if (!quiet && now - last_report > 5'000'000'000) {
        last_report = now;
        const auto& st = engine.stats();
        std::printf("[%6.1f s] requests %zu done, %zu running, %zu waiting; tokens prefill %llu decode %llu\n", now_s,
                    results.size(), engine.running(), engine.waiting(),
                    static_cast<unsigned long long>(st.prefill_tokens),
                    static_cast<unsigned long long>(st.decode_tokens));
        std::fflush(stdout);
      }
    }
    for (auto& r : engine.take_finished()) results.push_back(std::move(r));
    const double wall = static_cast<double>(inferscope::agent::now_ns() - start) / 1e9;
    auto summary = ie::make_summary(config, model.footprint(), engine.stats(), results, wall);
    if (telemetry) {
      auto st = telemetry->agent().stats();
      telemetry->agent().flush(std::chrono::milliseconds(2000));
      summary["telemetry"] = {{"collector", acfg.collector},
                              {"records_sent", st.records_sent},
                              {"records_dropped", st.records_dropped},
                              {"connected", st.connected}};
    }
    std::fputs(ie::format_summary(summary).c_str(), stdout);
    if (telemetry) {
      const auto& t = summary["telemetry"];
      std::printf("telemetry   %s: %llu records sent, %llu dropped\n", acfg.collector.c_str(),
                  static_cast<unsigned long long>(t["records_sent"].get<uint64_t>()),
                  static_cast<unsigned long long>(t["records_dropped"].get<uint64_t>()));
    }
    // The engine's last memory / prefix report goes out when it is destroyed;
    // wait for it to reach the collector.
    engine_ptr.reset();
    if (telemetry) telemetry->agent().flush(std::chrono::milliseconds(2000));
    if (!summary_json.empty()) {
      std::ofstream out(summary_json);
      out << summary.dump(2) << "\n";
      if (!out) throw std::runtime_error("cannot write '" + summary_json + "'");
    }
  } catch (const std::exception& e) {
    std::cerr << "inferscope-engine: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
