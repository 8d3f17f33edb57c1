// Two engine paths of one model fed the same steps on the GPU (async vs sync routing, graph vs
// eager decode): the sequences, their KV blocks and positions, and the greedy next tokens, so a
// test only says which rows each step has and what to compare.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "inferscope/engine/config.hpp"
#include "inferscope/engine/model.hpp"

namespace inferscope::engine::gpu_test {

// Every MoE layer's counts of a forward, in the order the model reports them.
struct RouteRecorder : ForwardObserver {
  std::vector<std::vector<uint32_t>> routed;
  std::vector<std::vector<int32_t>> kept;
  std::vector<uint32_t> dropped, rerouted;
  void layer_begin(int32_t) override {}
  void layer_end(int32_t) override {}
  void moe_routed(int32_t, const RouteCounts& c, int32_t) override {
    routed.push_back(c.routed);
    kept.push_back(c.kept);
    dropped.push_back(c.dropped);
    rerouted.push_back(c.rerouted);
  }
};

// `sequences` sequences with room for 128 positions each. Step 0 prefills 3 + s tokens of
// sequence s (52 rows for 8 sequences: within the small models' max_batch_tokens); later steps
// decode one token per row, the greedy choice of the logits given to choose_next().
class PairedDecode {
 public:
  PairedDecode(const ModelConfig& cfg, int sequences, Model& a, Model& b)
      : block_size_(cfg.cache.block_size),
        vocab_(cfg.vocab),
        blocks_(static_cast<size_t>(sequences)),
        pos_(static_cast<size_t>(sequences), 0),
        next_(static_cast<size_t>(sequences), 0) {
    const int per_seq = 128 / block_size_ + 1;
    for (int s = 0; s < sequences; ++s) {
      for (int k = 0; k < per_seq; ++k) blocks_[s].push_back(s * per_seq + k);
      a.clear_state(s);
      b.clear_state(s);
    }
  }

  // The next step over sequences 0 .. rows-1.
  StepBatch next_step(int rows) {
    StepBatch b;
    for (int s = 0; s < rows; ++s) {
      std::vector<int32_t> toks;
      if (step_ == 0)
        for (int i = 0; i < 3 + s; ++i) toks.push_back(33 + (s * 31 + i * 7) % 94);
      else
        toks.push_back(next_[s]);
      b.add_chunk(toks, pos_[s], s, blocks_[s], block_size_, true);
      pos_[s] += static_cast<int32_t>(toks.size());
    }
    ++step_;
    return b;
  }

  // The greedy next token of each of the step's `rows` rows.
  void choose_next(const std::vector<float>& logits, int rows) {
    for (int s = 0; s < rows; ++s) {
      const float* l = logits.data() + static_cast<size_t>(s) * vocab_;
      next_[s] = static_cast<int32_t>(std::max_element(l, l + vocab_) - l);
    }
  }

 private:
  int block_size_;
  int32_t vocab_;
  std::vector<std::vector<int32_t>> blocks_;
  std::vector<int32_t> pos_, next_;
  int step_ = 0;
};

}  // namespace inferscope::engine::gpu_test
