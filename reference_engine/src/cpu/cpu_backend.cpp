// The CPU backend: the reference implementation of every op in backend.hpp.
//
// GEMMs go to OpenBLAS (cblas_sgemm, strided views map to lda/ldb/ldc); the
// rest are straightforward loops written for clarity first and speed second,
// because this backend is also the oracle the CUDA backend is checked against.
// Loops over independent rows/heads/sequences run on a small fork-join pool of
// `threads` (thread_pool.hpp; BLAS gets the same count, set once at construction).
//
// [SECTION] Memory   [SECTION] Elementwise   [SECTION] GEMM
// [SECTION] Attention   [SECTION] SSM   [SECTION] MoE   [SECTION] Vision
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "inferscope/engine/backend.hpp"
#include "thread_pool.hpp"

// Present when BLAS is OpenBLAS; weak so that another BLAS still links.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));

namespace inferscope::engine {
namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("cpu backend: ") + what);
}

inline float* row(const Tensor& t, int64_t r) {
  return t.f32() + r * t.stride;
}
inline int32_t* irow(const Tensor& t, int64_t r) {
  return t.i32() + r * t.stride;
}

inline float silu(float g) {
  return g / (1.0f + std::exp(-g));
}

// exp for the SSM scan's inner loop, written so the compiler vectorises it
// (std::exp is a libm call per element): range reduction to 2^n * e^y with
// |y| <= ln2/2 and a degree-6 Taylor polynomial; relative error ~1e-7 for
// |x| < 20, ~1e-5 near the clamp at -87 (where the result is ~1e-38 anyway).
inline float exp_vec(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.44269504088896341f;
  const float kn = t + 12582912.0f;  // 1.5 * 2^23: rounds t to the nearest integer
  const float fn = kn - 12582912.0f;
  int32_t n;
  std::memcpy(&n, &kn, 4);
  n -= 0x4B400000;
  const float y = (t - fn) * 0.693147180559945309f;
  const float p =
      1.0f + y * (1.0f + y * (0.5f + y * (1.0f / 6 +
                                          y * (1.0f / 24 + y * (1.0f / 120 + y * (1.0f / 720))))));
  int32_t bits = (n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// One channel block of the selective scan over one sequence's rows. Cloned for
// AVX2+FMA and baseline x86-64; the loader picks the best at run time.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2,fma", "default")))
#endif
void scan_block(float* __restrict h, const float* __restrict a, int64_t i0, int64_t i1, int64_t N,
                const float* xt, const float* dtt, const float* bias, const float* bt, const float* ct,
                const float* dskip, float* yt) {
  for (int64_t i = i0; i < i1; ++i) {
    const float v = dtt[i] + bias[i];
    const float delta = v > 20.0f ? v : std::log1p(std::exp(v));
    const float dx = delta * xt[i];
    float* __restrict hi = h + i * N;
    const float* __restrict ai = a + i * N;
    for (int64_t n = 0; n < N; ++n) hi[n] = exp_vec(delta * ai[n]) * hi[n] + dx * bt[n];
    float acc = 0.0f;
    for (int64_t n = 0; n < N; ++n) acc += ct[n] * hi[n];
    yt[i] = acc + dskip[i] * xt[i];
  }
}
inline float softplus(float v) {
  return v > 20.0f ? v : std::log1p(std::exp(v));
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const BackendOptions& options)
      : threads_(std::max(1, options.threads)), pool_(threads_) {
    if (openblas_set_num_threads) openblas_set_num_threads(threads_);
  }

  std::string name() const override { return "cpu"; }
  bool host_memory() const override { return true; }

  // [SECTION] Memory
  void* alloc(size_t bytes) override {
    size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p) std::memset(p, 0, rounded);
    return p;
  }
  void free(void* ptr) override { std::free(ptr); }
  void upload_impl(const Tensor& dst, const void* src) override {
    std::memcpy(dst.data, src, dst.bytes());
  }
  void download_impl(const Tensor& src, void* dst) override {
    std::memcpy(dst, src.data, src.bytes());
  }
  void synchronize() override { ++host_syncs_; }

  // [SECTION] Elementwise
  void copy_impl(const Tensor& src, const Tensor& dst) override {
    size_t row_bytes = static_cast<size_t>(src.cols) * dtype_size(src.dtype);
    for (int64_t r = 0; r < src.rows; ++r)
      std::memmove(static_cast<char*>(dst.data) + r * dst.stride * 4,
                   static_cast<const char*>(src.data) + r * src.stride * 4, row_bytes);
  }
  void fill_impl(const Tensor& dst, float value) override {
    for (int64_t r = 0; r < dst.rows; ++r) {
      if (dst.dtype == DType::kF32)
        std::fill_n(row(dst, r), dst.cols, value);
      else
        std::fill_n(irow(dst, r), dst.cols, static_cast<int32_t>(value));
    }
  }
  void get_rows_impl(const Tensor& table, std::span<const int32_t> ids,
                     const Tensor& out) override {
    for (size_t i = 0; i < ids.size(); ++i) {
      std::memcpy(row(out, static_cast<int64_t>(i)), row(table, ids[i]),
                  static_cast<size_t>(table.cols) * 4);
    }
  }
  void add_impl(const Tensor& a, const Tensor& b, const Tensor& out) override {
    for (int64_t r = 0; r < a.rows; ++r) {
      const float* pa = row(a, r);
      const float* pb = row(b, r);
      float* po = row(out, r);
      for (int64_t c = 0; c < a.cols; ++c) po[c] = pa[c] + pb[c];
    }
  }
  void mul_silu_impl(const Tensor& x, const Tensor& gate, const Tensor& out) override {
    pool_.parallel_for(
        x.rows,
        [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const float* px = row(x, r);
            const float* pg = row(gate, r);
            float* po = row(out, r);
            for (int64_t c = 0; c < x.cols; ++c) po[c] = px[c] * silu(pg[c]);
          }
        },
        std::max<int64_t>(1, 16384 / std::max<int64_t>(1, x.cols)));
  }
  void gelu_impl(const Tensor& x, const Tensor& out) override {
    const float k = std::sqrt(2.0f / 3.14159265358979f);
    for (int64_t r = 0; r < x.rows; ++r) {
      const float* px = row(x, r);
      float* po = row(out, r);
      for (int64_t c = 0; c < x.cols; ++c) {
        float v = px[c];
        po[c] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
      }
    }
  }
  void rms_norm_impl(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    const float* w = weight.f32();
    for (int64_t r = 0; r < x.rows; ++r) {
      const float* px = row(x, r);
      float* po = row(out, r);
      double ss = 0.0;
      for (int64_t c = 0; c < x.cols; ++c) ss += static_cast<double>(px[c]) * px[c];
      float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(x.cols)) + eps);
      for (int64_t c = 0; c < x.cols; ++c) po[c] = px[c] * inv * w[c];
    }
  }

  // [SECTION] GEMM
  void linear_impl(const Tensor& x, const Tensor& w, const Tensor& y, float beta) override {
    if (x.rows == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(x.rows),
                static_cast<int>(w.rows), static_cast<int>(x.cols), 1.0f, x.f32(),
                static_cast<int>(x.stride), w.f32(), static_cast<int>(w.stride), beta, y.f32(),
                static_cast<int>(y.stride));
  }
  void grouped_linear_impl(const Tensor& x, const Tensor& w, std::span<const int32_t> offsets,
                           const Tensor& y) override {
    int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
    int64_t n = w.rows / experts;
    // Many small GEMMs (a few rows per expert): OpenBLAS's own threading costs
    // more than it gains there, so experts are spread over the pool instead,
    // each GEMM single-threaded, balanced by rows.
    const int64_t rows = offsets.back();
    const bool spread = threads_ > 1 && rows < 64 * experts && openblas_set_num_threads != nullptr;
    if (spread) openblas_set_num_threads(1);
    std::vector<int64_t> cut(static_cast<size_t>(threads_) + 1, experts);
    cut[0] = 0;
    for (int64_t e = 0, part = 1; e < experts && part < threads_; ++e)
      if (offsets[e + 1] * threads_ >= rows * part) cut[static_cast<size_t>(part++)] = e + 1;
    auto run = [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        int32_t begin = offsets[e], end = offsets[e + 1];
        if (end <= begin) continue;
        linear(x.rows_view(begin, end - begin), w.rows_view(e * n, n),
               y.rows_view(begin, end - begin), 0.0f);
      }
    };
    if (spread) {
      pool_.parallel_for(threads_, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p)
          run(cut[static_cast<size_t>(p)], cut[static_cast<size_t>(p) + 1]);
      });
      openblas_set_num_threads(threads_);
    } else {
      run(0, experts);
    }
  }

  // [SECTION] Attention
  void rope_impl(const Tensor& x, std::span<const int32_t> positions, int32_t n_heads,
                 int32_t head_dim, float theta) override {
    int32_t half = head_dim / 2;
    for (int64_t t = 0; t < x.rows; ++t) {
      float* p = row(x, t);
      for (int32_t i = 0; i < half; ++i) {
        float freq = std::pow(theta, -2.0f * static_cast<float>(i) / static_cast<float>(head_dim));
        float angle = static_cast<float>(positions[t]) * freq;
        float cs = std::cos(angle), sn = std::sin(angle);
        for (int32_t h = 0; h < n_heads; ++h) {
          float* hp = p + h * head_dim;
          float a = hp[i], b = hp[i + half];
          hp[i] = a * cs - b * sn;
          hp[i + half] = a * sn + b * cs;
        }
      }
    }
  }
  void kv_store_impl(const Tensor& k, const Tensor& v, const Tensor& k_cache, const Tensor& v_cache,
                     std::span<const int32_t> slots) override {
    for (size_t t = 0; t < slots.size(); ++t) {
      std::memcpy(row(k_cache, slots[t]), row(k, static_cast<int64_t>(t)),
                  static_cast<size_t>(k.cols) * 4);
      std::memcpy(row(v_cache, slots[t]), row(v, static_cast<int64_t>(t)),
                  static_cast<size_t>(v.cols) * 4);
    }
  }
  void paged_attention_impl(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const PagedBatch& b, const AttentionParams& p,
                            const Tensor& out) override {
    const int64_t T = q.rows;
    const int32_t group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
    pool_.parallel_for(
        T * p.n_heads,
        [&](int64_t i0, int64_t i1) {
          std::vector<float> scores;
          for (int64_t i = i0; i < i1; ++i) {
            {
              const int64_t t = i / p.n_heads;
              const int32_t h = static_cast<int32_t>(i % p.n_heads);
              const int32_t s = b.token_seq[t];
              const int32_t n_keys = b.token_pos[t] + 1;
              const int32_t* table = b.block_table.data() + b.block_table_start[s];
              const int32_t kvh = h / group;
              const float* qh = row(q, t) + h * hd;
              scores.resize(static_cast<size_t>(n_keys));
              float mx = -std::numeric_limits<float>::infinity();
              for (int32_t j = 0; j < n_keys; ++j) {
                int64_t slot =
                    static_cast<int64_t>(table[j / b.block_size]) * b.block_size + j % b.block_size;
                const float* kj = row(k_cache, slot) + kvh * hd;
                float dot = 0.0f;
                for (int32_t d = 0; d < hd; ++d) dot += qh[d] * kj[d];
                scores[j] = dot * p.scale;
                mx = std::max(mx, scores[j]);
              }
              float sum = 0.0f;
              for (int32_t j = 0; j < n_keys; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
              float* oh = row(out, t) + h * hd;
              std::fill_n(oh, hd, 0.0f);
              for (int32_t j = 0; j < n_keys; ++j) {
                int64_t slot =
                    static_cast<int64_t>(table[j / b.block_size]) * b.block_size + j % b.block_size;
                const float* vj = row(v_cache, slot) + kvh * hd;
                float w = scores[j] / sum;
                for (int32_t d = 0; d < hd; ++d) oh[d] += w * vj[d];
              }
            }
          }
        },
        8);
  }
  void attention_impl(const Tensor& q, const Tensor& k, const Tensor& v, SeqStarts seqs,
                      const AttentionParams& p, bool causal, const Tensor& out) override {
    const int32_t group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
    std::vector<float> scores;
    for (size_t s = 0; s + 1 < seqs.size(); ++s) {
      for (int32_t t = seqs[s]; t < seqs[s + 1]; ++t) {
        int32_t last = causal ? t : seqs[s + 1] - 1;
        for (int32_t h = 0; h < p.n_heads; ++h) {
          const float* qh = row(q, t) + h * hd;
          int32_t kvh = h / group;
          scores.assign(static_cast<size_t>(last - seqs[s] + 1), 0.0f);
          float mx = -std::numeric_limits<float>::infinity();
          for (int32_t j = seqs[s]; j <= last; ++j) {
            const float* kj = row(k, j) + kvh * hd;
            float dot = 0.0f;
            for (int32_t d = 0; d < hd; ++d) dot += qh[d] * kj[d];
            scores[j - seqs[s]] = dot * p.scale;
            mx = std::max(mx, dot * p.scale);
          }
          float sum = 0.0f;
          for (float& sc : scores) sum += (sc = std::exp(sc - mx));
          float* oh = row(out, t) + h * hd;
          std::fill_n(oh, hd, 0.0f);
          for (int32_t j = seqs[s]; j <= last; ++j) {
            const float* vj = row(v, j) + kvh * hd;
            float w = scores[j - seqs[s]] / sum;
            for (int32_t d = 0; d < hd; ++d) oh[d] += w * vj[d];
          }
        }
      }
    }
  }

  // [SECTION] SSM
  void ssm_scan_impl(const Tensor& x, const Tensor& dt, const Tensor& dt_bias, const Tensor& A,
                     const Tensor& B, const Tensor& C, const Tensor& Dskip, SeqStarts seqs,
                     std::span<const int32_t> state_slots, const Tensor& states,
                     const Tensor& y) override {
    const int64_t D = x.cols, N = A.cols;
    const float* a = A.f32();
    const float* bias = dt_bias.f32();
    const float* dskip = Dskip.f32();
    const int64_t n_seqs = static_cast<int64_t>(state_slots.size());
    // Parallel over (sequence, channel block): channels are independent.
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(threads_, D / 16));
    pool_.parallel_for(
        n_seqs * blocks,
        [&](int64_t j0, int64_t j1) {
          for (int64_t j = j0; j < j1; ++j) {
            const int64_t s = j / blocks, blk = j % blocks;
            float* h = row(states, state_slots[s]);
            int64_t i0 = D * blk / blocks, i1 = D * (blk + 1) / blocks;
            for (int32_t t = seqs[s]; t < seqs[s + 1]; ++t)
              scan_block(h, a, i0, i1, N, row(x, t), row(dt, t), bias, row(B, t), row(C, t), dskip,
                         row(y, t));
          }
        },
        x.rows * D > 4096 ? 1 : n_seqs * blocks + 1);
  }

  // [SECTION] MoE
  void moe_route_impl(const Tensor& logits, const Tensor& bias, const RouteParams& p,
                      const Tensor& assign_expert, const Tensor& assign_weight,
                      RouteCounts& counts) override {
    const int64_t T = logits.rows, E = logits.cols;
    const int32_t k = p.top_k;
    counts.routed.assign(static_cast<size_t>(E), 0);
    counts.kept.assign(static_cast<size_t>(E), 0);
    counts.dropped = 0;
    counts.rerouted = 0;
    std::vector<float> score(static_cast<size_t>(E)), key(static_cast<size_t>(E));
    std::vector<int32_t> order(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
      const float* l = row(logits, t);
      if (p.gate == GateFn::kSoftmax) {
        float mx = *std::max_element(l, l + E);
        float sum = 0.0f;
        for (int64_t e = 0; e < E; ++e) sum += (score[e] = std::exp(l[e] - mx));
        for (int64_t e = 0; e < E; ++e) score[e] /= sum;
      } else {
        for (int64_t e = 0; e < E; ++e) score[e] = 1.0f / (1.0f + std::exp(-l[e]));
      }
      for (int64_t e = 0; e < E; ++e) key[e] = score[e] + (bias.empty() ? 0.0f : bias.f32()[e]);
      std::iota(order.begin(), order.end(), 0);
      // Full ranking (stable: ties to the lower index); E is small.
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b2) { return key[a] > key[b2]; });
      float denom = 0.0f;
      for (int32_t j = 0; j < k; ++j) denom += score[order[j]];
      float norm = (p.renormalize && denom > 0.0f) ? p.scaling / denom : p.scaling;
      int32_t next = k;  // next ranked expert to try for a reroute
      int32_t* ae = irow(assign_expert, t);
      float* aw = row(assign_weight, t);
      for (int32_t j = 0; j < k; ++j) {
        int32_t e = order[j];
        counts.routed[e]++;
        if (p.capacity <= 0 || counts.kept[e] < p.capacity) {
          counts.kept[e]++;
          ae[j] = e;
          aw[j] = score[e] * norm;
          continue;
        }
        ae[j] = -1;
        aw[j] = 0.0f;
        if (p.overflow == OverflowPolicy::kReroute) {
          while (next < E && counts.kept[order[next]] >= p.capacity) ++next;
          if (next < E) {
            int32_t r = order[next++];
            counts.kept[r]++;
            ae[j] = r;
            aw[j] = score[r] * norm;
            counts.rerouted++;
            continue;
          }
        }
        counts.dropped++;
      }
    }
  }
  void moe_permute_impl(const Tensor& x, const Tensor& assign_expert,
                        std::span<const int32_t> offsets, const Tensor& xp,
                        const Tensor& perm) override {
    const int64_t T = x.rows, k = assign_expert.cols;
    const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
    std::vector<int32_t> cursor(offsets.begin(), offsets.end() - 1);
    for (int64_t t = 0; t < T; ++t) {
      const int32_t* ae = irow(assign_expert, t);
      for (int64_t j = 0; j < k; ++j) {
        int32_t e = ae[j];
        if (e < 0) continue;
        require(e < E && cursor[e] < offsets[e + 1], "moe_permute: counts do not match offsets");
        int32_t dst = cursor[e]++;
        std::memcpy(row(xp, dst), row(x, t), static_cast<size_t>(x.cols) * 4);
        *irow(perm, dst) = static_cast<int32_t>(t * k + j);
      }
    }
  }
  void moe_unpermute_impl(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                          int32_t top_k, int64_t assignments, const Tensor& y) override {
    for (int64_t i = 0; i < assignments; ++i) {
      int32_t a = *irow(perm, i);
      int64_t t = a / top_k, j = a % top_k;
      float w = row(assign_weight, t)[j];
      const float* src = row(yp, i);
      float* dst = row(y, t);
      for (int64_t c = 0; c < y.cols; ++c) dst[c] += w * src[c];
    }
  }

  // [SECTION] Vision
  void patchify_impl(const Tensor& image, int32_t /*height*/, int32_t width, int32_t channels,
                     int32_t patch, const Tensor& out) override {
    int32_t pw = width / patch;
    for (int64_t pi = 0; pi < out.rows; ++pi) {
      int64_t py = pi / pw, px = pi % pw;
      float* o = row(out, pi);
      for (int32_t dy = 0; dy < patch; ++dy) {
        const float* src = row(image, py * patch + dy) + px * patch * channels;
        std::memcpy(o + static_cast<int64_t>(dy) * patch * channels, src,
                    static_cast<size_t>(patch) * channels * 4);
      }
    }
  }
  void mean_pool_rows_impl(const Tensor& x, int32_t group, const Tensor& out) override {
    float inv = 1.0f / static_cast<float>(group);
    for (int64_t g = 0; g < out.rows; ++g) {
      float* o = row(out, g);
      std::fill_n(o, out.cols, 0.0f);
      for (int32_t r = 0; r < group; ++r) {
        const float* src = row(x, g * group + r);
        for (int64_t c = 0; c < x.cols; ++c) o[c] += src[c];
      }
      for (int64_t c = 0; c < x.cols; ++c) o[c] *= inv;
    }
  }

 private:
  int threads_;
  cpu::ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> create_cpu_backend(const BackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace inferscope::engine
