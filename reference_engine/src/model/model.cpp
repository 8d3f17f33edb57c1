// The hybrid model's forward pass over backend ops.
//
// [SECTION] StepBatch   [SECTION] Construction   [SECTION] Backbone
// [SECTION] Vision      [SECTION] State slots
#include "inferscope/engine/model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace inferscope::engine {

// [SECTION] StepBatch
void StepBatch::clear() {
  tokens.clear();
  positions.clear();
  token_seq.clear();
  seq_start.assign(1, 0);
  state_slot.clear();
  block_table.clear();
  block_table_start.assign(1, 0);
  kv_slots.clear();
  logit_rows.clear();
  images.clear();
}

void StepBatch::add_chunk(std::span<const int32_t> chunk, int32_t first_pos, int32_t state,
                          std::span<const int32_t> blocks, int32_t block_size, bool want_logits) {
  if (seq_start.empty()) seq_start.push_back(0);
  if (block_table_start.empty()) block_table_start.push_back(0);
  const int32_t seq = static_cast<int32_t>(state_slot.size());
  for (size_t i = 0; i < chunk.size(); ++i) {
    int32_t pos = first_pos + static_cast<int32_t>(i);
    tokens.push_back(chunk[i]);
    positions.push_back(pos);
    token_seq.push_back(seq);
    kv_slots.push_back(blocks[static_cast<size_t>(pos / block_size)] * block_size +
                       pos % block_size);
  }
  seq_start.push_back(static_cast<int32_t>(tokens.size()));
  state_slot.push_back(state);
  block_table.insert(block_table.end(), blocks.begin(), blocks.end());
  block_table_start.push_back(static_cast<int32_t>(block_table.size()));
  if (want_logits) logit_rows.push_back(static_cast<int32_t>(tokens.size()) - 1);
}

// [SECTION] Construction
namespace {
// A 0/1 switch from the environment; unset or empty: off.
bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return false;
  const std::string s(v);
  if (s == "1") return true;
  if (s == "0") return false;
  throw std::invalid_argument(std::string(name) + " must be 0 or 1, got '" + s + "'");
}
bool env_flag_set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}
bool async_routing_from_env() {
  return env_flag("INFERSCOPE_ASYNC_ROUTING");
}
}  // namespace

struct Model::LayerTensors {
  Tensor norm1, norm2;
  Tensor wqkv, wo, q_norm, k_norm;                   // attention
  Tensor w_in, w_x, w_dt, dt_bias, A, Dskip, w_out;  // ssm
  Tensor w_gu, w_down;                               // dense ffn
  MoeWeights moe;
};

struct Model::Scratch {
  Buffer x, h, qkv, attn, xz, proj, dt, y, gu, act, xl, logits;
  MoeScratch moe;
  // Asynchronous routing: every MoE layer's [2E + 2] counts of the step, on the
  // device, and their host copy (made with the logits download).
  Buffer route_counts;
  std::vector<int32_t> host_route_counts;
  Buffer img, patches, ve, vh, vqkv, vattn, vmlp, c1, c2;
  RouteCounts counts;
  RouteCounts logical_counts;  // counts in the model's expert ids (relabelling placement)
  size_t bytes() const {
    size_t n = moe.bytes();
    for (const Buffer* b :
         {&x,      &h,   &qkv,     &attn, &xz, &proj, &dt,    &y,    &gu, &act, &xl,
          &logits, &img, &patches, &ve,   &vh, &vqkv, &vattn, &vmlp, &c1, &c2})
      n += b->bytes();
    return n + route_counts.bytes();
  }
};

Model::Model(Backend& backend, const ModelConfig& config, const std::string& weights_path,
             ExpertPlacement placement)
    : backend_(backend), config_(config), placement_(placement) {
  config_.validate();
  if (placement_.ranks > 1)
    placement_ = placement.validated(config_.moe.experts);
  else
    placement_.slot_to_logical.clear();  // one rank holds every expert: nothing to relabel
  build(
      [&](Weights& w) {
        if (weights_path.empty())
          w.init_random();
        else
          w.load(weights_path);
      },
      DType::kF32);
}

Model::Model(Backend& backend, const ModelConfig& config, const WeightsFill& fill, DType gemm_dtype)
    : backend_(backend), config_(config) {
  config_.validate();
  build(fill, gemm_dtype);
}

void Model::build(const std::function<void(Weights&)>& fill, DType gemm_dtype) {
  Backend& backend = backend_;
  const ModelConfig& c = config_;
  async_routing_ = async_routing_from_env();
  step_graphs_ = env_flag("INFERSCOPE_CUDA_GRAPHS");
  if (step_graphs_) {
    if (env_flag_set("INFERSCOPE_ASYNC_ROUTING") && !async_routing_)
      throw std::invalid_argument(
          "INFERSCOPE_CUDA_GRAPHS=1 needs asynchronous routing (INFERSCOPE_ASYNC_ROUTING=0 given)");
    async_routing_ = true;
  }
  weights_ = std::make_unique<Weights>(backend, c, placement_, gemm_dtype);
  fill(*weights_);

  auto L = [](int32_t l, const char* w) { return "l" + std::to_string(l) + "." + w; };
  const Weights& W = *weights_;
  layers_.resize(static_cast<size_t>(c.n_layers()));
  for (int32_t l = 0; l < c.n_layers(); ++l) {
    LayerTensors& t = layers_[static_cast<size_t>(l)];
    t.norm1 = W.get(L(l, "norm1"));
    t.norm2 = W.get(L(l, "norm2"));
    if (c.is_attention(l)) {
      t.wqkv = W.get(L(l, "wqkv"));
      t.wo = W.get(L(l, "wo"));
      if (c.attention.qk_norm != QkNorm::kNone) {
        t.q_norm = W.get(L(l, "q_norm"));
        t.k_norm = W.get(L(l, "k_norm"));
      }
    } else {
      t.w_in = W.get(L(l, "w_in"));
      t.w_x = W.get(L(l, "w_x"));
      t.w_dt = W.get(L(l, "w_dt"));
      t.dt_bias = W.get(L(l, "dt_bias"));
      t.A = W.get(L(l, "A"));
      t.Dskip = W.get(L(l, "Dskip"));
      t.w_out = W.get(L(l, "w_out"));
    }
    if (c.is_moe(l)) {
      t.moe.router = W.get(L(l, "router"));
      if (W.has(L(l, "router_bias"))) t.moe.router_bias = W.get(L(l, "router_bias"));
      t.moe.experts_gu = W.get(L(l, "experts_gu"));
      t.moe.experts_down = W.get(L(l, "experts_down"));
      if (W.has(L(l, "shared_gu"))) {
        t.moe.shared_gu = W.get(L(l, "shared_gu"));
        t.moe.shared_down = W.get(L(l, "shared_down"));
      }
    } else {
      t.w_gu = W.get(L(l, "w_gu"));
      t.w_down = W.get(L(l, "w_down"));
    }
  }

  const int64_t T = c.scheduler.max_batch_tokens, D = c.d_model;
  const auto& a = c.attention;
  const auto& s = c.ssm;
  scratch_ = std::make_unique<Scratch>();
  Scratch& S = *scratch_;
  S.x = Buffer(backend, T, D);
  S.h = Buffer(backend, T, D);
  S.xl = Buffer(backend, T, D);
  S.logits = Buffer(backend, T, c.vocab);
  if (c.has_attention()) {
    S.qkv = Buffer(backend, T, (a.n_heads + 2 * a.n_kv_heads) * a.head_dim);
    S.attn = Buffer(backend, T, a.n_heads * a.head_dim);
  }
  if (c.has_ssm()) {
    S.xz = Buffer(backend, T, 2 * s.d_inner);
    S.proj = Buffer(backend, T, s.dt_rank + 2 * s.d_state);
    S.dt = Buffer(backend, T, s.d_inner);
    S.y = Buffer(backend, T, s.d_inner);
  }
  if (c.ffns.find('D') != std::string::npos) {
    S.gu = Buffer(backend, T, 2 * c.dense_hidden);
    S.act = Buffer(backend, T, c.dense_hidden);
  }
  if (c.ffns.find('M') != std::string::npos) {
    S.moe = MoeScratch(backend, c, T);
    int32_t rows = 0;
    moe_row_.assign(static_cast<size_t>(c.n_layers()), -1);
    for (int32_t l = 0; l < c.n_layers(); ++l)
      if (c.is_moe(l)) moe_row_[static_cast<size_t>(l)] = rows++;
    S.route_counts = Buffer(backend, rows, 2 * c.moe.experts + 2, DType::kI32);
    S.host_route_counts.resize(static_cast<size_t>(rows) * (2 * c.moe.experts + 2));
  }
  if (c.vision.enabled) {
    const auto& v = c.vision;
    const int64_t np = (v.image_size / v.patch) * (v.image_size / v.patch);
    S.img = Buffer(backend, v.image_size, v.image_size * 3);
    S.patches = Buffer(backend, np, v.patch * v.patch * 3);
    S.ve = Buffer(backend, np, v.d_model);
    S.vh = Buffer(backend, np, v.d_model);
    S.vqkv = Buffer(backend, np, 3 * v.d_model);
    S.vattn = Buffer(backend, np, v.d_model);
    S.vmlp = Buffer(backend, np, v.mlp_hidden);
    S.c1 = Buffer(backend, np, D);
    S.c2 = Buffer(backend, np, D);
  }

  // One spare KV block and one spare SSM state slot beyond what the serving
  // layer hands out: the padding rows of a step-graph bucket write there.
  const int64_t slots = static_cast<int64_t>(c.cache.num_blocks + 1) * c.cache.block_size;
  k_cache_.resize(layers_.size());
  v_cache_.resize(layers_.size());
  ssm_state_.resize(layers_.size());
  ssm_ckpt_.resize(layers_.size());
  for (int32_t l = 0; l < c.n_layers(); ++l) {
    auto i = static_cast<size_t>(l);
    if (c.is_attention(l)) {
      k_cache_[i] = Buffer(backend, slots, a.n_kv_heads * a.head_dim);
      v_cache_[i] = Buffer(backend, slots, a.n_kv_heads * a.head_dim);
      if (!k_cache_[i].tensor().data || !v_cache_[i].tensor().data)
        throw std::runtime_error("out of backend memory for the KV cache");
    } else {
      ssm_state_[i] =
          Buffer(backend, c.cache.max_seqs + 1, static_cast<int64_t>(s.d_inner) * s.d_state);
      if (c.cache.ssm_checkpoint_interval > 0)
        ssm_ckpt_[i] =
            Buffer(backend, c.cache.max_checkpoints, static_cast<int64_t>(s.d_inner) * s.d_state);
    }
  }
}

Model::~Model() = default;

MemoryFootprint Model::footprint() const {
  MemoryFootprint f;
  f.weights = weights_->bytes();
  f.activations = scratch_->bytes() + (ep_ ? ep_->scratch.bytes() : 0);
  const auto& c = config_;
  for (size_t i = 0; i < layers_.size(); ++i) {
    f.kv_cache += k_cache_[i].bytes() + v_cache_[i].bytes();
    f.ssm_state += ssm_state_[i].bytes();
    f.ssm_checkpoints += ssm_ckpt_[i].bytes();
  }
  // Capacities as the serving layer sees them: without the spare block / slot.
  f.kv_cache = f.kv_cache / static_cast<size_t>(c.cache.num_blocks + 1) *
               static_cast<size_t>(c.cache.num_blocks);
  f.ssm_state = f.ssm_state / static_cast<size_t>(c.cache.max_seqs + 1) *
                static_cast<size_t>(c.cache.max_seqs);
  f.kv_bytes_per_block = f.kv_cache / static_cast<size_t>(c.cache.num_blocks);
  f.ssm_bytes_per_slot = f.ssm_state / static_cast<size_t>(c.cache.max_seqs);
  return f;
}

// [SECTION] Backbone
void Model::qk_norm(const LayerTensors& w, const Tensor& q, const Tensor& k) {
  const auto& a = config_.attention;
  const float eps = config_.norm_eps;
  if (a.qk_norm == QkNorm::kFull) {  // OLMoE: over the whole q / k projection
    backend_.rms_norm(q, w.q_norm, eps, q);
    backend_.rms_norm(k, w.k_norm, eps, k);
  } else if (a.qk_norm == QkNorm::kPerHead) {  // Qwen3: each head on its own, one shared weight
    // One call per head on a strided column view: no new op, and the row
    // stride of the fused qkv buffer stays as it is.
    for (int32_t h = 0; h < a.n_heads; ++h)
      backend_.rms_norm(q.cols_view(h * a.head_dim, a.head_dim), w.q_norm, eps,
                        q.cols_view(h * a.head_dim, a.head_dim));
    for (int32_t h = 0; h < a.n_kv_heads; ++h)
      backend_.rms_norm(k.cols_view(h * a.head_dim, a.head_dim), w.k_norm, eps,
                        k.cols_view(h * a.head_dim, a.head_dim));
  }
}

// h = rms_norm(x, norm) (written: scratch) fused with the qkv projection; q/k norm, RoPE and the
// KV store as one op where the norm is over the whole projection (or absent); per-head norms run
// per head.
void Model::attention_layer(int32_t l, const StepBatch& b, const Tensor& x, const Tensor& norm,
                            const Tensor& h) {
  const auto& a = config_.attention;
  const LayerTensors& w = layers_[static_cast<size_t>(l)];
  const int64_t T = b.rows(), qd = a.n_heads * a.head_dim, kd = a.n_kv_heads * a.head_dim;
  Tensor qkv = scratch_->qkv.tensor().rows_view(0, T);
  backend_.rms_norm_linear(x, norm, config_.norm_eps, w.wqkv, qkv, h);
  Tensor q = qkv.cols_view(0, qd), k = qkv.cols_view(qd, kd), v = qkv.cols_view(qd + kd, kd);
  const Tensor& kc = k_cache_[static_cast<size_t>(l)].tensor();
  const Tensor& vc = v_cache_[static_cast<size_t>(l)].tensor();
  if (a.qk_norm == QkNorm::kPerHead) {
    qk_norm(w, q, k);
    backend_.rope(q, b.positions, a.n_heads, a.head_dim, a.rope_theta);
    backend_.rope(k, b.positions, a.n_kv_heads, a.head_dim, a.rope_theta);
    backend_.kv_store(k, v, kc, vc, b.kv_slots);
  } else {
    const bool full = a.qk_norm == QkNorm::kFull;
    backend_.qk_norm_rope_store(q, k, v, full ? w.q_norm : Tensor{}, full ? w.k_norm : Tensor{},
                                config_.norm_eps, b.positions, a.n_heads, a.n_kv_heads, a.head_dim,
                                a.rope_theta, kc, vc, b.kv_slots);
  }
  PagedBatch pb{b.token_seq, b.positions, b.block_table, b.block_table_start,
                config_.cache.block_size};
  AttentionParams p{a.n_heads, a.n_kv_heads, a.head_dim,
                    1.0f / std::sqrt(static_cast<float>(a.head_dim))};
  Tensor attn = scratch_->attn.tensor().rows_view(0, T);
  backend_.paged_attention(q, kc, vc, pb, p, attn);
  backend_.linear(attn, w.wo, scratch_->x.tensor().rows_view(0, T), 1.0f);  // residual
}

void Model::ssm_layer(int32_t l, const StepBatch& b, const Tensor& h) {
  const auto& s = config_.ssm;
  const LayerTensors& w = layers_[static_cast<size_t>(l)];
  const int64_t T = b.rows(), Di = s.d_inner, R = s.dt_rank, N = s.d_state;
  Tensor xz = scratch_->xz.tensor().rows_view(0, T);
  backend_.linear(h, w.w_in, xz);
  Tensor xs = xz.cols_view(0, Di), z = xz.cols_view(Di, Di);
  Tensor proj = scratch_->proj.tensor().rows_view(0, T);
  backend_.linear(xs, w.w_x, proj);
  Tensor dt = scratch_->dt.tensor().rows_view(0, T);
  backend_.linear(proj.cols_view(0, R), w.w_dt, dt);
  Tensor y = scratch_->y.tensor().rows_view(0, T);
  backend_.ssm_scan(xs, dt, w.dt_bias, w.A, proj.cols_view(R, N), proj.cols_view(R + N, N), w.Dskip,
                    b.seq_start, b.state_slot, ssm_state_[static_cast<size_t>(l)].tensor(), y);
  backend_.mul_silu(y, z, y);
  backend_.linear(y, w.w_out, scratch_->x.tensor().rows_view(0, T), 1.0f);  // residual
}

void Model::forward(const StepBatch& b, std::vector<float>& logits, ForwardObserver* obs) {
  const int64_t T = b.rows();
  if (T == 0 || T > config_.scheduler.max_batch_tokens)
    throw std::invalid_argument("forward: batch rows must be in 1..max_batch_tokens");
  Scratch& S = *scratch_;
  const int64_t R = static_cast<int64_t>(b.logit_rows.size());
  int32_t context = 0;
  const int32_t bucket = graph_bucket(b, context);
  if (bucket > 0)
    graph_forward(b, bucket, context, obs);
  else
    backbone(b, obs);
  logits.resize(static_cast<size_t>(R * config_.vocab));
  // Asynchronous routing: the step's counts come back with the logits (one wait).
  Backend::HostCopy copies[2];
  size_t n_copies = 0;
  if (async_routing() && S.route_counts.bytes() > 0)
    copies[n_copies++] = {S.route_counts.tensor(), S.host_route_counts.data()};
  if (R == 0) {
    if (n_copies > 0) {
      backend_.download(std::span<const Backend::HostCopy>(copies, n_copies));
      report_routing(static_cast<int32_t>(T), obs);
    }
    if (ep_) {
      backend_.synchronize();  // no logits download this step: make the EP timings readable
      report_ep(obs);
    }
    return;
  }
  // A padded step's real rows come first, so are its first R logit rows.
  Tensor lo = S.logits.tensor().rows_view(0, R);
  if (n_copies > 0) {
    copies[n_copies++] = {lo, logits.data()};
    backend_.download(std::span<const Backend::HostCopy>(copies, n_copies));
    report_routing(static_cast<int32_t>(T), obs);
  } else {
    backend_.download(lo, logits.data());
  }
  report_ep(obs);  // the download synchronised: the phase timings are readable
}

// Everything of a step up to the logits in S.logits (no host wait with
// asynchronous routing): what a step graph records.
void Model::backbone(const StepBatch& b, ForwardObserver* obs) {
  const int64_t T = b.rows();
  Scratch& S = *scratch_;
  Tensor x = S.x.tensor().rows_view(0, T), h = S.h.tensor().rows_view(0, T);
  backend_.get_rows(weights_->get("embed"), b.tokens, x);
  for (const auto& img : b.images)
    backend_.copy(img.source.rows_view(img.first, img.count), x.rows_view(img.row, img.count));
  const float eps = config_.norm_eps;
  for (int32_t l = 0; l < config_.n_layers(); ++l) {
    const LayerTensors& w = layers_[static_cast<size_t>(l)];
    if (obs) obs->layer_begin(l);
    if (config_.is_attention(l)) {
      attention_layer(l, b, x, w.norm1, h);
    } else {
      backend_.rms_norm(x, w.norm1, eps, h);
      ssm_layer(l, b, h);
    }
    if (config_.is_moe(l)) {
      moe_layer(l, x, w.norm2, h, obs);
      if (obs && !async_routing()) obs->moe_routed(l, logical_counts(l), static_cast<int32_t>(T));
    } else {
      backend_.rms_norm(x, w.norm2, eps, h);
      swiglu_ffn(backend_, w.w_gu, w.w_down, h, S.gu, S.act, x, 1.0f);
    }
    if (obs) obs->layer_end(l);
  }
  const int64_t R = static_cast<int64_t>(b.logit_rows.size());
  if (R == 0) return;
  Tensor xl = S.xl.tensor().rows_view(0, R);
  backend_.get_rows(x, b.logit_rows, xl);
  backend_.rms_norm_linear(xl, weights_->get("norm_f"), eps, weights_->get("head"),
                           S.logits.tensor().rows_view(0, R), S.h.tensor().rows_view(0, R));
}

// [SECTION] Step graphs
namespace {
constexpr int32_t kMaxGraphRows = 64;          // buckets 1, 2, 4, ..., 64
constexpr int32_t kMinGraphContext = 256;      // context buckets 256, 512, ...
constexpr int32_t kMaxGraphContext = 1 << 14;  // beyond: eager (attention's shared memory)
int32_t pow2_at_least(int64_t n, int32_t floor) {
  int32_t p = floor;
  while (p < n) p *= 2;
  return p;
}
}  // namespace

// A step goes through the graph path when it is pure decode (one row per
// sequence, every row wanting its logits, no images) of at most 64 rows and
// its bucket fits the scratch. Returns the bucket (0: eager) and the context
// bucket (a power of two >= every position + 1).
int32_t Model::graph_bucket(const StepBatch& b, int32_t& context) const {
  const int64_t T = b.rows();
  if (!step_graphs() || T > kMaxGraphRows || !b.images.empty()) return 0;
  if (static_cast<int64_t>(b.seq_start.size()) != T + 1 ||
      static_cast<int64_t>(b.logit_rows.size()) != T)
    return 0;
  for (int64_t i = 0; i < T; ++i)
    if (b.logit_rows[static_cast<size_t>(i)] != i) return 0;
  int32_t max_pos = 0;
  for (int32_t p : b.positions) max_pos = std::max(max_pos, p);
  context = pow2_at_least(static_cast<int64_t>(max_pos) + 1, kMinGraphContext);
  const int32_t bucket = pow2_at_least(T, 1);
  if (context > kMaxGraphContext || bucket > config_.scheduler.max_batch_tokens) return 0;
  return bucket;
}

// Pads the step to `bucket` rows, each padding row a one-token sequence at
// position 0 in the spare KV block and the spare SSM state slot (no sequence
// owns them), routed by nobody (valid rows = the real ones). Then, on a
// backend with step graphs, the first step of a (bucket, context) key runs
// eagerly (it sizes the scratch and makes the weight shadows), the second is
// captured and every later one replays; elsewhere the padded step runs
// eagerly (what the CPU tests check). Layer hooks fire only on eager steps,
// not while capturing nor on a replay.
void Model::graph_forward(const StepBatch& b, int32_t bucket, int32_t context,
                          ForwardObserver* obs) {
  StepBatch& p = padded_;
  p.tokens = b.tokens;
  p.positions = b.positions;
  p.token_seq = b.token_seq;
  p.seq_start = b.seq_start;
  p.state_slot = b.state_slot;
  p.block_table = b.block_table;
  p.block_table_start = b.block_table_start;
  p.kv_slots = b.kv_slots;
  p.logit_rows = b.logit_rows;
  p.images.clear();
  const int32_t spare_block = config_.cache.num_blocks, spare_slot = config_.cache.max_seqs;
  int32_t seqs = static_cast<int32_t>(b.state_slot.size());
  for (int32_t r = b.rows(); r < bucket; ++r) {
    p.tokens.push_back(0);
    p.positions.push_back(0);
    p.token_seq.push_back(seqs++);
    p.seq_start.push_back(r + 1);
    p.state_slot.push_back(spare_slot);
    p.block_table.push_back(spare_block);
    p.block_table_start.push_back(static_cast<int32_t>(p.block_table.size()));
    p.kv_slots.push_back(spare_block * config_.cache.block_size);
    p.logit_rows.push_back(r);
  }
  valid_rows_[0] = b.rows();
  const std::span<const int32_t> arrays[] = {p.tokens,
                                             p.positions,
                                             p.token_seq,
                                             p.seq_start,
                                             p.state_slot,
                                             p.block_table,
                                             p.block_table_start,
                                             p.kv_slots,
                                             p.logit_rows,
                                             std::span<const int32_t>(valid_rows_, 1)};
  const uint64_t key = (static_cast<uint64_t>(context) << 8) | static_cast<uint64_t>(bucket);
  padding_ = true;
  backend_.begin_step(key, arrays, context);
  try {
    if (!backend_.supports_step_graphs()) {
      backbone(p, obs);
    } else if (backend_.graph_ready(key)) {
      backend_.graph_launch(key);
    } else if (warm_graph_keys_.count(key) == 0) {
      backbone(p, obs);
      warm_graph_keys_.insert(key);
    } else if (failed_graph_keys_.count(key) != 0) {
      backbone(p, obs);
    } else {
      // A capture that fails (an op the capture cannot hold) leaves this key
      // eager for good, with the first error kept for graph_error(); the step
      // itself runs eagerly. Layer hooks are not fired while capturing.
      bool captured = false;
      try {
        backend_.capture_begin();
        backbone(p, nullptr);
        backend_.capture_end(key);
        captured = true;
      } catch (const std::exception& e) {
        backend_.capture_abort();
        failed_graph_keys_.insert(key);
        if (graph_error_.empty()) graph_error_ = e.what();
      }
      if (captured)
        backend_.graph_launch(key);
      else
        backbone(p, obs);
    }
  } catch (...) {
    padding_ = false;
    backend_.end_step();
    throw;
  }
  padding_ = false;
  backend_.end_step();
  ++graph_steps_;
}

void Model::report_routing(int32_t tokens, ForwardObserver* obs) {
  if (!obs) return;
  const size_t E = static_cast<size_t>(config_.moe.experts), W = 2 * E + 2;
  RouteCounts& c = scratch_->counts;
  for (int32_t l = 0; l < config_.n_layers(); ++l) {
    const int32_t row = moe_row_[static_cast<size_t>(l)];
    if (row < 0) continue;
    const int32_t* r = scratch_->host_route_counts.data() + static_cast<size_t>(row) * W;
    c.routed.assign(r, r + E);
    c.kept.assign(r + E, r + 2 * E);
    c.dropped = static_cast<uint32_t>(r[2 * E]);
    c.rerouted = static_cast<uint32_t>(r[2 * E + 1]);
    obs->moe_routed(l, c, tokens);  // no expert parallelism here: model ids = slots
  }
}

// [SECTION] Expert parallelism
const RouteCounts& Model::logical_counts(int32_t l) {
  // The routing ran over physical slots; observers see the model's own ids.
  const std::vector<int32_t>* m = placement_.relabel(l);
  Scratch& S = *scratch_;
  if (!m) return S.counts;
  RouteCounts& out = S.logical_counts;
  out.routed.assign(m->size(), 0);
  out.kept.assign(m->size(), 0);
  for (size_t slot = 0; slot < m->size(); ++slot) {
    const auto e = static_cast<size_t>((*m)[slot]);
    if (slot < S.counts.routed.size()) out.routed[e] = S.counts.routed[slot];
    if (slot < S.counts.kept.size()) out.kept[e] = S.counts.kept[slot];
  }
  out.dropped = S.counts.dropped;
  out.rerouted = S.counts.rerouted;
  return out;
}

void Model::attach_expert_parallel(Communicator& comm, int64_t (*clock)()) {
  if (comm.size() != placement_.ranks || comm.rank() != placement_.rank)
    throw std::invalid_argument("attach_expert_parallel: communicator is rank " +
                                std::to_string(comm.rank()) + " of " + std::to_string(comm.size()) +
                                ", the model's placement rank " + std::to_string(placement_.rank) +
                                " of " + std::to_string(placement_.ranks));
  ep_ = std::make_unique<ExpertParallel>();
  ep_->comm = &comm;
  ep_->placement = placement_;
  ep_->clock = clock;
  if (config_.ffns.find('M') != std::string::npos)
    ep_->scratch = EpScratch(backend_, config_, placement_, config_.scheduler.max_batch_tokens);
}

// h = rms_norm(x, norm) (scratch), then x += MoE(h) on whichever path the model runs; the
// asynchronous path computes h with its router linear (one op, fused where the backend can).
void Model::moe_layer(int32_t l, const Tensor& x, const Tensor& norm, const Tensor& h,
                      ForwardObserver* obs) {
  const LayerTensors& w = layers_[static_cast<size_t>(l)];
  const Tensor& out = x;
  if (async_routing()) {
    const Tensor counts =
        scratch_->route_counts.tensor().rows_view(moe_row_[static_cast<size_t>(l)], 1);
    const PreNorm pre{x, norm, config_.norm_eps};
    moe_ffn_device(backend_, config_.moe, w.moe, scratch_->moe, h, out, counts,
                   padding_ ? std::span<const int32_t>(valid_rows_, 1) : std::span<const int32_t>(),
                   MoeOut::kAdd, &pre);
    return;
  }
  if (x.rows > 0) backend_.rms_norm(x, norm, config_.norm_eps, h);
  if (!ep_) {
    moe_ffn(backend_, config_.moe, w.moe, scratch_->moe, h, out, scratch_->counts, MoeOut::kAdd);
    return;
  }
  EpLayerStats st;
  st.layer = l;
  const int mark_base = 4 * static_cast<int>(ep_stats_.size());
  moe_ffn_ep(backend_, config_.moe, w.moe, scratch_->moe, *ep_, h, out, scratch_->counts, mark_base,
             st, obs, MoeOut::kAdd);
  ep_stats_.push_back(st);
}

void Model::report_ep(ForwardObserver* obs) {
  if (!ep_) return;
  for (size_t i = 0; i < ep_stats_.size(); ++i) {
    ep_read_timing(*ep_, 4 * static_cast<int>(i), ep_stats_[i]);
    if (obs) obs->ep_layer(ep_stats_[i]);
  }
  ep_stats_.clear();
}

void Model::forward_idle(ForwardObserver* obs) {
  if (!ep_) throw std::logic_error("forward_idle: the model has no expert parallelism");
  Tensor x = scratch_->x.tensor().rows_view(0, 0), h = scratch_->h.tensor().rows_view(0, 0);
  for (int32_t l = 0; l < config_.n_layers(); ++l) {
    if (!config_.is_moe(l)) continue;
    if (obs) obs->layer_begin(l);
    moe_layer(l, x, layers_[static_cast<size_t>(l)].norm2, h, obs);
    if (obs) obs->layer_end(l);
  }
  backend_.synchronize();  // an idle rank has no logits download to wait on
  report_ep(obs);
}

// [SECTION] Vision
void Model::encode_image(const float* pixels) {
  const auto& v = config_.vision;
  if (!v.enabled) throw std::logic_error("encode_image: the model has no vision encoder");
  Scratch& S = *scratch_;
  const Weights& W = *weights_;
  backend_.upload(S.img, pixels);
  backend_.patchify(S.img, v.image_size, v.image_size, 3, v.patch, S.patches);
  backend_.linear(S.patches, W.get("v.patch_proj"), S.ve);
  backend_.add(S.ve, W.get("v.pos"), S.ve);
  const int32_t np = static_cast<int32_t>(S.ve.tensor().rows), dv = v.d_model, hd = dv / v.n_heads;
  const int32_t seqs[2] = {0, np};
  AttentionParams p{v.n_heads, v.n_heads, hd, 1.0f / std::sqrt(static_cast<float>(hd))};
  for (int32_t j = 0; j < v.layers; ++j) {
    auto n = [&](const char* w) { return W.get("v.l" + std::to_string(j) + "." + w); };
    backend_.rms_norm(S.ve, n("norm1"), config_.norm_eps, S.vh);
    backend_.linear(S.vh, n("wqkv"), S.vqkv);
    const Tensor& qkv = S.vqkv.tensor();
    backend_.attention(qkv.cols_view(0, dv), qkv.cols_view(dv, dv), qkv.cols_view(2 * dv, dv), seqs,
                       p,
                       /*causal=*/false, S.vattn);
    backend_.linear(S.vattn, n("wo"), S.ve, 1.0f);
    backend_.rms_norm(S.ve, n("norm2"), config_.norm_eps, S.vh);
    backend_.linear(S.vh, n("w1"), S.vmlp);
    backend_.gelu(S.vmlp, S.vmlp);
    backend_.linear(S.vmlp, n("w2"), S.ve, 1.0f);
  }
  backend_.rms_norm(S.ve, W.get("v.norm"), config_.norm_eps, S.vh);
}

void Model::connect_image(const Tensor& out) {
  Scratch& S = *scratch_;
  const Weights& W = *weights_;
  backend_.linear(S.vh, W.get("c.w1"), S.c1);
  backend_.gelu(S.c1, S.c1);
  backend_.linear(S.c1, W.get("c.w2"), S.c2);
  backend_.mean_pool_rows(S.c2, config_.vision.pool, out);
}

// [SECTION] State slots
void Model::clear_state(int32_t slot) {
  for (auto& s : ssm_state_)
    if (s.tensor().data) backend_.fill(s.tensor().rows_view(slot, 1), 0.0f);
}

void Model::save_checkpoint(int32_t state_slot, int32_t ckpt) {
  for (size_t i = 0; i < ssm_state_.size(); ++i)
    if (ssm_ckpt_[i].tensor().data)
      backend_.copy(ssm_state_[i].tensor().rows_view(state_slot, 1),
                    ssm_ckpt_[i].tensor().rows_view(ckpt, 1));
}

void Model::restore_checkpoint(int32_t ckpt, int32_t state_slot) {
  for (size_t i = 0; i < ssm_state_.size(); ++i)
    if (ssm_ckpt_[i].tensor().data)
      backend_.copy(ssm_ckpt_[i].tensor().rows_view(ckpt, 1),
                    ssm_state_[i].tensor().rows_view(state_slot, 1));
}

}  // namespace inferscope::engine
