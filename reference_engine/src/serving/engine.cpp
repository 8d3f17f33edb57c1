// The serving loop (see engine.hpp).
//
// [SECTION] Sequences   [SECTION] Admission   [SECTION] Batching
// [SECTION] Step        [SECTION] Finishing   [SECTION] Telemetry
#include "inferscope/engine/engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "inferscope/analysis/layer_stats.hpp"
#include "inferscope/engine/telemetry.hpp"

namespace inferscope::engine {

namespace {
int64_t now_ns() {
  return Telemetry::now_ns();  // the signals' time base, telemetry on or off
}

uint64_t hash_pixels(const std::vector<float>& px) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (float f : px) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    h = (h ^ bits) * 0x100000001b3ull;
  }
  return h;
}
}  // namespace

// Accumulates routing statistics for the summary and forwards every hook to
// the telemetry (when on).
class Engine::Observer final : public ForwardObserver {
 public:
  Observer(EngineStats& stats, Telemetry* telemetry) : stats_(stats), telemetry_(telemetry) {}
  void layer_begin(int32_t layer) override {
    if (telemetry_) telemetry_->layer_begin(layer);
  }
  void layer_end(int32_t layer) override {
    if (telemetry_) telemetry_->layer_end(layer);
  }
  void moe_routed(int32_t layer, const RouteCounts& c, int32_t tokens) override {
    LayerRouting& r = stats_.layers[static_cast<size_t>(layer)];
    for (size_t e = 0; e < c.routed.size(); ++e) r.routed[e] += c.routed[e];
    r.tokens += static_cast<uint64_t>(tokens);
    r.dropped += c.dropped;
    r.rerouted += c.rerouted;
    r.steps++;
    r.imbalance_sum += analysis::imbalance(c.routed);  // max / mean; 0 for an idle step
    if (telemetry_) telemetry_->moe_routed(layer, c, tokens);
  }
  void ep_phase_begin(int32_t layer, EpPhase phase) override {
    if (telemetry_) telemetry_->ep_phase_begin(layer, phase);
  }
  void ep_phase_end(int32_t layer, EpPhase phase) override {
    if (telemetry_) telemetry_->ep_phase_end(layer, phase);
  }
  void ep_layer(const EpLayerStats& st) override {
    if (stats_.ep_layers.size() <= static_cast<size_t>(st.layer))
      stats_.ep_layers.resize(static_cast<size_t>(st.layer) + 1);
    LayerExpertParallel& e = stats_.ep_layers[static_cast<size_t>(st.layer)];
    e.dispatch_ns += st.dispatch_ns;
    e.compute_ns += st.compute_ns;
    e.combine_ns += st.combine_ns;
    e.rows_sent += st.rows_sent;
    e.rows_computed += st.rows_computed;
    e.steps++;
    if (telemetry_) telemetry_->ep_layer(st);
  }

 private:
  EngineStats& stats_;
  Telemetry* telemetry_;
};

// [SECTION] Sequences
struct Engine::Seq {
  Request req;
  std::vector<int32_t> tokens;   // prompt, then generated tokens
  std::vector<uint64_t> hashes;  // chain hashes of the prompt's full blocks
  int32_t prompt_len = 0;
  int32_t image_tokens = 0;  // positions 1..image_tokens hold the image
  std::vector<int32_t> blocks;
  int32_t registered = 0;  // leading blocks registered in the prefix cache
  int32_t state_slot = -1;
  int32_t computed = 0;  // positions whose KV / state is computed
  int32_t generated = 0;
  Buffer image_embeddings;
  std::mt19937_64 rng;
  RequestResult result;
  int64_t prefill_start = 0, decode_start = 0;
  bool prefilling() const { return computed < prompt_len; }
};

Engine::Engine(Model& model, Telemetry* telemetry, EngineOptions options)
    : model_(model),
      telemetry_(telemetry),
      options_(options),
      config_(model.config()),
      footprint_(model.footprint()),
      blocks_(config_.cache.num_blocks, config_.cache.block_size),
      checkpoints_(config_.has_ssm() && config_.cache.ssm_checkpoint_interval > 0
                       ? config_.cache.max_checkpoints
                       : 0) {
  if (options_.async_routing >= 0) model_.set_async_routing(options_.async_routing != 0);
  // The scheduler samples bytes and its workloads emit bytes: a model with
  // another vocabulary (a Hugging Face checkpoint) runs through hf_run instead.
  if (config_.vocab != kVocab)
    throw std::invalid_argument("the serving engine runs byte-tokenizer models (vocab " +
                                std::to_string(kVocab) + "); this model has vocab " +
                                std::to_string(config_.vocab));
  for (int32_t s = config_.cache.max_seqs - 1; s >= 0; --s) free_state_slots_.push_back(s);
  stats_.layers.resize(static_cast<size_t>(config_.n_layers()));
  for (int32_t l = 0; l < config_.n_layers(); ++l)
    if (config_.is_moe(l))
      stats_.layers[static_cast<size_t>(l)].routed.assign(static_cast<size_t>(config_.moe.experts),
                                                          0);
  batch_.clear();
  observer_ = std::make_unique<Observer>(stats_, telemetry_);
  report_memory(true);
}

Engine::~Engine() {
  report_memory(true);
}  // final memory levels and prefix deltas

void Engine::submit(Request r) {
  auto s = std::make_unique<Seq>();
  if (r.arrival_ns == 0) r.arrival_ns = now_ns();
  s->tokens.push_back(kBos);
  // Image positions carry a placeholder id; their prefix-cache key is the
  // image's content hash, so different images never share blocks.
  std::vector<uint64_t> keys{static_cast<uint64_t>(kBos)};
  if (!r.image.empty()) {
    const auto& v = config_.vision;
    if (!v.enabled)
      throw std::invalid_argument("request has an image but the model has no vision encoder");
    if (r.image.size() != static_cast<size_t>(v.image_size) * v.image_size * 3)
      throw std::invalid_argument("request image must be image_size x image_size x 3 pixels");
    s->image_tokens = v.tokens();
    uint64_t h = hash_pixels(r.image);
    for (int32_t i = 0; i < s->image_tokens; ++i) {
      s->tokens.push_back(kImage);
      keys.push_back(h + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull + (1ull << 40));
    }
  }
  for (int32_t t : r.text) {
    if (t < 0 || t > 255) throw std::invalid_argument("request text tokens must be bytes");
    s->tokens.push_back(t);
    keys.push_back(static_cast<uint64_t>(t));
  }
  s->prompt_len = static_cast<int32_t>(s->tokens.size());
  s->hashes = block_hashes(keys, config_.cache.block_size);
  s->rng.seed(r.seed * 0x9e3779b97f4a7c15ull + r.id);
  s->result.id = r.id;
  s->result.event.request_id = r.id;
  s->result.event.arrival_ns = r.arrival_ns;
  s->result.event.prompt_tokens = static_cast<uint32_t>(s->prompt_len);
  s->result.event.image_tokens = static_cast<uint32_t>(s->image_tokens);
  s->req = std::move(r);
  if (waiting_.size() >= options_.max_waiting) {  // overloaded: reject instead of queueing forever
    s->result.event.status = RequestStatus::kRejected;
    finish(std::move(s), now_ns());
    return;
  }
  waiting_.push_back(std::move(s));
}

// [SECTION] Admission
// Takes a state slot and KV blocks for the whole request (prompt + output), so
// a running request never waits for memory. Returns false when resources are
// short (the request stays queued).
bool Engine::admit(Seq& s) {
  const int32_t bs = config_.cache.block_size;
  const int32_t total_blocks = (s.prompt_len + s.req.max_new_tokens + bs - 1) / bs;
  // Prefix lookup. Attention layers can reuse any cached full block; SSM
  // layers only a prefix whose state was checkpointed at its end.
  int32_t attn_hit = 0, usable = 0, ssm_hit_blocks = 0, ckpt_slot = -1;
  if (config_.cache.prefix_caching) {
    const int32_t max_reuse = (s.prompt_len - 1) / bs;  // the last token must run for logits
    attn_hit = blocks_.cached_prefix(s.hashes);
    usable = std::min(attn_hit, max_reuse);
    if (config_.has_ssm()) {
      const int32_t interval = config_.cache.ssm_checkpoint_interval;
      int32_t m = usable;
      for (; m > 0 && interval > 0; --m) {
        if ((m * bs) % interval != 0) continue;
        if ((ckpt_slot = checkpoints_.find(s.hashes[static_cast<size_t>(m - 1)])) >= 0) break;
      }
      if (interval <= 0) m = 0;
      ssm_hit_blocks = m;
      usable = m;
    }
  }
  if (total_blocks > blocks_.num_blocks()) {
    s.result.event.status = RequestStatus::kRejected;
    return true;  // caller finishes it as rejected
  }
  if (free_state_slots_.empty() || blocks_.available() < total_blocks - usable) return false;

  if (config_.has_attention()) {
    stats_.attention_queried += static_cast<uint64_t>(s.prompt_len);
    stats_.attention_hit += static_cast<uint64_t>(attn_hit) * bs;
  }
  if (config_.has_ssm()) {
    stats_.ssm_queried += static_cast<uint64_t>(s.prompt_len);
    stats_.ssm_hit += static_cast<uint64_t>(ssm_hit_blocks) * bs;
  }
  blocks_.acquire_cached(s.hashes, usable, s.blocks);
  blocks_.allocate(total_blocks - usable, s.blocks);
  s.registered = usable;
  s.state_slot = free_state_slots_.back();
  free_state_slots_.pop_back();
  if (usable > 0 && ckpt_slot >= 0) {
    model_.restore_checkpoint(ckpt_slot, s.state_slot);
    checkpoints_.restored(s.hashes[static_cast<size_t>(usable - 1)]);
    stats_.checkpoints_restored++;
  } else {
    model_.clear_state(s.state_slot);
  }
  s.computed = usable * bs;
  stats_.reused_tokens += static_cast<uint64_t>(s.computed);
  s.result.event.cached_tokens = static_cast<uint32_t>(s.computed);

  // Vision front end, unless every image position came from the cache.
  if (s.image_tokens > 0 && s.computed < 1 + s.image_tokens) {
    s.image_embeddings = Buffer(model_.backend(), s.image_tokens, config_.d_model);
    int64_t t0 = now_ns();
    {
      Telemetry::Span span;
      if (telemetry_) span = telemetry_->span(RequestPhase::kEncoder, s.req.id);
      model_.encode_image(s.req.image.data());
      model_.backend().synchronize();
    }
    int64_t t1 = now_ns();
    {
      Telemetry::Span span;
      if (telemetry_) span = telemetry_->span(RequestPhase::kConnector, s.req.id);
      model_.connect_image(s.image_embeddings);
      model_.backend().synchronize();
    }
    int64_t t2 = now_ns();
    s.result.encoder_ns = t1 - t0;
    s.result.connector_ns = t2 - t1;
    stats_.encoder_ns += t1 - t0;
    stats_.connector_ns += t2 - t1;
    stats_.image_tokens += static_cast<uint64_t>(s.image_tokens);
    if (telemetry_) {
      telemetry_->request_phase(s.req.id, RequestPhase::kEncoder, t0, t1);
      telemetry_->request_phase(s.req.id, RequestPhase::kConnector, t1, t2);
    }
  }
  return true;
}

// [SECTION] Batching
void Engine::build_batch() {
  batch_.clear();
  batch_seqs_.clear();
  batch_rows_.clear();
  const int32_t bs = config_.cache.block_size;
  int32_t budget = config_.scheduler.max_batch_tokens;
  // Decodes first: one row each, so running requests keep their pace.
  for (auto& sp : running_) {
    Seq& s = *sp;
    if (s.prefilling() || budget == 0) continue;
    std::span<const int32_t> tok(&s.tokens[static_cast<size_t>(s.computed)], 1);
    batch_.add_chunk(tok, s.computed, s.state_slot, s.blocks, bs, true);
    batch_seqs_.push_back(&s);
    batch_rows_.push_back(1);
    --budget;
  }
  // Then prefill chunks in arrival order.
  const int32_t interval = config_.has_ssm() ? config_.cache.ssm_checkpoint_interval : 0;
  for (auto& sp : running_) {
    Seq& s = *sp;
    if (!s.prefilling() || budget == 0) continue;
    int32_t n = std::min({s.prompt_len - s.computed, config_.scheduler.prefill_chunk, budget});
    if (interval > 0) {
      // End the chunk on the next checkpoint boundary inside the prompt's full
      // blocks, so the state there can be saved.
      int32_t next = (s.computed / interval + 1) * interval;
      if (next <= static_cast<int32_t>(s.hashes.size()) * bs) n = std::min(n, next - s.computed);
    }
    const int32_t row0 = batch_.rows(), p0 = s.computed;
    std::span<const int32_t> tok(&s.tokens[static_cast<size_t>(p0)], static_cast<size_t>(n));
    batch_.add_chunk(tok, p0, s.state_slot, s.blocks, bs, p0 + n == s.prompt_len);
    // Image positions 1..image_tokens inside this chunk take the connector's output.
    int32_t lo = std::max(p0, 1), hi = std::min(p0 + n, 1 + s.image_tokens);
    if (hi > lo && s.image_embeddings.tensor().data)
      batch_.images.push_back({row0 + (lo - p0), hi - lo, lo - 1, s.image_embeddings.tensor()});
    if (s.prefill_start == 0) s.prefill_start = now_ns();
    batch_seqs_.push_back(&s);
    batch_rows_.push_back(n);
    budget -= n;
  }
}

// [SECTION] Step
bool Engine::step() {
  const int64_t t_start = now_ns();
  if (telemetry_) telemetry_->set_step(step_id_);
  // Admit in arrival order while resources allow.
  while (!waiting_.empty() && !free_state_slots_.empty()) {
    Seq& s = *waiting_.front();
    if (!admit(s)) break;
    std::unique_ptr<Seq> sp = std::move(waiting_.front());
    waiting_.pop_front();
    if (sp->result.event.status == RequestStatus::kRejected)
      finish(std::move(sp), now_ns());
    else
      running_.push_back(std::move(sp));
  }
  if (running_.empty()) return idle_step();

  build_batch();
  if (batch_.rows() == 0) return idle_step();
  bool has_prefill = false;
  for (Seq* s : batch_seqs_) has_prefill |= s->prefilling();
  int32_t prefill_rows = 0, decode_rows = 0;
  for (size_t i = 0; i < batch_seqs_.size(); ++i)
    (batch_seqs_[i]->prefilling() ? prefill_rows : decode_rows) += batch_rows_[i];

  const int64_t t_fwd = now_ns();
  {
    Telemetry::Span span;
    if (telemetry_)
      span = telemetry_->span(has_prefill ? RequestPhase::kPrefill : RequestPhase::kDecode);
    model_.forward(batch_, logits_, observer_.get());
  }
  const int64_t t_done = now_ns();
  const int64_t fwd_ns = t_done - t_fwd;
  if (prefill_rows > 0 && decode_rows > 0)
    stats_.mixed_ns += fwd_ns;
  else if (prefill_rows > 0)
    stats_.prefill_ns += fwd_ns;
  else
    stats_.decode_ns += fwd_ns;
  stats_.prefill_tokens += static_cast<uint64_t>(prefill_rows);
  stats_.decode_tokens += static_cast<uint64_t>(decode_rows);
  stats_.steps++;

  // Bookkeeping: advance positions, register full prompt blocks, save SSM
  // checkpoints on boundaries, sample where logits were produced.
  const int32_t bs = config_.cache.block_size;
  const int32_t interval = config_.has_ssm() ? config_.cache.ssm_checkpoint_interval : 0;
  size_t logit_index = 0;
  for (size_t i = 0; i < batch_seqs_.size(); ++i) {
    Seq& s = *batch_seqs_[i];
    const bool was_prefill = s.prefilling();
    s.computed += batch_rows_[i];
    if (was_prefill) {
      const int32_t full =
          std::min<int32_t>(s.computed / bs, static_cast<int32_t>(s.hashes.size()));
      if (config_.cache.prefix_caching)
        for (; s.registered < full; ++s.registered)
          blocks_.register_block(s.blocks[static_cast<size_t>(s.registered)],
                                 s.hashes[static_cast<size_t>(s.registered)]);
      if (interval > 0 && s.computed % interval == 0 &&
          s.computed / bs <= static_cast<int32_t>(s.hashes.size())) {
        bool fresh = false;
        int32_t slot =
            checkpoints_.insert(s.hashes[static_cast<size_t>(s.computed / bs - 1)], &fresh);
        if (slot >= 0 && fresh) {
          model_.save_checkpoint(s.state_slot, slot);
          stats_.checkpoints_saved++;
        }
      }
    }
    if (!was_prefill || !s.prefilling()) {  // this row produced next-token logits
      const float* l = logits_.data() + logit_index * kVocab;
      ++logit_index;
      if (was_prefill) {
        s.result.prefill_ns = t_done - s.prefill_start;
        if (telemetry_)
          telemetry_->request_phase(s.req.id, RequestPhase::kPrefill, s.prefill_start, t_done);
        s.decode_start = t_done;
        s.result.event.first_token_ns = t_done;
        if (options_.keep_logits) s.result.logits.emplace_back(l, l + kVocab);
      }
      sample(s, l);
    }
  }
  // Retire finished sequences.
  for (size_t i = 0; i < running_.size();) {
    if (!running_[i]->prefilling() && running_[i]->generated >= running_[i]->req.max_new_tokens) {
      std::unique_ptr<Seq> s = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      finish(std::move(s), t_done);
    } else {
      ++i;
    }
  }
  stats_.busy_ns += now_ns() - t_start;
  report_memory(false);
  ++step_id_;
  return true;
}

bool Engine::idle_step() {
  if (!model_.expert_parallel()) return false;
  // Lockstep: the other ranks' MoE layers exchange rows with ours this step.
  model_.forward_idle(observer_.get());
  stats_.idle_steps++;
  ++step_id_;
  return false;
}

void Engine::run_to_completion() {
  if (ExpertParallel* ep = model_.expert_parallel()) {
    while (ep->comm->any(!idle())) {
      if (!step() && running_.empty() && !waiting_.empty())
        throw std::runtime_error("engine: a waiting request can never be admitted");
    }
    return;
  }
  while (!idle()) {
    if (!step() && running_.empty() && !waiting_.empty())
      throw std::runtime_error("engine: a waiting request can never be admitted");
  }
}

void Engine::sample(Seq& s, const float* logits) {
  // Output is bytes only (specials are never sampled; generation runs to
  // max_new_tokens, like a benchmark with ignore_eos).
  int32_t tok = 0;
  if (s.req.temperature <= 0.0f) {
    tok = static_cast<int32_t>(std::max_element(logits, logits + 256) - logits);
  } else {
    float mx = *std::max_element(logits, logits + 256);
    double sum = 0.0;
    double p[256];
    for (int i = 0; i < 256; ++i) sum += (p[i] = std::exp((logits[i] - mx) / s.req.temperature));
    double u = std::uniform_real_distribution<double>(0.0, sum)(s.rng);
    for (tok = 0; tok < 255 && (u -= p[tok]) > 0.0; ++tok) {
    }
  }
  s.tokens.push_back(tok);
  s.result.output.push_back(tok);
  s.generated++;
}

// [SECTION] Finishing
void Engine::finish(std::unique_ptr<Seq> s, int64_t now) {
  if (!s->blocks.empty()) blocks_.release(s->blocks);
  if (s->state_slot >= 0) free_state_slots_.push_back(s->state_slot);
  s->result.event.finish_ns = now;
  s->result.event.output_tokens = static_cast<uint32_t>(s->generated);
  if (s->decode_start > 0) {
    s->result.decode_ns = now - s->decode_start;
    if (telemetry_ && s->generated > 1)
      telemetry_->request_phase(s->req.id, RequestPhase::kDecode, s->decode_start, now);
  }
  if (s->result.event.status == RequestStatus::kRejected)
    stats_.requests_rejected++;
  else
    stats_.requests_finished++;
  if (telemetry_) telemetry_->request_finished(s->result);
  finished_.push_back(std::move(s->result));
}

std::vector<RequestResult> Engine::take_finished() {
  std::vector<RequestResult> out;
  out.swap(finished_);
  return out;
}

// [SECTION] Telemetry
void Engine::report_memory(bool force) {
  const size_t kv = static_cast<size_t>(blocks_.used()) * footprint_.kv_bytes_per_block;
  const size_t ssm = (static_cast<size_t>(config_.cache.max_seqs) - free_state_slots_.size()) *
                     footprint_.ssm_bytes_per_slot;
  const size_t ckpt_slot_bytes =
      checkpoints_.slots() > 0
          ? footprint_.ssm_checkpoints / static_cast<size_t>(checkpoints_.slots())
          : 0;
  const size_t ckpt = static_cast<size_t>(checkpoints_.used()) * ckpt_slot_bytes;
  stats_.peak_kv_bytes = std::max(stats_.peak_kv_bytes, kv);
  stats_.peak_ssm_bytes = std::max(stats_.peak_ssm_bytes, ssm);
  stats_.peak_ckpt_bytes = std::max(stats_.peak_ckpt_bytes, ckpt);
  stats_.checkpoints_evicted_unused = checkpoints_.evicted_unused();
  stats_.checkpoints_evicted_reused = checkpoints_.evicted_reused();
  if (!telemetry_) return;
  // Checkpoint evictions as counter deltas; the first report sends zeros so the
  // collector's series exist (and rate() sees the first eviction).
  if (checkpoints_.slots() > 0 &&
      (force || stats_.checkpoints_evicted_unused != sent_evictions_[0] ||
       stats_.checkpoints_evicted_reused != sent_evictions_[1])) {
    telemetry_->checkpoint_evictions(stats_.checkpoints_evicted_unused - sent_evictions_[0],
                                     stats_.checkpoints_evicted_reused - sent_evictions_[1]);
    sent_evictions_[0] = stats_.checkpoints_evicted_unused;
    sent_evictions_[1] = stats_.checkpoints_evicted_reused;
  }
  // Prefix-cache deltas whenever lookups happened (only on admissions).
  if (stats_.attention_queried != sent_prefix_[0] || stats_.ssm_queried != sent_prefix_[2]) {
    telemetry_->prefix_lookups(
        stats_.attention_queried - sent_prefix_[0], stats_.attention_hit - sent_prefix_[1],
        stats_.ssm_queried - sent_prefix_[2], stats_.ssm_hit - sent_prefix_[3]);
    sent_prefix_[0] = stats_.attention_queried;
    sent_prefix_[1] = stats_.attention_hit;
    sent_prefix_[2] = stats_.ssm_queried;
    sent_prefix_[3] = stats_.ssm_hit;
  }
  const int64_t now = now_ns();
  if (!force && now - last_memory_ns_ < 100'000'000) return;  // 10 memory samples/s are plenty
  last_memory_ns_ = now;
  telemetry_->memory(MemoryInUse{kv, ssm, ckpt}, footprint_);
}

}  // namespace inferscope::engine
