// Weight allocation, seeded initialisation and safetensors I/O.
#include "inferscope/engine/weights.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <stdexcept>

#include "inferscope/engine/safetensors.hpp"

namespace inferscope::engine {
namespace {

std::string L(int32_t l, const char* what) {
  return "l" + std::to_string(l) + "." + what;
}
std::string V(int32_t l, const char* what) {
  return "v.l" + std::to_string(l) + "." + what;
}

// Unit direction in R^D for topic t: shared by the embedding and the routers.
std::vector<float> topic_direction(const ModelConfig& c, int32_t topic) {
  std::mt19937_64 rng(c.init.seed * 7919 + static_cast<uint64_t>(topic) + 17);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(c.d_model));
  double norm = 0;
  for (auto& x : v) {
    x = n(rng);
    norm += static_cast<double>(x) * x;
  }
  for (auto& x : v) x /= static_cast<float>(std::sqrt(norm));
  return v;
}

}  // namespace

uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}

void Weights::relabel_experts(const std::string& name, std::vector<float>& host) const {
  // Only a MoE layer's router (rows), routing bias (columns) and routed expert
  // stacks (blocks of rows) are indexed by expert.
  if (name.empty() || name[0] != 'l') return;
  const size_t dot = name.find('.');
  if (dot == std::string::npos) return;
  const std::string what = name.substr(dot + 1);
  if (what != "router" && what != "router_bias" && what != "experts_gu" && what != "experts_down")
    return;
  const std::vector<int32_t>* m = placement_.relabel(std::stoi(name.substr(1, dot - 1)));
  if (!m) return;
  const size_t E = m->size(), block = host.size() / E;
  std::vector<float> out(host.size());
  for (size_t slot = 0; slot < E; ++slot)
    std::copy_n(host.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>((*m)[slot]) * block),
                block, out.begin() + static_cast<std::ptrdiff_t>(slot * block));
  host.swap(out);
}

int32_t topic_hot_expert(const ModelConfig& c, int32_t layer, int32_t topic) {
  // Spread topics over experts and shift by layer, so each layer has its own hot set.
  int32_t E = c.moe.experts, T = std::max(1, c.init.topics);
  return (topic * E / T + layer * 5 + 1) % E;
}

Weights::Weights(Backend& backend, const ModelConfig& c, ExpertPlacement placement,
                 DType gemm_dtype)
    : backend_(backend), config_(c), placement_(placement) {
  const int32_t D = c.d_model;
  if (gemm_dtype != DType::kF32 && gemm_dtype != DType::kBF16)
    throw std::invalid_argument("weights: gemm_dtype must be f32 or bf16");
  if (gemm_dtype == DType::kBF16 && !backend.bf16_weights())
    throw std::invalid_argument("weights: the " + backend.name() +
                                " backend takes no bf16 weights (load them as f32)");
  const DType g = gemm_dtype;
  if (placement_.ranks > 1)
    placement_ = placement.validated(c.moe.experts);
  else
    placement_.slot_to_logical.clear();  // one rank holds every expert: nothing to relabel
  const int64_t local_experts = placement_.ranks > 1 ? placement_.per_rank() : c.moe.experts;
  add("embed", c.vocab, D);  // f32: get_rows reads it
  add("norm_f", 1, D);
  add("head", c.vocab, D, false, g);
  for (int32_t l = 0; l < c.n_layers(); ++l) {
    add(L(l, "norm1"), 1, D);
    add(L(l, "norm2"), 1, D);
    if (c.is_attention(l)) {
      const auto& a = c.attention;
      add(L(l, "wqkv"), (a.n_heads + 2 * a.n_kv_heads) * a.head_dim, D, false, g);
      add(L(l, "wo"), D, a.n_heads * a.head_dim, false, g);
      if (a.qk_norm == QkNorm::kPerHead) {
        add(L(l, "q_norm"), 1, a.head_dim);
        add(L(l, "k_norm"), 1, a.head_dim);
      } else if (a.qk_norm == QkNorm::kFull) {
        add(L(l, "q_norm"), 1, a.n_heads * a.head_dim);
        add(L(l, "k_norm"), 1, a.n_kv_heads * a.head_dim);
      }
    } else {
      const auto& s = c.ssm;
      add(L(l, "w_in"), 2 * s.d_inner, D);
      add(L(l, "w_x"), s.dt_rank + 2 * s.d_state, s.d_inner);
      add(L(l, "w_dt"), s.d_inner, s.dt_rank);
      add(L(l, "dt_bias"), 1, s.d_inner);
      add(L(l, "A"), s.d_inner, s.d_state);
      add(L(l, "Dskip"), 1, s.d_inner);
      add(L(l, "w_out"), D, s.d_inner);
    }
    if (c.is_moe(l)) {
      const auto& m = c.moe;
      add(L(l, "router"), m.experts, D);
      if (m.routing_bias) add(L(l, "router_bias"), 1, m.experts);
      add(L(l, "experts_gu"), local_experts * 2 * m.expert_hidden, D, true, g);
      add(L(l, "experts_down"), local_experts * D, m.expert_hidden, true, g);
      if (m.shared_experts > 0) {
        add(L(l, "shared_gu"), 2 * m.shared_experts * m.expert_hidden, D, false, g);
        add(L(l, "shared_down"), D, m.shared_experts * m.expert_hidden, false, g);
      }
    } else {
      add(L(l, "w_gu"), 2 * c.dense_hidden, D, false, g);
      add(L(l, "w_down"), D, c.dense_hidden, false, g);
    }
  }
  if (c.vision.enabled) {
    const auto& v = c.vision;
    int32_t patches = (v.image_size / v.patch) * (v.image_size / v.patch);
    add("v.patch_proj", v.d_model, v.patch * v.patch * 3);
    add("v.pos", patches, v.d_model);
    for (int32_t l = 0; l < v.layers; ++l) {
      add(V(l, "norm1"), 1, v.d_model);
      add(V(l, "wqkv"), 3 * v.d_model, v.d_model);
      add(V(l, "wo"), v.d_model, v.d_model);
      add(V(l, "norm2"), 1, v.d_model);
      add(V(l, "w1"), v.mlp_hidden, v.d_model);
      add(V(l, "w2"), v.d_model, v.mlp_hidden);
    }
    add("v.norm", 1, v.d_model);
    add("c.w1", D, v.d_model);
    add("c.w2", D, D);
  }
}

void Weights::add(const std::string& name, int64_t rows, int64_t cols, bool expert_shard,
                  DType dtype) {
  Buffer b(backend_, rows, cols, dtype);
  if (!b.tensor().data) throw std::runtime_error("out of backend memory allocating weight " + name);
  tensors_.emplace(name, std::move(b));
  sharded_[name] = expert_shard && placement_.ranks > 1;
}

int64_t Weights::full_rows(const std::string& name, const Tensor& t) const {
  return sharded_.at(name) ? t.rows * placement_.ranks : t.rows;
}

int64_t Weights::first_row(const std::string& name, const Tensor& t) const {
  return sharded_.at(name) ? t.rows * placement_.rank : 0;
}

const Tensor& Weights::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::out_of_range("no weight named '" + name + "'");
  return it->second.tensor();
}

size_t Weights::bytes() const {
  size_t n = 0;
  for (const auto& [name, b] : tensors_) n += b.bytes();
  return n;
}

std::vector<std::string> Weights::names() const {
  std::vector<std::string> n;
  for (const auto& [name, b] : tensors_) n.push_back(name);
  return n;
}

void Weights::require_f32(const char* what) const {
  for (const auto& [name, b] : tensors_)
    if (b.tensor().dtype != DType::kF32)
      throw std::logic_error(std::string("weights: ") + what + " needs f32 weights; '" + name +
                             "' is bf16 (a bf16 checkpoint is filled by upload_rows)");
}

Weights::RowSlice Weights::row_slice(const std::string& name, int64_t first, int64_t rows) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::out_of_range("no weight named '" + name + "'");
  const Tensor& shard = it->second.tensor();
  const int64_t full = full_rows(name, shard), lo = first_row(name, shard);
  if (first < 0 || rows < 0 || first + rows > full)
    throw std::out_of_range("weight '" + name + "': rows [" + std::to_string(first) + ", " +
                            std::to_string(first + rows) + ") outside its " + std::to_string(full) +
                            " rows");
  if (!placement_.slot_to_logical.empty())
    throw std::logic_error("upload_rows: relabelling placements are not supported");
  // Only the part of the range this rank holds.
  const int64_t a = std::max(first, lo), b = std::min(first + rows, lo + shard.rows);
  RowSlice s;
  if (a >= b) return s;
  s.dst = shard.rows_view(a - lo, b - a);
  s.skip = a - first;
  s.empty = false;
  return s;
}

void Weights::upload_rows(const std::string& name, int64_t first, int64_t rows, const float* host) {
  const RowSlice s = row_slice(name, first, rows);
  if (s.empty) return;
  const float* src = host + s.skip * s.dst.cols;
  if (s.dst.dtype == DType::kF32) {
    backend_.upload(s.dst, src);
    return;
  }
  bf16_scratch_.resize(static_cast<size_t>(s.dst.elements()));
  for (size_t i = 0; i < bf16_scratch_.size(); ++i) bf16_scratch_[i] = f32_to_bf16_bits(src[i]);
  backend_.upload(s.dst, bf16_scratch_.data());
}

void Weights::upload_rows_bf16(const std::string& name, int64_t first, int64_t rows,
                               const uint16_t* host) {
  const RowSlice s = row_slice(name, first, rows);
  if (s.empty) return;
  const uint16_t* src = host + s.skip * s.dst.cols;
  if (s.dst.dtype == DType::kBF16) {
    backend_.upload(s.dst, src);
    return;
  }
  f32_scratch_.resize(static_cast<size_t>(s.dst.elements()));
  for (size_t i = 0; i < f32_scratch_.size(); ++i) f32_scratch_[i] = bf16_bits_to_f32(src[i]);
  backend_.upload(s.dst, f32_scratch_.data());
}

void Weights::init_random() {
  require_f32("init_random");
  const ModelConfig& c = config_;
  std::mt19937_64 rng(c.init.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float depth_scale = 1.0f / std::sqrt(2.0f * static_cast<float>(c.n_layers()));
  std::vector<float> host;
  for (auto& [name, buf] : tensors_) {
    // A sharded tensor is drawn whole (the same random stream as unsharded)
    // and only this rank's rows are uploaded.
    const Tensor& shard = buf.tensor();
    Tensor t = shard;
    t.rows = full_rows(name, shard);
    host.assign(static_cast<size_t>(t.elements()), 0.0f);
    auto ends_with = [&](const char* s) {
      size_t n = std::strlen(s);
      return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
    };
    if (ends_with("norm1") || ends_with("norm2") || ends_with("norm_f") || name == "v.norm" ||
        ends_with("Dskip")) {
      std::fill(host.begin(), host.end(), 1.0f);
    } else if (ends_with(".A")) {
      for (int64_t i = 0; i < t.rows; ++i)  // S4D-real: A[i, n] = -(n + 1)
        for (int64_t n = 0; n < t.cols; ++n)
          host[static_cast<size_t>(i * t.cols + n)] = -static_cast<float>(n + 1);
    } else if (ends_with("dt_bias")) {
      // Step sizes log-uniform in [1e-3, 1e-1]; bias = softplus^-1(dt).
      std::uniform_real_distribution<float> u(std::log(1e-3f), std::log(1e-1f));
      for (auto& x : host) x = std::log(std::expm1(std::exp(u(rng))));
    } else if (ends_with("router_bias")) {
      // Zipf-shaped selection bias over a seeded permutation of the experts.
      std::vector<int32_t> perm(static_cast<size_t>(t.cols));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int64_t r = 0; r < t.cols; ++r)
        host[static_cast<size_t>(perm[static_cast<size_t>(r)])] =
            c.init.zipf_bias / std::pow(static_cast<float>(r + 1), c.init.zipf_s);
    } else {
      float sd = c.init.scale / std::sqrt(static_cast<float>(t.cols));
      if (name == "embed" || name == "v.pos") sd = c.init.scale;
      if (ends_with(".wo") || ends_with("w_out") || ends_with("down") || ends_with("w2"))
        sd *= depth_scale;
      for (auto& x : host) x = normal(rng) * sd;
    }
    // Topic skew: bytes of topic k share a direction c_k in the embedding, and
    // each MoE layer's router row of the topic's hot expert points along c_k, so
    // tokens of that topic prefer that expert.
    if ((name == "embed" || ends_with("router")) && c.init.topic_skew != 0.0f &&
        c.init.topics > 0) {
      for (int32_t k = 0; k < c.init.topics; ++k) {
        auto dir = topic_direction(c, k);
        if (name == "embed") {
          for (int32_t b = 0; b < 256; ++b)
            if (topic_of_byte(b, c.init.topics) == k)
              for (int32_t d = 0; d < c.d_model; ++d)
                host[static_cast<size_t>(b * c.d_model + d)] += 2.0f * dir[static_cast<size_t>(d)];
        } else {
          int32_t layer = std::stoi(name.substr(1, name.find('.') - 1));
          int32_t e = topic_hot_expert(c, layer, k);
          for (int32_t d = 0; d < c.d_model; ++d)
            host[static_cast<size_t>(e * c.d_model + d)] +=
                c.init.topic_skew * dir[static_cast<size_t>(d)];
        }
      }
    }
    relabel_experts(name, host);
    backend_.upload(shard, host.data() + first_row(name, shard) * shard.cols);
  }
}

void Weights::save(const std::string& path) const {
  require_f32("save");
  if (placement_.ranks > 1)
    throw std::runtime_error(
        "cannot save weights on an expert-parallel rank (it holds only its experts); save "
        "them from a run with --ep-size 1");
  nlohmann::json header;
  uint64_t offset = 0;
  for (const auto& [name, buf] : tensors_) {
    const Tensor& t = buf.tensor();
    header[name] = {{"dtype", "F32"},
                    {"shape", {t.rows, t.cols}},
                    {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  header["__metadata__"] = {{"model", config_.name}, {"format", "inferscope"}};
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');  // data starts 8-byte aligned
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
  uint64_t n = h.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  std::vector<float> host;
  for (const auto& [name, buf] : tensors_) {
    host.resize(static_cast<size_t>(buf.tensor().elements()));
    backend_.download(buf.tensor(), host.data());
    out.write(reinterpret_cast<const char*>(host.data()),
              static_cast<std::streamsize>(buf.bytes()));
  }
  if (!out) throw std::runtime_error("write error on '" + path + "'");
}

void Weights::load(const std::string& path) {
  require_f32("load");
  // The file format is read in one place (safetensors.hpp); here only the engine's own layout:
  // every weight present, fp32, with the element count the config gives it.
  SafetensorsSet file;
  file.add_file(path);
  for (auto& [name, buf] : tensors_) {
    const Tensor& shard = buf.tensor();
    Tensor t = shard;
    t.rows = full_rows(name, shard);
    if (!file.has(name)) throw std::runtime_error(path + ": missing tensor '" + name + "'");
    const SafetensorsEntry& e = file.at(name);
    if (e.dtype != "F32") throw std::runtime_error(path + ": tensor '" + name + "' is not F32");
    if (e.elements() != t.elements())
      throw std::runtime_error(
          path + ": tensor '" + name + "' has " + std::to_string(e.elements()) +
          " elements, the model config expects " + std::to_string(t.elements()));
    std::vector<float> host = file.read_f32(name);
    relabel_experts(name, host);
    backend_.upload(shard, host.data() + first_row(name, shard) * shard.cols);
  }
}

}  // namespace inferscope::engine
