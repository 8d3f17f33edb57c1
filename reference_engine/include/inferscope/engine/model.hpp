// The hybrid model: embedding, a stack of attention / selective-SSM mixers with
// dense or MoE feed-forward blocks, the output head, and the vision encoder +
// connector. It owns the device-side caches (paged KV per attention layer, SSM
// state slots and checkpoint slots per SSM layer) and fixed scratch buffers
// sized for scheduler.max_batch_tokens, so a step allocates nothing. Which
// blocks and slots a sequence uses is the serving layer's business (engine.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/communicator.hpp"
#include "inferscope/engine/config.hpp"
#include "inferscope/engine/expert_parallel.hpp"
#include "inferscope/engine/layers.hpp"
#include "inferscope/engine/weights.hpp"

namespace inferscope::engine {

// The rows of one batched forward step: chunks of several sequences (prefill
// chunks and single decode tokens mixed), sequence after sequence.
struct StepBatch {
  std::vector<int32_t> tokens;             // [T]
  std::vector<int32_t> positions;          // [T]
  std::vector<int32_t> token_seq;          // [T] index of the row's sequence in this batch
  std::vector<int32_t> seq_start;          // [S + 1]
  std::vector<int32_t> state_slot;         // [S] SSM state slot of each sequence
  std::vector<int32_t> block_table;        // concatenated block ids of each sequence
  std::vector<int32_t> block_table_start;  // [S + 1]
  std::vector<int32_t> kv_slots;           // [T] cache slot the row's K/V goes to
  std::vector<int32_t> logit_rows;         // rows whose next-token logits are wanted
  // Rows whose embedding comes from an image: x[row + i] = source[first + i].
  struct ImageRows {
    int32_t row = 0, count = 0, first = 0;
    Tensor source;
  };
  std::vector<ImageRows> images;

  int32_t rows() const { return static_cast<int32_t>(tokens.size()); }
  void clear();
  // Appends a sequence chunk; block table = the sequence's blocks.
  void add_chunk(std::span<const int32_t> chunk_tokens, int32_t first_pos, int32_t state,
                 std::span<const int32_t> blocks, int32_t block_size, bool want_logits);
};

// Hooks the engine uses for telemetry; the model itself knows no agent.
// Under expert parallelism the EpPhaseHook ranges bracket each MoE layer's
// dispatch / experts / combine, and ep_layer() reports every MoE layer of the
// step once the step's final synchronisation has made its timings readable.
class ForwardObserver : public EpPhaseHook {
 public:
  virtual void layer_begin(int32_t layer) = 0;
  virtual void layer_end(int32_t layer) = 0;
  virtual void moe_routed(int32_t layer, const RouteCounts& counts, int32_t tokens) = 0;
  virtual void ep_layer(const EpLayerStats& /*stats*/) {}
};

struct MemoryFootprint {
  size_t weights = 0, activations = 0, kv_cache = 0, ssm_state = 0, ssm_checkpoints = 0;
  size_t kv_bytes_per_block = 0, ssm_bytes_per_slot = 0;  // over all layers
};

class Model {
 public:
  // weights_path: safetensors file to load; empty -> seeded init. placement:
  // which routed experts this rank holds (default: all, no expert parallelism;
  // with ranks > 1 call attach_expert_parallel before the first forward).
  Model(Backend& backend, const ModelConfig& config, const std::string& weights_path = "",
        ExpertPlacement placement = {});
  // Weights filled by `fill` (e.g. a Hugging Face checkpoint reader,
  // hf_checkpoint.hpp) in `gemm_dtype` storage (see Weights); no expert parallelism.
  using WeightsFill = std::function<void(Weights&)>;
  Model(Backend& backend, const ModelConfig& config, const WeightsFill& fill,
        DType gemm_dtype = DType::kF32);
  ~Model();

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  Weights& weights() { return *weights_; }

  // Runs the backbone over `batch` (rows <= max_batch_tokens) and writes
  // logits [batch.logit_rows.size(), config.vocab] to `logits` (host).
  void forward(const StepBatch& batch, std::vector<float>& logits,
               ForwardObserver* observer = nullptr);

  // Expert parallelism: the communicator to the other ranks (must match the
  // placement; outlives the model). `clock` stamps EpLayerStats (null: steady clock).
  void attach_expert_parallel(Communicator& comm, int64_t (*clock)() = nullptr);
  // Null without expert parallelism.
  ExpertParallel* expert_parallel() { return ep_.get(); }
  const ExpertPlacement& placement() const { return placement_; }
  // A step with no rows of this rank's own: runs only the MoE layers'
  // exchanges (computing the rows other ranks send here), so every rank
  // issues the same collectives. Requires expert parallelism.
  void forward_idle(ForwardObserver* observer = nullptr);

  // Vision front end for one image (host pixels [S, S, 3] in [0, 1]):
  // encode_image runs patchify + encoder layers, connect_image the connector
  // into out [vision.tokens(), d_model]. Two calls so the caller can time them.
  void encode_image(const float* pixels);
  void connect_image(const Tensor& out);

  // SSM state slots and checkpoints (every SSM layer at once).
  void clear_state(int32_t slot);
  void save_checkpoint(int32_t state_slot, int32_t checkpoint_slot);
  void restore_checkpoint(int32_t checkpoint_slot, int32_t state_slot);

  MemoryFootprint footprint() const;

  // Asynchronous routing (backend.hpp): the MoE layers keep their routing on
  // the device and the step's per-layer counts come to the host with the
  // logits, in one wait per step; ForwardObserver::moe_routed is then called
  // for every MoE layer after the step (in layer order) instead of inside
  // each layer. Same logits and counts as the synchronous path, which waits
  // once per MoE layer. Default: env INFERSCOPE_ASYNC_ROUTING (1 on, 0 off;
  // unset: off). Under expert parallelism the synchronous path always runs
  // (the exchange sizes its messages from the host counts).
  void set_async_routing(bool on) { async_routing_ = on; }
  bool async_routing() const { return async_routing_ && !ep_; }

  // CUDA-graph decode (docs/gpu.md, "CUDA-graph decode"): a pure decode step
  // (one row per sequence, all wanting logits, no images) of at most 64 rows
  // is padded to a bucket of 1, 2, 4, ..., 64 rows (padding rows in a spare
  // KV block and SSM slot, masked out of routing and counts) and, on a backend
  // with step graphs, captured once per (bucket, context bucket) and then
  // replayed, its metadata uploaded with one copy. Same logits and counts as
  // the eager step. Needs (and turns on) asynchronous routing; on a backend
  // without graphs the padded step runs eagerly. Default: env
  // INFERSCOPE_CUDA_GRAPHS (1 on, 0 off; unset: off).
  void set_step_graphs(bool on) {
    step_graphs_ = on;
    if (on) async_routing_ = true;
  }
  bool step_graphs() const { return step_graphs_ && async_routing(); }
  // Steps that took the padded graph path (eager warm-up, capture or replay).
  uint64_t graph_steps() const { return graph_steps_; }
  // The first error of a failed capture (that key then stays eager), or "".
  const std::string& graph_error() const { return graph_error_; }

 private:
  struct LayerTensors;
  void build(const std::function<void(Weights&)>& fill, DType gemm_dtype);
  void qk_norm(const LayerTensors& w, const Tensor& q, const Tensor& k);
  void attention_layer(int32_t l, const StepBatch& b, const Tensor& x, const Tensor& norm,
                       const Tensor& h);
  void ssm_layer(int32_t l, const StepBatch& b, const Tensor& h);
  void moe_layer(int32_t l, const Tensor& x, const Tensor& norm, const Tensor& h,
                 ForwardObserver* obs);
  void report_ep(ForwardObserver* obs);
  void report_routing(int32_t tokens, ForwardObserver* obs);
  void backbone(const StepBatch& b, ForwardObserver* obs);
  int32_t graph_bucket(const StepBatch& b, int32_t& context) const;
  void graph_forward(const StepBatch& b, int32_t bucket, int32_t context, ForwardObserver* obs);
  const RouteCounts& logical_counts(int32_t layer);

  Backend& backend_;
  ModelConfig config_;
  std::unique_ptr<Weights> weights_;
  std::vector<LayerTensors> layers_;
  struct Scratch;
  std::unique_ptr<Scratch> scratch_;
  std::vector<Buffer> k_cache_, v_cache_;     // per layer (empty for SSM layers)
  std::vector<Buffer> ssm_state_, ssm_ckpt_;  // per layer (empty for attention layers)
  ExpertPlacement placement_;
  std::unique_ptr<ExpertParallel> ep_;
  std::vector<EpLayerStats> ep_stats_;  // MoE layers of the current step
  bool async_routing_ = false;
  bool step_graphs_ = false;
  bool padding_ = false;                  // a padded graph step is being issued
  int32_t valid_rows_[1] = {0};           // its real rows (step metadata of the router)
  StepBatch padded_;                      // its batch
  std::set<uint64_t> warm_graph_keys_;    // keys whose first (eager) step has run
  std::set<uint64_t> failed_graph_keys_;  // keys whose capture failed: eager for good
  std::string graph_error_;
  uint64_t graph_steps_ = 0;
  std::vector<int32_t> moe_row_;  // per layer: its row of route_counts_, -1 if not MoE
};

}  // namespace inferscope::engine
