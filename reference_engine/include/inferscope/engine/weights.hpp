// Named model weights in backend memory: seeded initialisation (with the
// routing-skew knobs of InitConfig) and safetensors save/load.
//
// Names and shapes (F32 unless gemm_dtype says otherwise, linear weights [out, in]):
//   embed [V, D], norm_f [1, D], head [V, D]
//   l<i>.norm1, l<i>.norm2 [1, D]
//   attention: l<i>.wqkv [(H + 2 KVH) * hd, D], l<i>.wo [D, H * hd],
//        l<i>.q_norm, l<i>.k_norm [1, hd] (QkNorm::kPerHead) or [1, H * hd] / [1, KVH * hd] (kFull)
//   ssm: l<i>.w_in [2 Din, D], l<i>.w_x [R + 2N, Din], l<i>.w_dt [Din, R],
//        l<i>.dt_bias [1, Din], l<i>.A [Din, N] (negative), l<i>.Dskip [1, Din], l<i>.w_out [D,
//        Din]
//   dense ffn: l<i>.w_gu [2F, D] (gate rows first, then up), l<i>.w_down [D, F]
//   moe ffn: l<i>.router [E, D], l<i>.router_bias [1, E] (if routing_bias),
//        l<i>.experts_gu [E * 2Fe, D], l<i>.experts_down [E * D, Fe],
//        l<i>.shared_gu [2 Fs, D], l<i>.shared_down [D, Fs] (if shared experts)
//   vision: v.patch_proj [dv, P*P*3], v.pos [patches, dv], v.l<j>.{norm1, wqkv, wo, norm2, w1, w2},
//        v.norm [1, dv], c.w1 [D, dv], c.w2 [D, D]
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "inferscope/engine/backend.hpp"
#include "inferscope/engine/config.hpp"
#include "inferscope/engine/expert_parallel.hpp"

namespace inferscope::engine {

// Which workload topic a byte belongs to (the model's router and the workload
// generator agree on it): printable bytes 33..126 other than the lowercase
// letters belong to topic byte % topics; lowercase letters, space and every
// other byte to none (-1): text made of them routes without a preference
// (the balanced workload).
inline int32_t topic_of_byte(int32_t byte, int32_t topics) {
  if (topics <= 0 || byte < 33 || byte > 126 || (byte >= 'a' && byte <= 'z')) return -1;
  return byte % topics;
}
// The routed expert that topic `topic` prefers in MoE layer `layer`.
int32_t topic_hot_expert(const ModelConfig& config, int32_t layer, int32_t topic);

// Round-to-nearest-even fp32 -> bf16 bits (what torch's .to(bfloat16) does).
uint16_t f32_to_bf16_bits(float f);

class Weights {
 public:
  // Allocates every tensor of `config` (zeros). Under expert parallelism
  // (placement.ranks > 1) the routed experts' tensors hold only this rank's
  // shard (rows of experts [first_local, first_local + per_rank)); init and
  // load produce exactly the rows the unsharded model has there.
  // gemm_dtype: storage of the GEMM weights (wqkv, wo, head, the dense and
  // expert projections); kBF16 needs backend.bf16_weights() and serves a bf16
  // checkpoint (it can be filled by upload_rows only: no init, no save).
  Weights(Backend& backend, const ModelConfig& config, ExpertPlacement placement = {},
          DType gemm_dtype = DType::kF32);

  // Seeded initialiser (config.init).
  void init_random();
  // safetensors: a u64 header length, a JSON header with dtype/shape/data_offsets
  // per tensor (and __metadata__.model = the model name), then raw F32 data.
  // A sharded rank cannot save (it lacks the other ranks' experts).
  void save(const std::string& path) const;
  // Every expected tensor must be present with its (unsharded) shape; throws otherwise.
  void load(const std::string& path);

  // Writes rows [first_row, first_row + rows) of weight `name` (of the
  // unsharded model, whole rows) from fp32 host data, converted to the
  // weight's storage type. A checkpoint reader fills a model piece by piece
  // with it (hf_checkpoint.hpp). Throws on an unknown name or a bad range.
  void upload_rows(const std::string& name, int64_t first_row, int64_t rows, const float* host);
  // The same from bf16 bits: a kBF16 weight takes them as they are (a bf16
  // checkpoint reaches the device with no fp32 step), a kF32 weight widens them.
  void upload_rows_bf16(const std::string& name, int64_t first_row, int64_t rows,
                        const uint16_t* host);

  const Tensor& get(const std::string& name) const;
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  size_t bytes() const;
  std::vector<std::string> names() const;

 private:
  void require_f32(const char* what) const;
  void add(const std::string& name, int64_t rows, int64_t cols, bool expert_shard = false,
           DType dtype = DType::kF32);
  // Rows of `name` in the unsharded model, and the first of them this rank holds.
  int64_t full_rows(const std::string& name, const Tensor& t) const;
  int64_t first_row(const std::string& name, const Tensor& t) const;
  // Under a relabelling placement: reorders a whole (unsharded) expert-indexed
  // tensor from logical to physical slot order, before the shard is uploaded.
  void relabel_experts(const std::string& name, std::vector<float>& host) const;
  // The rows of [first, first + rows) of `name` this rank holds, as a view of its
  // storage, and the offset of the first of them in the caller's rows; checks the range.
  struct RowSlice {
    Tensor dst;
    int64_t skip = 0;  // rows of the caller's data before dst's first
    bool empty = true;
  };
  RowSlice row_slice(const std::string& name, int64_t first, int64_t rows) const;
  // Conversion buffers reused across upload_rows calls (one allocation, not one per tensor).
  std::vector<uint16_t> bf16_scratch_;
  std::vector<float> f32_scratch_;
  Backend& backend_;
  ModelConfig config_;
  ExpertPlacement placement_;
  std::map<std::string, bool> sharded_;
  std::map<std::string, Buffer> tensors_;
};

}  // namespace inferscope::engine
