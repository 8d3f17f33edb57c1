// hf_bench: prefill and decode throughput of a Hugging Face MoE checkpoint
// (hf_checkpoint.hpp) in the engine, at several batch sizes, measured the way
// bench/gpu/gpu_bench measures the demo model (its run_forward): B sequences of
// a P-token prompt prefilled in one Model::forward, then greedy decode steps of
// B rows, each step one forward whose logits come back to the host (so every
// step ends synchronised). Wall-clock medians over --reps repetitions.
// bench/engine/scale_bench.py runs it next to transformers on the same
// checkpoint and prompts (issue 18 part 5; scripts/gpu-check --scale).
//
//   hf_bench --model DIR [--backend cuda|cpu] [--prompts prompts.json]
//            [--batches 1,8,64] [--prompt-len 128] [--steps 32] [--reps 2]
//            [--threads N] [--device N] [--out result.json] [--async-routing]
//            [--graphs] [--modes eager,graphs] [--observe off,agent,sampled,full]
//
// --async-routing: the MoE routing stays on the device and a step waits once
// (Model::set_async_routing; INFERSCOPE_ASYNC_ROUTING=1 does the same). Every
// row reports the host waits per decode step (Backend::host_syncs) either way.
// --graphs: decode steps of up to 64 rows are captured as CUDA graphs per
// batch bucket and replayed (Model::set_step_graphs; implies --async-routing);
// rows report the graph launches of their decode steps.
// --modes: several of eager (synchronous routing, no graphs), async (async
// routing, no graphs) and graphs, measured one after the other on the SAME
// loaded model (a 14 GB checkpoint loads once): the JSON's "modes" holds one
// entry per mode (its rows, routing, graph_error), written to --out after
// every mode, so a run cut off during a later mode keeps the earlier ones.
// Each mode starts with the stderr line "hf_bench: mode NAME start", which
// scale_bench.py uses to give each mode its own timeout. On a backend without
// step graphs (cpu) the graphs mode runs its padded steps eagerly and says so.
//
// --observe: each batch size's rows again with the engine's Telemetry on the
// forward passes (what the serving loop attaches: per-layer ranges, expert
// loads, a prefill/decode range per step, step boundaries), its agent shipping
// to a loopback sink that discards: "agent" (GPU trace off), "sampled" (the
// agent's default CUPTI bursts) or "full" (CUPTI on throughout). The settings
// take turns per batch size, so each overhead is against the "off" row of the
// same batch in the same process (issue 18 part 6). Rows of "full" carry the
// CUPTI kernels seen and the share with an enclosing range.
//
// HF_BENCH_KERNEL_TABLE=FILE (environment, so that scale_bench.py passes it
// through): B=1 decode steps with asynchronous routing and no graphs (the
// kernels of a graph replay, launched one by one so CUPTI sees each for sure)
// are recorded with CUPTI and their time per kernel name is written to FILE (and
// stderr): where a decode step's GPU time goes (issue 18 part 5). Then one
// prefill of the largest batch, with synchronous and with asynchronous routing,
// gets a table of its top 15 kernels (where a B=64 prefill goes). It runs before
// the modes, with CUPTI finalized after it, so that --observe's agent attaches
// CUPTI as it would alone; a failure is reported and the run goes on.
//
// --prompts: a JSON array of token-id arrays (row s is sequence s; at least
// max(batches) rows of at least --prompt-len ids); without it, ids from a
// fixed LCG. Output: JSON with per-batch prefill tok/s, decode tok/s, median
// step ms, the load time and the engine's own memory accounting (weights,
// KV cache, activations); the caller measures the process's device memory.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../common/bench_time.hpp"
#include "../common/discard_sink.hpp"
#include "inferscope/agent.hpp"
#include "inferscope/cli/exit_status.hpp"
#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/hf_checkpoint.hpp"
#include "inferscope/engine/model.hpp"
#include "inferscope/engine/telemetry.hpp"
#include "kernel_table.hpp"

namespace ie = inferscope::engine;
using json = nlohmann::json;

namespace {

constexpr const char* kProgram = "hf_bench";

using inferscope::bench::median;
using inferscope::bench::now_s;

std::vector<int32_t> parse_batches(const std::string& s) {
  std::vector<int32_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 1 || v > 4096)
      throw std::invalid_argument("--batches: '" + item + "' is not a batch size in 1..4096");
    out.push_back(v);
  }
  if (out.empty()) throw std::invalid_argument("--batches: none given");
  return out;
}

// Rows of token ids, each checked against the vocabulary.
std::vector<std::vector<int32_t>> read_prompts(const std::string& path, int32_t rows, int32_t len,
                                               int32_t vocab) {
  std::vector<std::vector<int32_t>> out;
  if (path.empty()) {
    uint64_t x = 0x9E3779B97F4A7C15ull;  // fixed: the same ids every run
    for (int32_t s = 0; s < rows; ++s) {
      std::vector<int32_t> p;
      for (int32_t i = 0; i < len; ++i) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        p.push_back(static_cast<int32_t>((x >> 33) % static_cast<uint64_t>(vocab)));
      }
      out.push_back(std::move(p));
    }
    return out;
  }
  std::ifstream f(path);
  if (!f) throw std::invalid_argument("--prompts: cannot open '" + path + "'");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    throw std::invalid_argument("--prompts: '" + path + "' is not JSON: " + e.what());
  }
  if (!j.is_array() || static_cast<int32_t>(j.size()) < rows)
    throw std::invalid_argument("--prompts: '" + path + "' needs an array of at least " +
                                std::to_string(rows) + " token-id arrays");
  for (int32_t s = 0; s < rows; ++s) {
    const json& r = j[static_cast<size_t>(s)];
    if (!r.is_array() || static_cast<int32_t>(r.size()) < len)
      throw std::invalid_argument("--prompts: row " + std::to_string(s) + " has fewer than " +
                                  std::to_string(len) + " token ids");
    std::vector<int32_t> p;
    for (int32_t i = 0; i < len; ++i) {
      const json& v = r[static_cast<size_t>(i)];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab)
        throw std::invalid_argument("--prompts: row " + std::to_string(s) + " item " +
                                    std::to_string(i) + " is not a token id in 0.." +
                                    std::to_string(vocab - 1));
      p.push_back(v.get<int32_t>());
    }
    out.push_back(std::move(p));
  }
  return out;
}

struct Throughput {
  double prefill_tps = 0, decode_tps = 0, decode_step_ms = 0, prefill_ms = 0;
  double host_syncs_per_step = 0;  // decode steps, all repetitions
  uint64_t graph_launches = 0;     // decode steps replayed from a CUDA graph
};

// gpu_bench's run_forward for a checkpoint of any vocabulary; with `tel`, every
// forward is observed as the serving loop observes it (a step boundary, a
// prefill or decode range around the forward, the per-layer observer). With
// `table`, the `window` of every repetition (its decode steps or its prefill) is
// recorded into *sums.
enum class Window { kDecode, kPrefill };
Throughput run_forward(ie::Model& model, const std::vector<std::vector<int32_t>>& prompts, int B,
                       int prompt, int decode_steps, int reps, ie::Telemetry* tel = nullptr,
                       inferscope::bench::KernelTable* table = nullptr,
                       std::vector<inferscope::bench::KernelSum>* sums = nullptr,
                       Window window = Window::kDecode) {
  uint64_t step_id = 0;
  auto forward = [&](const ie::StepBatch& b, std::vector<float>& out, ie::RequestPhase phase) {
    if (tel == nullptr) return model.forward(b, out);
    tel->set_step(++step_id);
    const ie::Telemetry::Span span = tel->span(phase);
    model.forward(b, out, tel);
  };
  const auto& c = model.config();
  const int bs = c.cache.block_size;
  const size_t V = static_cast<size_t>(c.vocab);
  const int blocks_per_seq = (prompt + decode_steps + bs - 1) / bs;
  std::vector<std::vector<int32_t>> blocks(static_cast<size_t>(B));
  for (int s = 0; s < B; ++s)
    for (int b = 0; b < blocks_per_seq; ++b)
      blocks[static_cast<size_t>(s)].push_back(s * blocks_per_seq + b);
  std::vector<float> logits;
  ie::StepBatch batch;
  std::vector<double> prefill_t, decode_t, step_t;
  uint64_t decode_waits = 0;
  const uint64_t launches0 = model.backend().graph_launches();
  std::vector<int32_t> next(static_cast<size_t>(B));
  auto argmax = [&] {
    for (int s = 0; s < B; ++s) {
      const float* l = logits.data() + static_cast<size_t>(s) * V;
      next[static_cast<size_t>(s)] = static_cast<int32_t>(std::max_element(l, l + V) - l);
    }
  };
  for (int rep = 0; rep < reps; ++rep) {
    for (int s = 0; s < B; ++s) model.clear_state(s);
    batch.clear();
    for (int s = 0; s < B; ++s)
      batch.add_chunk(prompts[static_cast<size_t>(s)], 0, s, blocks[static_cast<size_t>(s)], bs,
                      true);
    model.backend().synchronize();
    auto open_window = [&](Window w) {
      if (!table || window != w) return;
      model.backend().synchronize();
      std::string why;
      if (!table->start(&why)) throw std::runtime_error("kernel table: " + why);
    };
    auto close_window = [&](Window w) {
      if (!table || window != w) return;
      model.backend().synchronize();
      *sums = table->stop();
    };
    open_window(Window::kPrefill);
    const double t0 = now_s();
    forward(batch, logits, ie::RequestPhase::kPrefill);  // downloads logits: synchronous
    prefill_t.push_back(now_s() - t0);
    close_window(Window::kPrefill);
    argmax();
    open_window(Window::kDecode);
    const double d0 = now_s();
    for (int i = 0; i < decode_steps; ++i) {
      batch.clear();
      for (int s = 0; s < B; ++s) {
        const int32_t tok = next[static_cast<size_t>(s)];
        batch.add_chunk(std::span<const int32_t>(&tok, 1), prompt + i, s,
                        blocks[static_cast<size_t>(s)], bs, true);
      }
      const uint64_t w0 = model.backend().host_syncs();
      const double s0 = now_s();
      forward(batch, logits, ie::RequestPhase::kDecode);
      step_t.push_back(now_s() - s0);
      decode_waits += model.backend().host_syncs() - w0;
      argmax();
    }
    decode_t.push_back(now_s() - d0);
    close_window(Window::kDecode);
  }
  Throughput r;
  r.prefill_ms = median(prefill_t) * 1e3;
  r.prefill_tps = B * prompt / median(prefill_t);
  r.decode_tps = B * decode_steps / median(decode_t);
  r.decode_step_ms = median(step_t) * 1e3;
  r.host_syncs_per_step = static_cast<double>(decode_waits) / static_cast<double>(step_t.size());
  r.graph_launches = model.backend().graph_launches() - launches0;
  return r;
}

// A comma-separated list of names from `allowed`, in order, each at most once.
std::vector<std::string> parse_names(const std::string& s, const std::string& flag,
                                     const std::vector<std::string>& allowed) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (std::find(allowed.begin(), allowed.end(), item) == allowed.end()) {
      std::string names;
      for (const std::string& a : allowed) names += (names.empty() ? "" : ", ") + a;
      throw std::invalid_argument(flag + ": '" + item + "' is not one of " + names);
    }
    if (std::find(out.begin(), out.end(), item) != out.end())
      throw std::invalid_argument(flag + ": '" + item + "' given twice");
    out.push_back(item);
  }
  if (out.empty()) throw std::invalid_argument(flag + ": none given");
  return out;
}

// --observe: the unobserved row always runs first (every overhead is against it).
std::vector<std::string> parse_observe(const std::string& s) {
  std::vector<std::string> out = parse_names(s, "--observe", {"off", "agent", "sampled", "full"});
  out.erase(std::remove(out.begin(), out.end(), "off"), out.end());
  out.insert(out.begin(), "off");
  return out;
}

// One --observe row: the same run as the unobserved row `off`, with the engine's
// Telemetry on every forward; its agent ships to `sink`.
json observed_row(ie::Model& model, const ie::ModelConfig& c,
                  const inferscope::bench::DiscardSink& sink, const std::string& setting,
                  const std::vector<std::vector<int32_t>>& prompts, int B, int prompt, int steps,
                  int reps, const Throughput& off, const std::string& mode) {
  namespace ag = inferscope::agent;
  ag::Config ac;
  ac.collector = sink.address();
  ac.service = kProgram;
  ac.gpu_trace = setting == "full"      ? ag::GpuTraceMode::kFull
                 : setting == "sampled" ? ag::GpuTraceMode::kSampled
                                        : ag::GpuTraceMode::kOff;
  auto tel = std::make_unique<ie::Telemetry>(ac, c);
  const Throughput t = run_forward(model, prompts, B, prompt, steps, reps, tel.get());
  tel->agent().flush(std::chrono::milliseconds(3000));  // CUPTI's last records counted
  const ag::Stats st = tel->agent().stats();
  const double overhead = 100 * (1 - t.decode_tps / off.decode_tps);
  std::fprintf(stderr,
               "hf_bench: %-6s batch %3d  observe %-7s decode %10.1f tok/s  overhead %6.2f %%  "
               "kernels %llu (%.2f %% attributed)  records dropped %llu\n",
               mode.c_str(), B, setting.c_str(), t.decode_tps, overhead,
               static_cast<unsigned long long>(st.gpu.kernels_captured),
               st.gpu.kernels_captured ? 100.0 * static_cast<double>(st.gpu.kernels_attributed) /
                                             static_cast<double>(st.gpu.kernels_captured)
                                       : 0.0,
               static_cast<unsigned long long>(st.records_dropped + st.gpu.records_dropped));
  return {{"batch", B},
          {"observe", setting},
          {"cupti_active", tel->agent().cupti_active()},
          {"decode_tps", t.decode_tps},
          {"decode_step_ms", t.decode_step_ms},
          {"prefill_tps", t.prefill_tps},
          {"overhead_pct", overhead},
          {"kernels_captured", st.gpu.kernels_captured},
          {"kernels_attributed", st.gpu.kernels_attributed},
          {"bursts", st.gpu.bursts_finished},
          {"records_dropped", st.records_dropped + st.gpu.records_dropped}};
}

// Rows of a kernel table: time per window (`per` windows were recorded), its share, calls and
// time per call; the first `top` kernels by time (all when top is 0), the rest summed in one line.
std::string kernel_rows(const std::vector<inferscope::bench::KernelSum>& sums, int per,
                        const char* unit, size_t top, double* total_us_out) {
  double total_us = 0;
  for (const auto& k : sums) total_us += k.total_ns / 1e3 / per;
  *total_us_out = total_us;
  std::ostringstream o;
  char line[512];
  std::snprintf(line, sizeof line, "%9s %6s %8s %8s  %s\n", unit, "%", "calls", "us/call",
                "kernel");
  o << line;
  double rest_us = 0;
  uint64_t rest_calls = 0;
  for (size_t i = 0; i < sums.size(); ++i) {
    const auto& k = sums[i];
    const double us = k.total_ns / 1e3 / per;
    if (top > 0 && i >= top) {
      rest_us += us;
      rest_calls += k.calls;
      continue;
    }
    std::snprintf(line, sizeof line, "%9.1f %5.1f%% %8.1f %8.2f  %.120s\n", us,
                  total_us > 0 ? 100 * us / total_us : 0.0, double(k.calls) / per,
                  k.calls ? k.total_ns / 1e3 / k.calls : 0.0, k.name.c_str());
    o << line;
  }
  if (rest_calls > 0) {
    std::snprintf(line, sizeof line, "%9.1f %5.1f%% %8.1f %8s  (%zu other kernels)\n", rest_us,
                  total_us > 0 ? 100 * rest_us / total_us : 0.0, double(rest_calls) / per, "",
                  sums.size() - top);
    o << line;
  }
  return o.str();
}

// HF_BENCH_KERNEL_TABLE: B=1 decode steps (async routing, no graphs), then one prefill of
// `prefill_batch` prompts with synchronous and with asynchronous routing (prefills are never
// graph-captured), per kernel name. Prefill tables keep the top 15 kernels.
void kernel_table(ie::Model& model, const std::vector<std::vector<int32_t>>& prompts, int prompt,
                  int steps, int prefill_batch, const std::string& path) {
  const bool graphs = model.step_graphs(), async = model.async_routing();
  model.set_step_graphs(false);
  model.set_async_routing(true);
  run_forward(model, prompts, 1, prompt, std::min(steps, 3), 1);  // warm-up of this mode
  inferscope::bench::KernelTable table;
  std::vector<inferscope::bench::KernelSum> sums;
  const Throughput t = run_forward(model, prompts, 1, prompt, steps, 1, nullptr, &table, &sums);
  std::ostringstream o;
  char line[512];
  double total_us = 0;
  const std::string rows = kernel_rows(sums, steps, "us/step", 0, &total_us);
  std::snprintf(line, sizeof line,
                "kernel table: B=1 decode, async routing, no graphs, no programmatic dependent "
                "launch (kernels one by one), "
                "%d steps; step %.3f ms wall, kernels %.1f us/step (sum of kernel times)\n",
                steps, t.decode_step_ms, total_us);
  o << line << rows;
  for (const bool async_prefill : {false, true}) {
    model.set_async_routing(async_prefill);
    run_forward(model, prompts, prefill_batch, prompt, 1, 1);  // warm-up of this mode and size
    const Throughput p = run_forward(model, prompts, prefill_batch, prompt, 1, 1, nullptr, &table,
                                     &sums, Window::kPrefill);
    const std::string prows = kernel_rows(sums, 1, "us", 15, &total_us);
    std::snprintf(line, sizeof line,
                  "\nprefill kernel table: B=%d x %d tokens, %s routing, no programmatic "
                  "dependent launch; prefill %.2f ms wall (%.0f tok/s), kernels %.2f ms (sum)\n",
                  prefill_batch, prompt, async_prefill ? "async" : "sync", p.prefill_ms,
                  p.prefill_tps, total_us / 1e3);
    o << line << prows;
  }
  model.set_async_routing(async);
  model.set_step_graphs(graphs);
  std::cerr << o.str();
  std::ofstream f(path);
  f << o.str();
  if (!f) throw std::runtime_error("cannot write '" + path + "'");
}

void write_json(const json& out, const std::string& path) {
  if (path.empty()) {
    std::cout << out.dump(1) << "\n";
    return;
  }
  // Whole file or nothing: a reader never sees half of it (written after every mode).
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << out.dump(1) << "\n";
    if (!f) throw std::runtime_error("cannot write '" + tmp + "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "'");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Prefill and decode throughput of a Hugging Face MoE checkpoint in the engine"};
  std::string dir, backend_name = "cuda", prompts_path, batches_arg = "1,8,64", out_path, modes_arg;
  std::string observe_arg = "off";
  int prompt = 128, steps = 32, reps = 2, threads = 8, device = 0;
  bool async_routing = false, graphs = false;
  app.add_option("--model", dir, "checkpoint directory (config.json + safetensors)")->required();
  app.add_option("--backend", backend_name, "cuda or cpu");
  app.add_option("--prompts", prompts_path, "JSON array of token-id arrays (one per sequence)");
  app.add_option("--batches", batches_arg, "batch sizes, comma-separated");
  app.add_option("--prompt-len", prompt, "prompt tokens per sequence")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--steps", steps, "decode steps per repetition")->check(CLI::Range(1, 1 << 16));
  app.add_option("--reps", reps, "repetitions (medians)")->check(CLI::Range(1, 100));
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 256));
  app.add_option("--device", device, "GPU ordinal")->check(CLI::Range(0, 64));
  app.add_option("--out", out_path, "JSON output file (default stdout)");
  app.add_flag("--async-routing", async_routing,
               "MoE routing stays on the device: one host wait per step");
  app.add_flag("--graphs", graphs, "decode steps as CUDA graphs per batch bucket (async routing)");
  app.add_option("--modes", modes_arg,
                 "eager,async,graphs (any of them, in order) on one loaded model; overrides "
                 "--async-routing / --graphs");
  app.add_option("--observe", observe_arg,
                 "off,agent,sampled,full: each batch's rows again with the engine's telemetry "
                 "(agent only / CUPTI bursts / CUPTI throughout), overhead against off");
  if (auto status = inferscope::cli::parse(app, kProgram, argc, argv)) return *status;

  try {
    std::vector<int32_t> batches;
    std::vector<std::string> modes, observe;
    try {
      batches = parse_batches(batches_arg);
      if (!modes_arg.empty())
        modes = parse_names(modes_arg, "--modes", {"eager", "async", "graphs"});
      observe = parse_observe(observe_arg);
    } catch (const std::invalid_argument& e) {
      return inferscope::cli::usage_error(kProgram, e.what());
    }
    const int32_t max_b = *std::max_element(batches.begin(), batches.end());
    const double l0 = now_s();
    ie::HfModel m = ie::load_hf_model(dir);
    ie::ModelConfig c = m.config;
    if (prompt + steps > m.max_positions)
      return inferscope::cli::usage_error(
          kProgram, "prompt + steps = " + std::to_string(prompt + steps) + " exceeds the model's " +
                        std::to_string(m.max_positions) + " positions");
    std::vector<std::vector<int32_t>> prompts;
    try {
      prompts = read_prompts(prompts_path, max_b, prompt, c.vocab);
    } catch (const std::invalid_argument& e) {
      return inferscope::cli::usage_error(kProgram, e.what());
    }
    // Room for the largest batch: every prompt in one step, a KV block list per sequence.
    c.cache.block_size = 16;
    c.cache.max_seqs = max_b;
    c.cache.num_blocks = max_b * ((prompt + steps + 15) / 16);
    c.scheduler.max_batch_tokens = max_b * prompt;
    c.scheduler.prefill_chunk = prompt;

    ie::BackendOptions bo;
    bo.threads = threads;
    bo.device = device;
    auto backend = ie::create_backend(backend_name, bo);
    const ie::DType gemm = ie::hf_gemm_dtype(m, *backend);
    ie::Model model(
        *backend, c, [&](ie::Weights& w) { ie::load_hf_weights(m, w); }, gemm);
    // No --modes: one mode from the flags and the environment (the model's own defaults).
    const bool one_mode = modes.empty();
    if (one_mode) {
      if (async_routing) model.set_async_routing(true);
      if (graphs) model.set_step_graphs(true);
      modes.push_back(model.step_graphs() ? "graphs" : model.async_routing() ? "async" : "eager");
    }
    backend->synchronize();
    const double load_s = now_s() - l0;
    std::fprintf(stderr, "hf_bench: %s loaded in %.1f s (%s GEMM weights on %s)\n", c.name.c_str(),
                 load_s, gemm == ie::DType::kBF16 ? "bf16" : "f32", backend->name().c_str());

    inferscope::bench::DiscardSink sink;  // the observed rows' agents ship here
    const ie::MemoryFootprint fp0 = model.footprint();
    json out = {{"model_type", m.model_type},
                {"backend", backend->name()},
                {"checkpoint_dtype", m.checkpoint_dtype},
                {"gemm_dtype", gemm == ie::DType::kBF16 ? "bf16" : "f32"},
                {"prompt_len", prompt},
                {"steps", steps},
                {"reps", reps},
                {"load_s", load_s},
                {"step_graphs_on_device", backend->supports_step_graphs()},
                {"method",
                 "Model::forward; B prompts prefilled in one step, then B-row greedy decode steps, "
                 "logits downloaded every step (gpu_bench run_forward); per mode a warm-up at "
                 "every batch size first (cuBLAS heuristics; the graphs' eager step and capture)"},
                {"footprint",
                 {{"weights", fp0.weights},
                  {"kv_cache", fp0.kv_cache},
                  {"activations", fp0.activations},
                  {"ssm_state", fp0.ssm_state}}},
                {"modes", json::array()}};
    if (const char* kt = std::getenv("HF_BENCH_KERNEL_TABLE"); kt && *kt) {
      if (!backend->supports_step_graphs()) {  // not a GPU backend: CUPTI has no kernels to see
        std::fprintf(stderr, "hf_bench: no kernel table on the %s backend\n",
                     backend->name().c_str());
      } else {
        try {
          kernel_table(model, prompts, prompt, steps, max_b, kt);
        } catch (const std::exception& e) {  // the table is a diagnostic: the rows still run
          std::fprintf(stderr, "hf_bench: kernel table failed: %s\n", e.what());
        }
      }
    }
    for (const std::string& mode : modes) {
      if (!one_mode) {
        model.set_step_graphs(mode == "graphs");
        model.set_async_routing(mode != "eager");
      }
      std::fprintf(stderr, "hf_bench: mode %s start (routing %s, graphs %s)\n", mode.c_str(),
                   model.async_routing() ? "async" : "sync",
                   !model.step_graphs() ? "off"
                   : backend->supports_step_graphs()
                       ? "on"
                       : "on, run eagerly: no graphs on this backend");
      // Warm-up at every batch size with the measured prompt length (so the same context
      // bucket): cuBLAS heuristics, the router's shadow, staging buffers and, with graphs,
      // each bucket's eager first step and its capture, none of which the rows should time.
      for (int32_t B : batches) run_forward(model, prompts, B, prompt, std::min(steps, 3), 1);
      json results = json::array();
      json observed = json::array();
      for (int32_t B : batches) {
        const Throughput t = run_forward(model, prompts, B, prompt, steps, reps);
        for (size_t i = 1; i < observe.size(); ++i)
          observed.push_back(
              observed_row(model, c, sink, observe[i], prompts, B, prompt, steps, reps, t, mode));
        std::fprintf(stderr,
                     "hf_bench: %-6s batch %3d  prefill %10.1f tok/s  decode %10.1f tok/s  step "
                     "%.3f ms  %.1f host waits/step  %llu graph launches\n",
                     mode.c_str(), B, t.prefill_tps, t.decode_tps, t.decode_step_ms,
                     t.host_syncs_per_step, static_cast<unsigned long long>(t.graph_launches));
        results.push_back({{"batch", B},
                           {"prefill_tps", t.prefill_tps},
                           {"prefill_ms", t.prefill_ms},
                           {"decode_tps", t.decode_tps},
                           {"decode_step_ms", t.decode_step_ms},
                           {"host_syncs_per_step", t.host_syncs_per_step},
                           {"graph_launches", t.graph_launches}});
      }
      backend->synchronize();  // a device fault in queued work fails the run here
      if (!model.graph_error().empty())
        std::fprintf(stderr, "hf_bench: a graph capture failed (those steps ran eagerly): %s\n",
                     model.graph_error().c_str());
      const json entry = {
          {"mode", mode},
          {"routing", model.async_routing() ? "async" : "sync"},
          {"graphs", model.step_graphs()},
          // graphs asked for, but the backend has none: the padded steps ran eagerly
          {"graphs_eager", model.step_graphs() && !backend->supports_step_graphs()},
          {"graph_error", model.graph_error()},
          {"results", results},
          {"observed", observed}};
      out["modes"].push_back(entry);
      if (out["modes"].size() == 1) {  // the single-mode layout, kept for older readers
        out["routing"] = entry["routing"];
        out["graphs"] = entry["graphs"];
        out["graph_error"] = entry["graph_error"];
        out["results"] = results;
      }
      const ie::MemoryFootprint fp = model.footprint();  // activations grow with the batch
      out["footprint"] = {{"weights", fp.weights},
                          {"kv_cache", fp.kv_cache},
                          {"activations", fp.activations},
                          {"ssm_state", fp.ssm_state}};
      write_json(out, out_path);
    }
    return inferscope::cli::kSuccess;
  } catch (const std::exception& e) {
    std::cerr << kProgram << ": " << e.what() << "\n";
    return inferscope::cli::kFailure;
  }
}
