// inferscope-engine: serve a synthetic workload on the reference engine and
// print a summary. Telemetry goes to the collector through the agent unless
// --collector "" turns it off. Exit status (docs/cli.md): 2 for a bad command
// line, 1 when the run fails, 0 on success.
#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "inferscope/agent.hpp"
#include "inferscope/cli/exit_status.hpp"
#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/engine.hpp"
#include "inferscope/engine/ep_workload.hpp"
#include "inferscope/engine/expert_parallel.hpp"
#include "inferscope/engine/model.hpp"
#include "inferscope/engine/placement_file.hpp"
#include "inferscope/engine/summary.hpp"
#include "inferscope/engine/telemetry.hpp"
#include "inferscope/engine/workload.hpp"

namespace ie = inferscope::engine;

namespace {
// First SIGINT/SIGTERM: stop generating requests and drain the running ones
// (up to --drain-timeout); a second one stops at once.
std::atomic<int> g_signals{0};
void on_signal(int) {
  g_signals.fetch_add(1);
}

// Results kept for the summary's latency percentiles: a uniform sample of at
// most this many (reservoir), without their token vectors, so a long run's
// memory stays bounded.
constexpr size_t kMaxKeptResults = 100000;

nlohmann::json ep_summary(const ie::EngineStats& st, const ie::ExpertPlacement& pl,
                          const std::string& comm) {
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < st.ep_layers.size(); ++l) {
    const auto& e = st.ep_layers[l];
    if (e.steps == 0) continue;
    const double n = static_cast<double>(e.steps);
    layers.push_back({{"layer", l},
                      {"steps", e.steps},
                      {"dispatch_ms_per_step", static_cast<double>(e.dispatch_ns) / 1e6 / n},
                      {"compute_ms_per_step", static_cast<double>(e.compute_ns) / 1e6 / n},
                      {"combine_ms_per_step", static_cast<double>(e.combine_ns) / 1e6 / n},
                      {"rows_sent", e.rows_sent},
                      {"rows_computed", e.rows_computed}});
  }
  return {{"rank", pl.rank},
          {"size", pl.ranks},
          {"comm", comm},
          {"experts_per_rank", pl.per_rank()},
          {"idle_steps", st.idle_steps},
          {"layers", layers}};
}
}  // namespace

// [SECTION] main: options, model, workload, serving loop, summary
int main(int argc, char** argv) {
  CLI::App app{"inferscope reference engine: hybrid attention/SSM MoE with a vision front end"};
  std::string model_path, workload = "skewed-multimodal", backend = "cpu", weights, save_weights,
                          summary_json, image_path, tokens_out, ep_comm, ep_rendezvous,
                          ep_placement;
  std::string collector = "\x01";  // sentinel: not given -> environment / agent default
  int requests = 0, threads = 2, device = 0, ep_size = 1, ep_rank = 0;
  double duration = 0.0, rate = -1.0, topic_period = -1.0, temperature = -1.0, drain_timeout = 10.0,
         ep_timeout = 60.0, capacity_factor = -1.0;
  uint64_t seed = 1;
  bool offline = false, quiet = false, ep_same_requests = false;
  app.add_option("--model", model_path, "model JSON (reference_engine/models/*.json)")->required();
  app.add_option("--workload", workload, "skewed-multimodal | balanced | text | skewed-ep")
      ->check(CLI::IsMember(ie::workload_names()));
  app.add_option("--requests", requests, "stop after this many requests");
  app.add_option("--duration", duration, "stop generating requests after this many seconds");
  app.add_option(
      "--collector", collector,
      "tcp://HOST:PORT or unix:///path; \"\" turns telemetry off (default: $INFERSCOPE_COLLECTOR "
      "or tcp://127.0.0.1:7431)");
  app.add_option("--seed", seed, "workload seed");
  app.add_option("--threads", threads, "CPU threads (BLAS and the backend's loops)");
  app.add_option("--backend", backend, "cpu or cuda (when built)")
      ->check(CLI::IsMember(ie::backend_names()));
  app.add_option("--device", device, "GPU ordinal for the cuda backend");
  app.add_option("--weights", weights,
                 "load weights from a safetensors file instead of the seeded init");
  app.add_option("--save-weights", save_weights,
                 "write the weights to a safetensors file and continue");
  app.add_option("--summary-json", summary_json, "also write the summary as JSON to this file");
  app.add_option("--rate", rate, "requests per second (Poisson); default from the workload");
  app.add_option("--topic-period", topic_period, "seconds each topic dominates (skewed workloads)");
  app.add_option("--temperature", temperature, "sampling temperature (0 = greedy)");
  app.add_option("--capacity-factor", capacity_factor,
                 "override the model's MoE capacity factor (0 = dropless: no token is dropped, hot "
                 "experts take all)");
  app.add_option("--image", image_path, "binary PPM (P6) used for every image request");
  app.add_flag("--offline", offline, "submit every request at once (throughput run)");
  app.add_flag("--quiet", quiet, "no progress lines");
  app.add_option("--tokens-out", tokens_out,
                 "write each finished request's output tokens (\"id: t t t\") here");
  app.add_option("--drain-timeout", drain_timeout,
                 "seconds to finish running requests after SIGINT/SIGTERM");
  // Expert parallelism (docs/expert-parallel.md): one process per rank.
  app.add_option("--ep-size", ep_size, "expert-parallel ranks (1: no expert parallelism)")
      ->check(CLI::Range(1, 64));
  app.add_option("--ep-rank", ep_rank, "this process's rank in [0, ep-size)");
  app.add_option("--ep-comm", ep_comm,
                 "nccl | host (default: nccl for --backend cuda, host otherwise)")
      ->check(CLI::IsMember({"nccl", "host"}));
  app.add_option("--ep-rendezvous", ep_rendezvous,
                 "local directory the ranks meet in (sockets / NCCL id)");
  app.add_option("--ep-timeout", ep_timeout, "seconds a rank waits for its peers before giving up");
  app.add_option(
      "--ep-placement", ep_placement,
      "placement JSON (the collector's format): which rank holds which experts; every rank holds "
      "E/ep-size per MoE layer (default: contiguous). Checked but not applied with --ep-size 1");
  app.add_flag(
      "--ep-same-requests", ep_same_requests,
      "every rank generates the same requests (default: the workload seed differs per rank)");
  namespace cli = inferscope::cli;
  constexpr const char* kProgram = "inferscope-engine";
  if (auto status = cli::parse(app, kProgram, argc, argv)) return *status;
  if (requests <= 0 && duration <= 0.0)
    return cli::usage_error(kProgram, "give --requests N or --duration S");
  if (ep_rank < 0 || ep_rank >= ep_size)
    return cli::usage_error(kProgram, "--ep-rank " + std::to_string(ep_rank) +
                                          " is not in [0, --ep-size " + std::to_string(ep_size) +
                                          ")");
  if (ep_size > 1 && ep_rendezvous.empty())
    return cli::usage_error(kProgram, "--ep-size > 1 needs --ep-rendezvous DIR");

  std::unique_ptr<ie::Communicator> comm;
  try {
    ie::ModelConfig config = ie::load_model_config(model_path);
    if (capacity_factor >= 0) config.moe.capacity_factor = static_cast<float>(capacity_factor);
    auto be = ie::create_backend(backend, ie::BackendOptions{threads, device});
    ie::ExpertPlacement placement;
    if (ep_size > 1) {
      placement = ep_placement.empty()
                      ? ie::ExpertPlacement::make(config.moe.experts, ep_size, ep_rank)
                      : ie::load_expert_placement(ep_placement, config, ep_size, ep_rank);
      if (ep_comm.empty()) ep_comm = be->host_memory() ? "host" : "nccl";
      ie::CommOptions co;
      co.rank = ep_rank;
      co.size = ep_size;
      co.rendezvous_dir = ep_rendezvous;
      co.timeout = std::chrono::milliseconds(static_cast<int64_t>(ep_timeout * 1000));
      comm = ie::create_communicator(ep_comm, *be, co);
    }
    if (ep_size == 1 && !ep_placement.empty())
      (void)ie::load_expert_placement(ep_placement, config, 1,
                                      0);  // a bad file is an error even here
    ie::Model model(*be, config, weights, placement);
    if (comm) model.attach_expert_parallel(*comm, &inferscope::agent::now_ns);
    if (!save_weights.empty()) model.weights().save(save_weights);

    std::unique_ptr<ie::Telemetry> telemetry;
    inferscope::agent::Config acfg = inferscope::agent::Config::from_environment();
    if (collector != "\x01") acfg.collector = collector;
    if (!acfg.collector.empty())
      telemetry = std::make_unique<ie::Telemetry>(acfg, config, placement);

    ie::WorkloadSpec spec = ie::workload_by_name(workload);
    if (spec.fixed_topic >= 0) {  // skewed-ep: rank 0 hot
      spec.fixed_topic = ie::ep_hot_topic(config, std::max(ep_size, 2), 0);
      for (const auto& hb : ie::ep_hot_bytes(model, std::max(ep_size, 2), 0, 12))
        spec.alphabet.push_back(hb.byte);
    }
    if (comm && !ep_same_requests) seed += static_cast<uint64_t>(ep_rank) * 1000003u;
    if (rate > 0) spec.rate = rate;
    if (topic_period > 0) spec.topic_period = topic_period;
    if (temperature >= 0) spec.temperature = static_cast<float>(temperature);
    ie::WorkloadGenerator gen(spec, config, seed);
    if (!image_path.empty()) gen.set_image(ie::load_ppm(image_path, config.vision.image_size));

    auto engine_ptr = std::make_unique<ie::Engine>(model, telemetry.get());
    ie::Engine& engine = *engine_ptr;
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::printf(
        "inferscope-engine: model %s (%d layers %s/%s), backend %s, %d threads, workload %s, "
        "telemetry %s\n",
        config.name.c_str(), config.n_layers(), config.mixers.c_str(), config.ffns.c_str(),
        be->name().c_str(), threads, workload.c_str(), telemetry ? acfg.collector.c_str() : "off");
    if (comm)
      std::printf(
          "expert parallel: rank %d of %d over %s, experts [%d, %d) of %d per MoE layer%s%s\n",
          ep_rank, ep_size, comm->name().c_str(), placement.first_local(),
          placement.first_local() + placement.per_rank(), config.moe.experts,
          ep_placement.empty() ? "" : " (physical slots), placement ", ep_placement.c_str());
    std::fflush(stdout);
    std::ofstream tokens_file;
    if (!tokens_out.empty()) {
      tokens_file.open(tokens_out);
      if (!tokens_file) throw std::runtime_error("cannot write '" + tokens_out + "'");
    }

    const int64_t start = inferscope::agent::now_ns();
    int generated = 0;
    double next_arrival = 0.0;
    ie::Request next = gen.next(&next_arrival);
    int64_t drain_start = 0;
    auto more = [&] {
      if (g_signals.load() > 0) return false;
      if (requests > 0 && generated >= requests) return false;
      if (duration > 0 && next_arrival > duration) return false;
      return true;
    };
    std::vector<ie::RequestResult> results;
    size_t finished_total = 0;
    std::mt19937_64 reservoir_rng(seed);
    auto collect = [&] {
      for (auto& r : engine.take_finished()) {
        if (tokens_file.is_open()) {
          tokens_file << r.id << ":";
          for (int32_t t : r.output) tokens_file << ' ' << t;
          tokens_file << '\n';
        }
        r.output = {};
        r.logits = {};
        ++finished_total;
        if (results.size() < kMaxKeptResults) {
          results.push_back(std::move(r));
        } else {  // reservoir: every finished request is kept with equal probability
          const size_t j =
              std::uniform_int_distribution<size_t>(0, finished_total - 1)(reservoir_rng);
          if (j < kMaxKeptResults) results[j] = std::move(r);
        }
      }
    };
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
      if (g_signals.load() > 0 && drain_start == 0) drain_start = now;
      bool busy = !engine.idle(), coming = more();
      bool stop = g_signals.load() > 1 ||
                  (drain_start > 0 && static_cast<double>(now - drain_start) / 1e9 > drain_timeout);
      if (comm) {  // every rank takes the same decision: step, wait or stop
        std::vector<int32_t> all;
        const int32_t mine[3] = {busy, coming, stop};
        comm->all_gather(mine, all);
        busy = coming = stop = false;
        for (size_t i = 0; i < all.size(); i += 3) {
          busy |= all[i] != 0;
          coming |= all[i + 1] != 0;
          stop |= all[i + 2] != 0;
        }
      }
      if (stop) {
        std::fprintf(stderr, "inferscope-engine: drain deadline passed, %zu requests unfinished\n",
                     engine.running() + engine.waiting());
        break;
      }
      if (!busy) {
        if (!coming) break;
        double wait = std::min(0.05, next_arrival - now_s);
        if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
        continue;
      }
      engine.step();
      collect();
      if (!quiet && now - last_report > 5'000'000'000) {
        last_report = now;
        const auto& st = engine.stats();
        std::printf(
            "[%6.1f s] requests %zu done, %zu running, %zu waiting; tokens prefill %llu decode "
            "%llu\n",
            now_s, finished_total, engine.running(), engine.waiting(),
            static_cast<unsigned long long>(st.prefill_tokens),
            static_cast<unsigned long long>(st.decode_tokens));
        std::fflush(stdout);
      }
    }
    collect();
    const double wall = static_cast<double>(inferscope::agent::now_ns() - start) / 1e9;
    auto summary = ie::make_summary(config, model.footprint(), engine.stats(), results, wall);
    if (comm) summary["expert_parallel"] = ep_summary(engine.stats(), placement, comm->name());
    // The engine's last memory / prefix report goes out when it is destroyed;
    // flush once after that and only then read the agent's counters, so the
    // summary counts everything that was sent.
    engine_ptr.reset();
    if (telemetry) {
      auto& agent = telemetry->agent();
      const bool connected = agent.stats().connected;
      if (connected) agent.flush(std::chrono::milliseconds(2000));
      // The agent's final books: every record delivered, dropped, or reported here.
      const auto st = agent.shutdown();
      summary["telemetry"] = {{"collector", acfg.collector},
                              {"records_recorded", st.records_recorded},
                              {"records_sent", st.records_sent},
                              {"records_delivered", st.records_delivered},
                              {"records_dropped", st.records_dropped},
                              {"records_unconfirmed", st.records_unconfirmed},
                              {"records_undelivered", st.records_undelivered},
                              {"protocol_errors", st.protocol_errors},
                              {"connected", connected}};
    }
    std::fputs(ie::format_summary(summary).c_str(), stdout);
    if (telemetry) {
      const auto& t = summary["telemetry"];
      const auto n = [&](const char* key) {
        return static_cast<unsigned long long>(t[key].get<uint64_t>());
      };
      std::printf(
          "telemetry   %s: %llu records sent, %llu dropped (%llu delivered, %llu unconfirmed, %llu "
          "undelivered)\n",
          acfg.collector.c_str(), n("records_sent"), n("records_dropped"), n("records_delivered"),
          n("records_unconfirmed"), n("records_undelivered"));
      if (n("records_undelivered") + n("records_unconfirmed") > 0 || n("protocol_errors") > 0) {
        const char* why = n("protocol_errors") > 0 ? "the peer there is not an inferscope collector"
                          : n("records_sent") == 0
                              ? "never connected: is the collector running there?"
                              : "the collector went away before acknowledging them";
        std::fprintf(stderr,
                     "warning: %llu telemetry records were not delivered to %s (%s); %llu more are "
                     "unconfirmed\n",
                     n("records_undelivered"), acfg.collector.c_str(), why,
                     n("records_unconfirmed"));
      }
    }
    if (comm) {
      const auto& ep = summary["expert_parallel"];
      std::printf(
          "expert par. rank %d/%d: %llu idle steps; per MoE layer per step (ms): dispatch / "
          "experts / combine\n",
          ep_rank, ep_size, static_cast<unsigned long long>(ep["idle_steps"].get<uint64_t>()));
      for (const auto& l : ep["layers"])
        std::printf("  layer %2d  %.3f / %.3f / %.3f   rows sent %llu computed %llu\n",
                    l["layer"].get<int>(), l["dispatch_ms_per_step"].get<double>(),
                    l["compute_ms_per_step"].get<double>(), l["combine_ms_per_step"].get<double>(),
                    static_cast<unsigned long long>(l["rows_sent"].get<uint64_t>()),
                    static_cast<unsigned long long>(l["rows_computed"].get<uint64_t>()));
    }
    if (!summary_json.empty()) {
      std::ofstream out(summary_json);
      out << summary.dump(2) << "\n";
      if (!out) throw std::runtime_error("cannot write '" + summary_json + "'");
    }
    tokens_file.close();
    telemetry.reset();
    comm.reset();  // before the backend whose stream it may use
  } catch (const std::exception& e) {
    if (comm) {
      std::cerr << "inferscope-engine: rank " << ep_rank << " of " << ep_size << ": " << e.what()
                << "\n";
      comm->abort();  // peers see EOF / an aborted NCCL comm instead of waiting
    } else {
      std::cerr << "inferscope-engine: " << e.what() << "\n";
    }
    return cli::kFailure;
  }
  return cli::kSuccess;
}
