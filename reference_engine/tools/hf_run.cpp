// inferscope-hf-run: runs a Hugging Face MoE checkpoint (hf_checkpoint.hpp) on
// given token ids — one prefill, then greedy decode — and writes what an
// outside oracle compares against transformers: logits (the prompt's first and
// last positions or all of them, and every decode step; top-k, optionally the
// full rows) and every MoE layer's per-expert routed counts, as JSON.
//
//   inferscope-hf-run --model DIR --tokens 1,2,3 --steps 32 [--backend cpu|cuda]
//       [--top-k 8] [--full-logits] [--prefill-rows first-last|all]
//       [--weights-dtype auto|f32] [--threads N] [--device N] [--out run.json]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "inferscope/cli/exit_status.hpp"
#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/hf_checkpoint.hpp"
#include "inferscope/engine/model.hpp"

namespace ie = inferscope::engine;
using json = nlohmann::json;

namespace {

constexpr const char* kProgram = "inferscope-hf-run";

// Sums every MoE layer's top-k choices per expert over the run (the counts
// before capacity; capacity is unlimited for these models, so also the served ones).
class RoutedCounter : public ie::ForwardObserver {
 public:
  explicit RoutedCounter(const ie::ModelConfig& c)
      : routed_(static_cast<size_t>(c.n_layers()),
                std::vector<uint64_t>(static_cast<size_t>(c.moe.experts), 0)) {}
  void layer_begin(int32_t) override {}
  void layer_end(int32_t) override {}
  void moe_routed(int32_t layer, const ie::RouteCounts& counts, int32_t) override {
    auto& r = routed_[static_cast<size_t>(layer)];
    for (size_t e = 0; e < counts.routed.size() && e < r.size(); ++e) r[e] += counts.routed[e];
    dropped_ += counts.dropped;
  }
  const std::vector<std::vector<uint64_t>>& routed() const { return routed_; }
  uint64_t dropped() const { return dropped_; }

 private:
  std::vector<std::vector<uint64_t>> routed_;
  uint64_t dropped_ = 0;
};

std::vector<int32_t> parse_tokens(const std::string& s, int32_t vocab) {
  std::vector<int32_t> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0 || v >= vocab)
      throw std::invalid_argument("--tokens: '" + item + "' is not a token id in 0.." +
                                  std::to_string(vocab - 1));
    out.push_back(static_cast<int32_t>(v));
  }
  if (out.empty()) throw std::invalid_argument("--tokens: no token ids");
  return out;
}

json logit_row(const float* l, int32_t vocab, int32_t position, int32_t input, int top_k,
               bool full) {
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  const int k = std::min(top_k, vocab);
  // Descending by value, ties to the lower id (as argmax takes the first).
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  json top = json::array();
  for (int i = 0; i < k; ++i)
    top.push_back({idx[static_cast<size_t>(i)], l[idx[static_cast<size_t>(i)]]});
  json row = {{"position", position}, {"input", input}, {"argmax", idx[0]}, {"top", top}};
  if (full) row["logits"] = std::vector<float>(l, l + vocab);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Run a Hugging Face MoE checkpoint on token ids (prefill + greedy decode) and "
      "dump logits and routed expert counts as JSON"};
  std::string dir, tokens_arg, backend_name = "cpu", out_path, prefill_rows = "first-last",
                               weights_dtype = "auto";
  int steps = 8, top_k = 8, threads = 2, device = 0;
  bool full = false;
  app.add_option("--model", dir, "checkpoint directory (config.json + safetensors)")->required();
  app.add_option("--tokens", tokens_arg, "prompt token ids, comma-separated")->required();
  app.add_option("--steps", steps, "greedy tokens to generate (>= 1)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--backend", backend_name, "cpu or cuda");
  app.add_option("--top-k", top_k, "top logits per row")->check(CLI::Range(1, 1 << 20));
  app.add_flag("--full-logits", full, "write the whole logit rows too");
  app.add_option("--prefill-rows", prefill_rows, "prompt positions with logits")
      ->check(CLI::IsMember({"first-last", "all"}));
  app.add_option("--weights-dtype", weights_dtype,
                 "auto: a bf16 checkpoint stays bf16 where the backend takes it; f32: widen")
      ->check(CLI::IsMember({"auto", "f32"}));
  app.add_option("--threads", threads, "CPU threads")->check(CLI::Range(1, 256));
  app.add_option("--device", device, "GPU ordinal")->check(CLI::Range(0, 64));
  app.add_option("--out", out_path, "JSON output file (default stdout)");
  if (auto status = inferscope::cli::parse(app, kProgram, argc, argv)) return *status;

  try {
    ie::HfModel m = ie::load_hf_model(dir);
    ie::ModelConfig c = m.config;
    std::vector<int32_t> prompt;
    try {
      prompt = parse_tokens(tokens_arg, c.vocab);
    } catch (const std::invalid_argument& e) {
      return inferscope::cli::usage_error(kProgram, e.what());
    }
    const int32_t P = static_cast<int32_t>(prompt.size());
    const int64_t total = static_cast<int64_t>(P) + steps;
    if (total > m.max_positions)
      return inferscope::cli::usage_error(
          kProgram, "prompt + steps = " + std::to_string(total) + " exceeds the model's " +
                        std::to_string(m.max_positions) + " positions");
    // One sequence: the prompt in one chunk, then one row per step.
    c.scheduler.max_batch_tokens = std::max(P, 1);
    c.scheduler.prefill_chunk = std::max(P, 1);
    c.cache.block_size = 16;
    c.cache.num_blocks = static_cast<int32_t>((total + 15) / 16);
    std::vector<int32_t> blocks(static_cast<size_t>(c.cache.num_blocks));
    std::iota(blocks.begin(), blocks.end(), 0);

    ie::BackendOptions bo;
    bo.threads = threads;
    bo.device = device;
    auto backend = ie::create_backend(backend_name, bo);
    const ie::DType gemm =
        weights_dtype == "f32" ? ie::DType::kF32 : ie::hf_gemm_dtype(m, *backend);
    ie::Model model(
        *backend, c, [&](ie::Weights& w) { ie::load_hf_weights(m, w); }, gemm);
    RoutedCounter counter(c);

    json rows = json::array();
    std::vector<float> logits;
    ie::StepBatch b;
    b.clear();
    b.add_chunk(prompt, 0, 0, blocks, c.cache.block_size, true);
    if (prefill_rows == "all") {
      b.logit_rows.resize(static_cast<size_t>(P));
      std::iota(b.logit_rows.begin(), b.logit_rows.end(), 0);
    } else if (P > 1) {
      b.logit_rows = {0, P - 1};
    }
    model.forward(b, logits, &counter);
    const size_t V = static_cast<size_t>(c.vocab);
    for (size_t i = 0; i < b.logit_rows.size(); ++i) {
      const int32_t pos = b.logit_rows[i];
      rows.push_back(logit_row(logits.data() + i * V, c.vocab, pos,
                               prompt[static_cast<size_t>(pos)], top_k, full));
    }
    std::vector<int32_t> generated;
    auto next_of = [&](const float* l) {
      return static_cast<int32_t>(std::max_element(l, l + c.vocab) - l);
    };
    generated.push_back(next_of(logits.data() + (b.logit_rows.size() - 1) * V));
    for (int32_t s = 1; s < steps; ++s) {
      const int32_t pos = P + s - 1, tok = generated.back();
      b.clear();
      b.add_chunk(std::span<const int32_t>(&tok, 1), pos, 0, blocks, c.cache.block_size, true);
      model.forward(b, logits, &counter);
      rows.push_back(logit_row(logits.data(), c.vocab, pos, tok, top_k, full));
      generated.push_back(next_of(logits.data()));
    }

    // A device fault in work queued after the last checked call must fail the run here,
    // not pass unseen (the backend's destructors do not throw).
    backend->synchronize();

    json layers = json::array();
    for (int32_t l = 0; l < c.n_layers(); ++l)
      if (c.is_moe(l))
        layers.push_back({{"layer", l}, {"routed", counter.routed()[static_cast<size_t>(l)]}});
    json out = {{"model_type", m.model_type},
                {"backend", backend->name()},
                {"checkpoint_dtype", m.checkpoint_dtype},
                {"gemm_dtype", gemm == ie::DType::kBF16 ? "bf16" : "f32"},
                {"vocab", c.vocab},
                {"experts", c.moe.experts},
                {"top_k", c.moe.top_k},
                {"prompt", prompt},
                {"generated", generated},
                {"routed_tokens", total - 1},  // every position but the last generated token
                {"dropped", counter.dropped()},
                {"logits", rows},
                {"moe_layers", layers},
                {"weight_bytes", model.footprint().weights}};
    if (out_path.empty()) {
      std::cout << out.dump() << "\n";
    } else {
      std::ofstream f(out_path);
      f << out.dump() << "\n";
      if (!f) throw std::runtime_error("cannot write '" + out_path + "'");
    }
    return inferscope::cli::kSuccess;
  } catch (const std::exception& e) {
    std::cerr << kProgram << ": " << e.what() << "\n";
    return inferscope::cli::kFailure;
  }
}
