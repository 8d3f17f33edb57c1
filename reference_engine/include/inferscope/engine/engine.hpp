// The serving loop: continuous batching with chunked prefill and batched
// decode over a Model, paged KV with automatic prefix caching, SSM state slots
// with checkpoints at block boundaries, sampling, and every signal of the
// design brief sent through Telemetry (telemetry.hpp), the engine's only way to
// the agent.
//
// A step: admit waiting requests while state slots and KV blocks allow (prefix
// lookup, checkpoint restore, vision encoder + connector for images), then one
// forward over all running decodes (one row each) plus prefill chunks up to
// scheduler.max_batch_tokens rows, then sampling and bookkeeping.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "inferscope/engine/kv_cache.hpp"
#include "inferscope/engine/model.hpp"

namespace inferscope::engine {

class Telemetry;

struct Request {
  uint64_t id = 0;
  std::vector<int32_t> text;  // prompt text tokens (bytes); BOS and image tokens are added
  std::vector<float> image;   // [S, S, 3] pixels in [0, 1], or empty
  int32_t max_new_tokens = 16;
  float temperature = 0.0f;  // <= 0: greedy
  uint64_t seed = 0;         // sampling seed (with temperature)
  int32_t topic = -1;        // workload bookkeeping only
  int64_t arrival_ns = 0;    // 0: set at submit
};

// How a request ended. Telemetry::request_finished turns it into the wire's
// RequestEvent (the engine never cancels or fails a request).
enum class RequestStatus : uint8_t { kOk, kRejected };

// A request's life in timestamps (Telemetry::now_ns) and token counts.
struct RequestEvent {
  uint64_t request_id = 0;
  int64_t arrival_ns = 0;
  int64_t first_token_ns = 0;  // 0 if no token was produced
  int64_t finish_ns = 0;
  uint32_t prompt_tokens = 0;
  uint32_t output_tokens = 0;
  uint32_t image_tokens = 0;
  uint32_t cached_tokens = 0;  // prompt tokens served from the prefix cache
  RequestStatus status = RequestStatus::kOk;
};

struct RequestResult {
  uint64_t id = 0;
  std::vector<int32_t> output;
  std::vector<std::vector<float>> logits;  // first-token logits when EngineOptions::keep_logits
  RequestEvent event;
  int64_t encoder_ns = 0, connector_ns = 0, prefill_ns = 0, decode_ns = 0;
};

struct EngineOptions {
  bool keep_logits = false;   // store the first token's logits in results (tests)
  size_t max_waiting = 4096;  // queued requests beyond this are rejected (bounded queue)
  // Asynchronous MoE routing (Model::set_async_routing): -1 keeps the model's
  // setting (env INFERSCOPE_ASYNC_ROUTING, default off), 0 off, 1 on.
  int async_routing = -1;
};

struct LayerRouting {
  std::vector<uint64_t> routed;  // cumulative assignments per expert
  uint64_t tokens = 0, dropped = 0, rerouted = 0, steps = 0;
  double imbalance_sum = 0.0;  // sum over steps of max/mean
};

// Expert-parallel totals of one MoE layer on this rank (EpLayerStats summed over steps).
struct LayerExpertParallel {
  int64_t dispatch_ns = 0, compute_ns = 0, combine_ns = 0;
  uint64_t rows_sent = 0, rows_computed = 0, steps = 0;
};

struct EngineStats {
  uint64_t steps = 0, prefill_tokens = 0, decode_tokens = 0, image_tokens = 0,
           requests_finished = 0, requests_rejected = 0;
  uint64_t attention_queried = 0, attention_hit = 0, ssm_queried = 0, ssm_hit = 0,
           reused_tokens = 0;
  uint64_t checkpoints_saved = 0, checkpoints_restored = 0;
  uint64_t checkpoints_evicted_unused = 0, checkpoints_evicted_reused = 0;  // CheckpointStore
  int64_t encoder_ns = 0, connector_ns = 0, prefill_ns = 0, decode_ns = 0, mixed_ns = 0;
  int64_t busy_ns = 0;
  std::vector<LayerRouting> layers;  // per layer (empty routed for dense layers)
  size_t peak_kv_bytes = 0, peak_ssm_bytes = 0, peak_ckpt_bytes = 0;
  uint64_t idle_steps = 0;                     // expert parallelism: steps with no rows of our own
  std::vector<LayerExpertParallel> ep_layers;  // per layer, filled under expert parallelism
};

class Engine {
 public:
  // telemetry may be null (telemetry off).
  Engine(Model& model, Telemetry* telemetry, EngineOptions options = {});
  ~Engine();

  // Queues a request; the prompt becomes [BOS, image tokens..., text...].
  void submit(Request request);
  // Runs one step; returns false when there was nothing to do. Under expert
  // parallelism (the model has a communicator) every rank must call step()
  // the same number of times: a rank with nothing to do runs an idle step
  // (the MoE layers' exchanges with zero rows of its own, Model::forward_idle),
  // which advances the step id like any other and returns false.
  bool step();
  // Steps until every submitted request has finished (under expert
  // parallelism: until every rank has, agreeing each step with all_reduce).
  void run_to_completion();
  bool idle() const { return waiting_.empty() && running_.empty(); }
  size_t running() const { return running_.size(); }
  size_t waiting() const { return waiting_.size(); }

  std::vector<RequestResult> take_finished();
  const EngineStats& stats() const { return stats_; }
  const BlockManager& blocks() const { return blocks_; }
  Model& model() { return model_; }

 private:
  struct Seq;
  bool admit(Seq& s);
  bool idle_step();
  void build_batch();
  void finish(std::unique_ptr<Seq> s, int64_t now);
  void sample(Seq& s, const float* logits);
  void report_memory(bool force);

  Model& model_;
  Telemetry* telemetry_;
  EngineOptions options_;
  const ModelConfig& config_;
  MemoryFootprint footprint_;
  BlockManager blocks_;
  CheckpointStore checkpoints_;
  std::vector<int32_t> free_state_slots_;
  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;
  std::vector<RequestResult> finished_;
  StepBatch batch_;
  std::vector<Seq*> batch_seqs_;     // sequence of each batch entry
  std::vector<int32_t> batch_rows_;  // rows each batch entry contributes
  std::vector<float> logits_;
  EngineStats stats_;
  uint64_t step_id_ = 0;
  int64_t last_memory_ns_ = 0;
  uint64_t sent_prefix_[4] = {};
  uint64_t sent_evictions_[2] = {};  // checkpoint evictions (unused, reused) already reported
  class Observer;
  std::unique_ptr<Observer> observer_;
};

}  // namespace inferscope::engine
