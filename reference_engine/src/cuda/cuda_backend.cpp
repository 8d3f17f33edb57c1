// The CUDA backend: every op of inferscope/engine/backend.hpp on one in-order
// CUDA stream, checked op by op against the CPU backend (tests/gpu/).
//
// Precision: activations, caches and SSM state stay fp32 as the interface
// says. Linear layers read bf16 copies of their weights ("shadows", made on
// first use of an uploaded weight, dropped when that memory is written again)
// and multiply bf16 operands with fp32 accumulation: cuBLAS for dense layers,
// the grouped wmma kernel for experts. INFERSCOPE_CUDA_MATH=fp32 switches both
// to fp32 cuBLAS (exact-oracle mode for debugging).
//
// Host metadata (ids, positions, block tables, offsets) arrives as host spans;
// it is copied into a pinned ring and sent with one async copy per op, so ops
// stay asynchronous. moe_route must return its counts on the host, so it ends
// with one small device->host copy of the on-device histogram and a sync.
//
// [SECTION] Helpers (staging ring, scratch, weight shadows)
// [SECTION] Backend
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "blas.hpp"
#include "check.hpp"
#include "env_switch.hpp"
#include "inferscope/engine/backend.hpp"
#include "kernels.hpp"
#include "stream_access.hpp"

namespace inferscope::engine {
namespace {

namespace k = cuda;

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("cuda backend: ") + what);
}

k::View view(const Tensor& t) {
  return {t.f32(), t.rows, t.cols, t.stride};
}
k::IView iview(const Tensor& t) {
  return {t.i32(), t.rows, t.cols, t.stride};
}

// [SECTION] Helpers
// The backend's stream and its count of host waits (Backend::host_syncs()): the staging ring,
// the scratch buffers and the backend itself wait through one of these, so each wait is counted
// where it is made.
struct StreamWaiter {
  cudaStream_t stream = nullptr;
  uint64_t* waits = nullptr;
  void wait() const {
    ++*waits;
    ISC_CUDA(cudaStreamSynchronize(stream));
  }
};

// Pinned host ring + device ring for per-op metadata. When the ring wraps it
// waits for the stream, so a region is never rewritten while its copy may
// still be pending. A step passes the same arrays to many ops (positions to
// every RoPE, the block tables to every attention layer, the expert offsets to
// permute and both expert GEMMs), so stage1() remembers recent small arrays
// and reuses their device copy when the bytes are unchanged: fewer copies and
// fewer API calls (and CUPTI records) per step.
class StagingRing {
 public:
  explicit StagingRing(StreamWaiter w) : stream_(w.stream), waiter_(w) { grow(4u << 20); }
  ~StagingRing() { release(); }
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  // Copies the spans back to back (16-byte aligned) with one async copy and
  // returns each one's device address.
  std::vector<const int32_t*> stage(std::initializer_list<std::span<const int32_t>> spans) {
    size_t total = 0;
    for (auto sp : spans) total += align(sp.size_bytes());
    if (total == 0) total = 16;
    if (total > cap_) {
      wait();
      release();
      grow(std::max(total, cap_ * 2));
    }
    if (off_ + total > cap_) {
      wait();
      off_ = 0;
      ++gen_;  // every remembered region may now be overwritten
    }
    std::vector<const int32_t*> out;
    size_t at = off_;
    const size_t first = off_;
    for (auto sp : spans) {
      if (!sp.empty()) std::memcpy(host_ + at, sp.data(), sp.size_bytes());
      out.push_back(reinterpret_cast<const int32_t*>(dev_ + at));
      at += align(sp.size_bytes());
    }
    ISC_CUDA(
        cudaMemcpyAsync(dev_ + off_, host_ + off_, at - off_, cudaMemcpyHostToDevice, stream_));
    off_ += total;
    if (spans.size() == 1) remember(*spans.begin(), first);
    return out;
  }
  // An op that stages several arrays by separate calls reserves their total first:
  // otherwise a wrap (or growth) between two calls would rewrite (or free) the
  // region an earlier call of the same op returned before its kernel reads it.
  void reserve(std::initializer_list<std::span<const int32_t>> spans) {
    size_t total = 0;
    for (auto sp : spans) total += std::max<size_t>(align(sp.size_bytes()), 16);  // as stage()
    if (total > cap_) {
      wait();
      release();
      grow(std::max(total, cap_ * 2));
    } else if (off_ + total > cap_) {
      wait();
      off_ = 0;
      ++gen_;
    }
  }
  const int32_t* stage1(std::span<const int32_t> sp) {
    if (!sp.empty() && sp.size_bytes() <= kCacheMaxBytes) {
      for (const Recent& r : recent_)
        if (r.gen == gen_ && r.bytes == sp.size_bytes() &&
            std::memcmp(host_ + r.off, sp.data(), r.bytes) == 0)
          return reinterpret_cast<const int32_t*>(dev_ + r.off);
    }
    return stage({sp})[0];
  }

 private:
  static constexpr size_t kCacheMaxBytes = 16384;
  void wait() { waiter_.wait(); }
  struct Recent {
    size_t off = 0, bytes = 0;
    uint64_t gen = ~uint64_t{0};
  };
  void remember(std::span<const int32_t> sp, size_t off) {
    if (sp.empty() || sp.size_bytes() > kCacheMaxBytes) return;
    recent_[next_] = Recent{off, sp.size_bytes(), gen_};
    next_ = (next_ + 1) % recent_.size();
  }
  static size_t align(size_t n) { return (n + 15) / 16 * 16; }
  void grow(size_t cap) {
    cap_ = cap;
    off_ = 0;
    ++gen_;
    ISC_CUDA(cudaMallocHost(&host_, cap_));
    ISC_CUDA(cudaMalloc(&dev_, cap_));
  }
  void release() {
    if (host_) cudaFreeHost(host_);
    if (dev_) cudaFree(dev_);
    host_ = nullptr;
    dev_ = nullptr;
  }
  cudaStream_t stream_;
  StreamWaiter waiter_;
  char* host_ = nullptr;
  char* dev_ = nullptr;
  size_t cap_ = 0, off_ = 0;
  uint64_t gen_ = 0;
  std::array<Recent, 16> recent_{};
  size_t next_ = 0;
};

// A device buffer that only grows; growing waits for the stream first.
class Scratch {
 public:
  Scratch(StreamWaiter w, uint64_t& epoch) : stream_(w.stream), waiter_(w), epoch_(epoch) {}
  ~Scratch() {
    if (p_) cudaFree(p_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T>
  T* get(size_t count) {
    size_t bytes = std::max<size_t>(count * sizeof(T), 16);
    if (bytes > cap_) {
      cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
      ISC_CUDA(cudaStreamIsCapturing(stream_, &st));
      if (st != cudaStreamCaptureStatusNone)
        throw std::logic_error("cuda backend: scratch would grow inside a graph capture");
      wait();
      ++epoch_;  // graphs that use the old buffer are stale
      if (p_) ISC_CUDA(cudaFree(p_));
      cap_ = std::max(bytes, cap_ * 2);
      ISC_CUDA(cudaMalloc(&p_, cap_));
    }
    return static_cast<T*>(p_);
  }

 private:
  void wait() { waiter_.wait(); }
  cudaStream_t stream_;
  StreamWaiter waiter_;
  uint64_t& epoch_;  // the backend's memory epoch (step graphs)
  void* p_ = nullptr;
  size_t cap_ = 0;
};

bool env_fp32_math() {
  const char* v = std::getenv("INFERSCOPE_CUDA_MATH");
  return v && std::string(v) == "fp32";
}
// INFERSCOPE_CUDA_FUSED=0: the fused ops run their compositions (Backend's defaults, the kernels
// of before the fusion) instead of one kernel each.
bool env_fused_ops() {
  return cuda::env_switch_on("INFERSCOPE_CUDA_FUSED");
}
bool env_expert_streams() {
  const char* v = std::getenv("INFERSCOPE_CUDA_EXPERT_STREAMS");
  return !(v && std::string(v) == "0");
}

// [SECTION] Backend
class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendOptions& o)
      : fp32_math_(env_fp32_math()),
        expert_streams_(env_expert_streams()),
        fused_ops_(env_fused_ops()),
        device_(o.device) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();  // clear the sticky "no device" error
      throw std::runtime_error("cuda backend: no CUDA device available");
    }
    if (o.device < 0 || o.device >= count)
      throw std::runtime_error("cuda backend: device " + std::to_string(o.device) +
                               " out of range (have " + std::to_string(count) + ")");
    ISC_CUDA(cudaSetDevice(o.device));
    ISC_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    blas_ = std::make_unique<k::Blas>(stream_);
    waiter_ = {stream_, &host_syncs_};
    ring_ = std::make_unique<StagingRing>(waiter_);
    for (auto& s : scratch_) s = std::make_unique<Scratch>(waiter_, epoch_);
    ISC_CUDA(cudaMallocHost(&host_counts_, sizeof(int32_t) * (2 * 1024 + 2)));
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
    for (auto& [key, a] : arenas_) release_arena(a);
    for (auto& [p, sh] : shadows_) cudaFree(sh.bf16);
    blas_.reset();
    ring_.reset();
    for (auto& s : scratch_) s.reset();
    cudaFreeHost(host_counts_);
    if (pinned_) cudaFreeHost(pinned_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  bool host_memory() const override { return false; }
  bool bf16_weights() const override { return true; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

  // --- memory ---------------------------------------------------------------
  void* alloc(size_t bytes) override {
    void* p = nullptr;
    size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    if (cudaMalloc(&p, rounded) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    ++host_syncs_;
    if (cudaMemsetAsync(p, 0, rounded, stream_) != cudaSuccess ||
        cudaStreamSynchronize(stream_) != cudaSuccess) {
      cudaFree(p);
      return nullptr;
    }
    alloc_bytes_[p] = rounded;
    return p;
  }
  void free(void* ptr) override {
    if (!ptr) return;
    // Unchecked: free() runs in destructors, often while an exception (a CUDA
    // error seen by an earlier op) unwinds; throwing here would terminate the
    // process and replace that first error with this later sighting of it.
    ++host_syncs_;
    cudaStreamSynchronize(stream_);
    ++epoch_;                    // a graph may have used this memory
    host_offsets_of_ = nullptr;  // the address may come back for other data
    auto it = alloc_bytes_.find(ptr);
    if (it != alloc_bytes_.end()) {
      forget_range(ptr, it->second, /*synced=*/true);  // shadows inside this allocation
      alloc_bytes_.erase(it);
    }
    cudaFree(ptr);
  }
  void upload_impl(const Tensor& dst, const void* src) override {
    host_offsets_of_ = nullptr;
    forget_range(dst.data, dst.bytes());
    ISC_CUDA(cudaMemcpyAsync(dst.data, src, dst.bytes(), cudaMemcpyHostToDevice, stream_));
    ISC_CUDA(cudaStreamSynchronize(stream_));
    note_upload(static_cast<char*>(dst.data), dst.bytes());
  }
  void download_impl(const Tensor& src, void* dst) override {
    ISC_CUDA(cudaMemcpyAsync(dst, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_));
    ISC_CUDA(cudaStreamSynchronize(stream_));
  }
  void synchronize() override { waiter_.wait(); }
  // Small copies go through pinned memory (truly asynchronous), large ones
  // straight to their pageable destination (the driver stages those and
  // returns when done); then one wait covers them all.
  void download_many_impl(std::span<const HostCopy> copies) override {
    size_t pinned = 0;
    for (const HostCopy& c : copies)
      if (c.src.bytes() <= kPinnedCopyMax) pinned += (c.src.bytes() + 15) / 16 * 16;
    if (pinned > pinned_cap_) {
      if (pinned_) cudaFreeHost(pinned_);
      pinned_ = nullptr;
      pinned_cap_ = 0;
      ISC_CUDA(cudaMallocHost(&pinned_, pinned));
      pinned_cap_ = pinned;
    }
    size_t at = 0;
    for (const HostCopy& c : copies) {
      if (c.src.empty() || c.src.bytes() > kPinnedCopyMax) continue;
      ISC_CUDA(cudaMemcpyAsync(pinned_ + at, c.src.data, c.src.bytes(), cudaMemcpyDeviceToHost,
                               stream_));
      at += (c.src.bytes() + 15) / 16 * 16;
    }
    for (const HostCopy& c : copies)
      if (!c.src.empty() && c.src.bytes() > kPinnedCopyMax)
        ISC_CUDA(
            cudaMemcpyAsync(c.dst, c.src.data, c.src.bytes(), cudaMemcpyDeviceToHost, stream_));
    ISC_CUDA(cudaStreamSynchronize(stream_));
    at = 0;
    for (const HostCopy& c : copies) {
      if (c.src.empty() || c.src.bytes() > kPinnedCopyMax) continue;
      std::memcpy(c.dst, pinned_ + at, c.src.bytes());
      at += (c.src.bytes() + 15) / 16 * 16;
    }
  }

  // --- elementwise / data movement -----------------------------------------
  void copy_impl(const Tensor& src, const Tensor& dst) override {
    if (src.rows == 0 || src.cols == 0) return;
    forget_written(dst);
    ISC_CUDA(cudaMemcpy2DAsync(dst.data, dst.stride * 4, src.data, src.stride * 4, src.cols * 4,
                               src.rows, cudaMemcpyDeviceToDevice, stream_));
  }
  void fill_impl(const Tensor& dst, float value) override {
    forget_written(dst);
    if (dst.dtype == DType::kF32)
      k::fill(view(dst), value, stream_);
    else
      k::fill_i32(iview(dst), static_cast<int32_t>(value), stream_);
  }
  void get_rows_impl(const Tensor& table, std::span<const int32_t> ids,
                     const Tensor& out) override {
    if (ids.empty()) return;
    k::get_rows(view(table), meta(ids), view(out), stream_);
  }
  void add_impl(const Tensor& a, const Tensor& b, const Tensor& out) override {
    k::add(view(a), view(b), view(out), stream_);
  }
  void mul_silu_impl(const Tensor& x, const Tensor& gate, const Tensor& out) override {
    k::mul_silu(view(x), view(gate), view(out), stream_);
  }
  void gelu_impl(const Tensor& x, const Tensor& out) override {
    k::gelu(view(x), view(out), stream_);
  }
  void rms_norm_impl(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    k::rms_norm(view(x), weight.f32(), eps, view(out), stream_);
  }

  // --- GEMMs ----------------------------------------------------------------
  void linear_impl(const Tensor& x, const Tensor& w, const Tensor& y, float beta) override {
    if (x.rows == 0 || w.rows == 0) return;
    const int M = static_cast<int>(x.rows), N = static_cast<int>(w.rows),
              K = static_cast<int>(x.cols);
    const __nv_bfloat16* wb = bf16_operand(w);
    if (wb != nullptr && M <= kSmallRows && K % 8 == 0) {  // decode: one launch, no cast
      k::small_linear(view(x), wb, nullptr, 1, view(y), N, K, beta, stream_, M);
      return;
    }
    if (wb == nullptr) {
      const float alpha = 1.f;
      ISC_CUBLAS(cublasSgemm(blas_->handle(), CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w.f32(),
                             static_cast<int>(w.stride), x.f32(), static_cast<int>(x.stride), &beta,
                             y.f32(), static_cast<int>(y.stride)));
      return;
    }
    __nv_bfloat16* xb = scratch_[0]->get<__nv_bfloat16>(static_cast<size_t>(M) * K);
    k::to_bf16(view(x), xb, stream_);
    blas_->linear(xb, wb, y.f32(), y.stride, M, N, K, beta);
  }
  void grouped_linear_impl(const Tensor& x, const Tensor& w, std::span<const int32_t> offsets,
                           const Tensor& y) override {
    const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
    const int64_t n = w.rows / E;
    int max_rows = 0;
    for (int64_t e = 0; e < E; ++e) max_rows = std::max(max_rows, offsets[e + 1] - offsets[e]);
    if (max_rows == 0) return;
    // A stored-bf16 weight is its own operand (per-expert linear() below if K % 8 != 0); only an
    // fp32 weight gets a shadow. shadow() reads its source as fp32, so it must never see a bf16
    // weight: it would read twice the weight's bytes (the OLMoE bf16 illegal address on the H100).
    const __nv_bfloat16* wb = x.cols % 8 == 0 ? bf16_operand(w) : nullptr;
    if (wb == nullptr) {
      for (int64_t e = 0; e < E; ++e) {
        if (offsets[e + 1] == offsets[e]) continue;
        int32_t b = offsets[e], c = offsets[e + 1] - offsets[e];
        linear(x.rows_view(b, c), w.rows_view(e * n, n), y.rows_view(b, c), 0.f);
      }
      return;
    }
    if (max_rows <= kSmallRows) {  // decode: fp32 rows straight into the warp-per-column kernel
      k::small_linear(view(x), wb, meta(offsets), static_cast<int>(E), view(y), static_cast<int>(n),
                      static_cast<int>(x.cols), 0.f, stream_, max_rows);
      return;
    }
    const int64_t rows = offsets.back();
    __nv_bfloat16* xb = scratch_[0]->get<__nv_bfloat16>(static_cast<size_t>(rows * x.cols));
    k::to_bf16(view(x.rows_view(0, rows)), xb, stream_);
    int64_t active = 0;
    for (int64_t e = 0; e < E; ++e) active += offsets[e + 1] > offsets[e];
    if (rows >= kCublasExpertRows * active) {
      // Big groups (a long prefill): one cuBLAS GEMM per expert beats the wmma kernel ~3x
      // (H100: 700+ vs ~180 TFLOP/s at 1024 rows an expert, linear_bw_bench); the host knows
      // the counts here, so no wait is added. Side streams run several experts at once
      // (INFERSCOPE_CUDA_EXPERT_STREAMS=0: one after the other on the main stream).
      blas_->grouped_linear(xb, wb, y.f32(), y.stride, offsets, static_cast<int>(n),
                            static_cast<int>(x.cols), expert_streams_ && !capturing_);
      return;
    }
    k::grouped_gemm(xb, wb, meta(offsets), y.f32(), y.stride, static_cast<int>(E),
                    static_cast<int>(n), static_cast<int>(x.cols), max_rows, stream_);
  }

  // --- attention ------------------------------------------------------------
  void rope_impl(const Tensor& x, std::span<const int32_t> positions, int32_t n_heads,
                 int32_t head_dim, float theta) override {
    if (x.rows == 0) return;
    k::rope(view(x), meta(positions), n_heads, head_dim, theta, stream_);
  }
  void kv_store_impl(const Tensor& kt, const Tensor& v, const Tensor& k_cache,
                     const Tensor& v_cache, std::span<const int32_t> slots) override {
    if (slots.empty()) return;
    k::kv_store(view(kt), view(v), view(k_cache), view(v_cache), meta(slots), stream_);
  }
  void paged_attention_impl(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const PagedBatch& b, const AttentionParams& p,
                            const Tensor& out) override {
    const int64_t T = q.rows;
    if (T == 0) return;
    int max_ctx = 0;
    for (int32_t pos : b.token_pos) max_ctx = std::max(max_ctx, pos + 1);
    // In a step graph the launch must fit every step the graph will replay.
    if (step_) max_ctx = std::max(max_ctx, step_context_);
    // A prefill (rows of a sequence in runs) shares each K / V load across a tile of rows;
    // decode batches and step graphs (decode only) keep the row kernel.
    const bool tiled = !step_ && prefill_tiles(b.token_seq);
    const std::span<const int32_t> tiles =
        tiled ? std::span<const int32_t>(tile_first_) : std::span<const int32_t>();
    if (!step_)
      ring_->reserve({b.token_seq, b.token_pos, b.block_table, b.block_table_start, tiles});
    const int32_t* d[4] = {meta(b.token_seq), meta(b.token_pos), meta(b.block_table),
                           meta(b.block_table_start)};
    k::PagedArgs a;
    a.q = view(q);
    a.out = view(out);
    a.k_cache = view(k_cache);
    a.v_cache = view(v_cache);
    a.token_seq = d[0];
    a.token_pos = d[1];
    a.block_table = d[2];
    a.block_table_start = d[3];
    a.block_size = b.block_size;
    a.heads = p.n_heads;
    a.kv_heads = p.n_kv_heads;
    a.head_dim = p.head_dim;
    a.scale = p.scale;
    a.max_context = max_ctx;
    if (tiled && k::prefill_attention(a, meta(tiles), static_cast<int>(tiles.size()) - 1, stream_))
      return;
    k::paged_attention(a, stream_);
  }
  // Splits the rows into tiles of up to kPrefillTileRows consecutive rows of one sequence
  // (tile_first_: each tile's first row, then the row count). True when the tiles average
  // kMinTileRows rows or more: a prefill, where the tiled kernel pays.
  bool prefill_tiles(std::span<const int32_t> token_seq) {
    const int64_t T = static_cast<int64_t>(token_seq.size());
    tile_first_.clear();
    for (int64_t t = 0; t < T; ++t)
      if (t == 0 || token_seq[t] != token_seq[t - 1] ||
          t - tile_first_.back() == k::kPrefillTileRows)
        tile_first_.push_back(static_cast<int32_t>(t));
    const int64_t tiles = static_cast<int64_t>(tile_first_.size());
    tile_first_.push_back(static_cast<int32_t>(T));
    return tiles > 0 && tiles * kMinTileRows <= T;
  }
  void attention_impl(const Tensor& q, const Tensor& kt, const Tensor& v, SeqStarts seqs,
                      const AttentionParams& p, bool causal, const Tensor& out) override {
    if (q.rows == 0) return;
    require(!capturing_, "attention (vision) cannot be captured in a step graph");
    token_seq_.resize(static_cast<size_t>(q.rows));
    int max_ctx = 0;
    for (size_t s = 0; s + 1 < seqs.size(); ++s) {
      max_ctx = std::max(max_ctx, seqs[s + 1] - seqs[s]);
      for (int32_t t = seqs[s]; t < seqs[s + 1]; ++t) token_seq_[t] = static_cast<int32_t>(s);
    }
    auto d = ring_->stage({token_seq_, seqs});
    k::SeqAttnArgs a;
    a.q = view(q);
    a.k = view(kt);
    a.v = view(v);
    a.out = view(out);
    a.token_seq = d[0];
    a.seq_start = d[1];
    a.heads = p.n_heads;
    a.kv_heads = p.n_kv_heads;
    a.head_dim = p.head_dim;
    a.scale = p.scale;
    a.causal = causal;
    a.max_context = max_ctx;
    k::seq_attention(a, stream_);
  }

  // --- selective state space --------------------------------------------------
  void ssm_scan_impl(const Tensor& x, const Tensor& dt, const Tensor& dt_bias, const Tensor& A,
                     const Tensor& B, const Tensor& C, const Tensor& Dskip, SeqStarts seqs,
                     std::span<const int32_t> state_slots, const Tensor& states,
                     const Tensor& y) override {
    const int64_t D = x.cols, N = A.cols;
    require(N >= 1 && N <= 32 && (N & (N - 1)) == 0,
            "ssm_scan: d_state must be a power of two <= 32");
    if (x.rows == 0 || state_slots.empty()) return;
    int max_len = 0;
    for (size_t s = 0; s + 1 < seqs.size(); ++s) max_len = std::max(max_len, seqs[s + 1] - seqs[s]);
    if (!step_) ring_->reserve({seqs, state_slots});
    const int32_t* d[2] = {meta(seqs), meta(state_slots)};
    k::SsmScanArgs a;
    a.x = view(x);
    a.dt = view(dt);
    a.b = view(B);
    a.c = view(C);
    a.y = view(y);
    a.states = view(states);
    a.dt_bias = dt_bias.empty() ? nullptr : dt_bias.f32();
    a.a = A.f32();
    a.d_skip = Dskip.empty() ? nullptr : Dskip.f32();
    a.seq_start = d[0];
    a.state_slot = d[1];
    a.seqs = static_cast<int>(state_slots.size());
    a.d_inner = static_cast<int>(D);
    a.d_state = static_cast<int>(N);
    a.chunk = kSsmChunk;
    a.max_len = max_len;
    if (max_len > kSsmChunk)
      a.scratch = scratch_[1]->get<float>(static_cast<size_t>(
          k::ssm_scan_scratch_floats(a.seqs, max_len, kSsmChunk, a.d_inner, a.d_state)));
    k::ssm_scan(a, stream_);
  }

  // --- mixture of experts -----------------------------------------------------
  void moe_route_impl(const Tensor& logits, const Tensor& bias, const RouteParams& p,
                      const Tensor& assign_expert, const Tensor& assign_weight,
                      RouteCounts& counts) override {
    const int64_t E = logits.cols;
    const int32_t* dev_counts =
        route(logits, bias, p, assign_expert, assign_weight, nullptr, nullptr, nullptr);
    // The expert-load signal: the on-device histogram, one small copy per call.
    ISC_CUDA(cudaMemcpyAsync(host_counts_, dev_counts, sizeof(int32_t) * (2 * E + 2),
                             cudaMemcpyDeviceToHost, stream_));
    ISC_CUDA(cudaStreamSynchronize(stream_));
    counts.routed.assign(host_counts_, host_counts_ + E);
    counts.kept.assign(host_counts_ + E, host_counts_ + 2 * E);
    counts.dropped = static_cast<uint32_t>(host_counts_[2 * E]);
    counts.rerouted = static_cast<uint32_t>(host_counts_[2 * E + 1]);
  }
  // The router kernels; counts (and offsets, optional) go to the given device
  // arrays, or counts to scratch when null. Returns the device counts.
  // With `permute`, the router may build the permutation in the same launch (*permuted says
  // whether it did; only into the caller's assignment tensors).
  const int32_t* route(const Tensor& logits, const Tensor& bias, const RouteParams& p,
                       const Tensor& assign_expert, const Tensor& assign_weight,
                       int32_t* counts_out, int32_t* offsets_out, const int32_t* valid,
                       const k::PermuteOut* permute = nullptr, bool* permuted = nullptr) {
    const int64_t T = logits.rows, E = logits.cols;
    const int32_t kk = p.top_k;
    require(E <= kMaxExperts, "moe_route: at most 1024 experts (one router block per token)");
    k::RouterParams rp;
    rp.tokens = static_cast<int>(T);
    rp.experts = static_cast<int>(E);
    rp.top_k = kk;
    rp.sigmoid = p.gate == GateFn::kSigmoid;
    rp.renormalize = p.renormalize;
    rp.scaling = p.scaling;
    rp.capacity = p.capacity;
    rp.reroute = p.overflow == OverflowPolicy::kReroute;
    rp.valid = valid;
    rp.capacity_factor = valid ? p.capacity_factor : 0.f;
    const int64_t R = (rp.reroute && rp.capacity > 0) ? E : kk;
    k::RouterBuffers rb;
    const bool direct = assign_expert.contiguous() && assign_weight.contiguous();
    const int64_t chunk_ints = static_cast<int64_t>(k::rank_chunks(T * kk)) * E;
    char* base = scratch_[2]->get<char>(
        static_cast<size_t>(T * R * 8 + T * kk * 8 + (2 * E + 2) * 4 + chunk_ints * 4 + 64));
    rb.rank_expert = reinterpret_cast<int32_t*>(base);
    rb.rank_weight = reinterpret_cast<float*>(base + T * R * 4);
    char* after = base + T * R * 8;
    rb.assign_expert = direct ? assign_expert.i32() : reinterpret_cast<int32_t*>(after);
    rb.assign_weight = direct ? assign_weight.f32() : reinterpret_cast<float*>(after + T * kk * 4);
    rb.counts = counts_out ? counts_out : reinterpret_cast<int32_t*>(after + T * kk * 8);
    rb.chunk_counts = reinterpret_cast<int32_t*>(after + T * kk * 8 + (2 * E + 2) * 4);
    rb.offsets = offsets_out;
    if (permute != nullptr && direct && offsets_out != nullptr) rb.permute = *permute;
    const bool did = k::router(view(logits), bias.empty() ? nullptr : bias.f32(), rp, rb, stream_);
    if (permuted != nullptr) *permuted = did;
    if (!direct) {
      ISC_CUDA(cudaMemcpy2DAsync(assign_expert.data, assign_expert.stride * 4, rb.assign_expert,
                                 kk * 4, kk * 4, T, cudaMemcpyDeviceToDevice, stream_));
      ISC_CUDA(cudaMemcpy2DAsync(assign_weight.data, assign_weight.stride * 4, rb.assign_weight,
                                 kk * 4, kk * 4, T, cudaMemcpyDeviceToDevice, stream_));
    }
    return rb.counts;
  }
  void moe_permute_impl(const Tensor& x, const Tensor& assign_expert,
                        std::span<const int32_t> offsets, const Tensor& xp,
                        const Tensor& perm) override {
    const int64_t E = static_cast<int64_t>(offsets.size()) - 1;
    require(E <= kMaxExperts, "moe_permute: at most 1024 experts");
    if (offsets.back() == 0) return;
    const int32_t* off = meta(offsets);
    const int64_t total = assign_expert.rows * assign_expert.cols;
    const int64_t rows = offsets.back();
    const bool fused = rows * x.cols <= kFusedGatherElems;  // one block gathers small batches
    permute_index(assign_expert, off, E, perm, x, xp, rows, fused);
    // unpermute of this perm can reuse slot_of instead of rebuilding it
    last_perm_ = perm.data;
    last_perm_rows_ = offsets.back();
    last_slot_total_ = total;
    if (!fused)
      k::permute_rows(view(x), iview(perm), static_cast<int>(assign_expert.cols), rows, view(xp),
                      stream_);
  }
  void moe_unpermute_impl(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                          int32_t top_k, int64_t assignments, const Tensor& y) override {
    if (y.rows == 0) return;
    const bool ready = perm.data == last_perm_ && assignments == last_perm_rows_ &&
                       y.rows * top_k == last_slot_total_;
    int32_t* slot_of = scratch_[3]->get<int32_t>(static_cast<size_t>(y.rows * top_k));
    k::unpermute(view(yp), iview(perm), view(assign_weight), top_k, assignments, slot_of, ready,
                 view(y), stream_);
  }

  // permute_index (its fused gather for small batches), or the multi-block ranking of a long
  // list; slot_of goes to scratch_[3] (unpermute reads it there), the chunk counts after it.
  void permute_index(const Tensor& assign_expert, const int32_t* offsets, int64_t E,
                     const Tensor& perm, const Tensor& x, const Tensor& xp, int64_t rows,
                     bool fused) {
    const int64_t total = assign_expert.rows * assign_expert.cols;
    const int chunks = k::rank_chunks(total);
    int32_t* slot_of = scratch_[3]->get<int32_t>(static_cast<size_t>(total + int64_t(chunks) * E));
    if (!fused && chunks > 1)
      k::permute_index_long(iview(assign_expert), offsets, static_cast<int>(E), iview(perm),
                            slot_of, slot_of + total, stream_);
    else
      k::permute_index(iview(assign_expert), offsets, static_cast<int>(E), iview(perm), slot_of,
                       view(x), fused ? view(xp) : k::View{}, rows, stream_);
  }

  // --- mixture of experts, asynchronous routing ------------------------------
  // The same kernels with the counts and offsets left on the device: no copy
  // to the host, no wait; the grids come from the bound T * top_k. (A long
  // prefill's expert GEMMs do wait once a layer: see grouped_linear_device_impl.)
  void moe_route_device_impl(const Tensor& logits, const Tensor& bias, const RouteParams& p,
                             const Tensor& assign_expert, const Tensor& assign_weight,
                             const Tensor& counts, const Tensor& offsets,
                             std::span<const int32_t> valid_rows) override {
    host_offsets_of_ = nullptr;  // these offsets are about to change
    route(logits, bias, p, assign_expert, assign_weight, counts.i32(), offsets.i32(),
          valid_rows.empty() ? nullptr : meta(valid_rows));
  }
  // The decode router's block also permutes (and gathers, where moe_permute would in its index
  // kernel): one launch. Otherwise, or when the router takes its multi-kernel path, as the two
  // ops.
  void moe_route_permute_device_impl(const Tensor& logits, const Tensor& bias, const RouteParams& p,
                                     const Tensor& assign_expert, const Tensor& assign_weight,
                                     const Tensor& counts, const Tensor& offsets,
                                     std::span<const int32_t> valid_rows, const Tensor& x,
                                     const Tensor& xp, const Tensor& perm) override {
    host_offsets_of_ = nullptr;  // these offsets are about to change
    const int64_t bound = assign_expert.rows * assign_expert.cols;
    bool permuted = false;
    if (fused_ops_ && bound > 0 && bound * x.cols <= kFusedGatherElems) {
      k::PermuteOut po;
      po.perm = iview(perm);
      po.slot_of = scratch_[3]->get<int32_t>(static_cast<size_t>(bound));
      po.x = view(x);
      po.xp = view(xp);
      route(logits, bias, p, assign_expert, assign_weight, counts.i32(), offsets.i32(),
            valid_rows.empty() ? nullptr : meta(valid_rows), &po, &permuted);
      if (permuted) {
        note_device_perm(perm, bound);
        return;
      }
    } else {
      route(logits, bias, p, assign_expert, assign_weight, counts.i32(), offsets.i32(),
            valid_rows.empty() ? nullptr : meta(valid_rows));
    }
    moe_permute_device_impl(x, assign_expert, offsets, xp, perm);
  }
  // The host copy of device offsets [1, E + 1] that moe_route_device wrote: downloaded (one
  // wait) on the first call after the route, reused until the next route or a write.
  std::span<const int32_t> host_offsets(const Tensor& offsets) {
    if (host_offsets_of_ != offsets.data) {
      const size_t n = static_cast<size_t>(offsets.cols);
      require(n <= 2 * kMaxExperts + 2, "host_offsets: too many experts");
      ISC_CUDA(cudaMemcpyAsync(host_counts_, offsets.data, sizeof(int32_t) * n,
                               cudaMemcpyDeviceToHost, stream_));
      waiter_.wait();
      host_offsets_.assign(host_counts_, host_counts_ + n);
      host_offsets_of_ = offsets.data;
    }
    return host_offsets_;
  }
  void moe_permute_device_impl(const Tensor& x, const Tensor& assign_expert, const Tensor& offsets,
                               const Tensor& xp, const Tensor& perm) override {
    const int64_t E = offsets.cols - 1;
    require(E <= kMaxExperts, "moe_permute: at most 1024 experts");
    const int64_t bound = assign_expert.rows * assign_expert.cols;
    if (bound == 0) return;
    const bool fused = bound * x.cols <= kFusedGatherElems;
    permute_index(assign_expert, offsets.i32(), E, perm, x, xp, bound, fused);
    note_device_perm(perm, bound);
    if (!fused)
      k::permute_rows(view(x), iview(perm), static_cast<int>(assign_expert.cols), bound, view(xp),
                      stream_, offsets.i32() + E);
  }
  void grouped_linear_device_impl(const Tensor& x, const Tensor& w, const Tensor& offsets,
                                  int64_t max_rows, const Tensor& y) override {
    const int64_t E = offsets.cols - 1, n = w.rows / E;
    if (max_rows == 0 || x.rows == 0) return;
    const __nv_bfloat16* wb = x.cols % 8 == 0 ? bf16_operand(w) : nullptr;
    if (wb == nullptr) {  // fp32 math or K % 8 != 0: per-expert GEMMs need host offsets (a wait)
      Backend::grouped_linear_device_impl(x, w, offsets, max_rows, y);
      return;
    }
    if (max_rows <= kSmallRows) {
      k::small_linear(view(x), wb, offsets.i32(), static_cast<int>(E), view(y), static_cast<int>(n),
                      static_cast<int>(x.cols), 0.f, stream_, static_cast<int>(max_rows));
      return;
    }
    // A long prefill (never captured: step graphs hold decode steps only) whose bound allows
    // kCublasExpertRows an expert: one wait for the offsets buys the per-expert cuBLAS GEMMs
    // of the host path (~4x the wmma kernel's TFLOP/s); both GEMMs of the layer share it.
    if (!capturing_ && x.rows >= kCublasExpertRows * E) {
      grouped_linear_impl(x, w, host_offsets(offsets), y);
      return;
    }
    // Every bound row is cast (rows past offsets[E] too: cheaper than a wait).
    __nv_bfloat16* xb = scratch_[0]->get<__nv_bfloat16>(static_cast<size_t>(x.rows * x.cols));
    k::to_bf16(view(x), xb, stream_);
    k::grouped_gemm(xb, wb, offsets.i32(), y.f32(), y.stride, static_cast<int>(E),
                    static_cast<int>(n), static_cast<int>(x.cols), static_cast<int>(max_rows),
                    stream_);
  }
  // --- fused ops (Backend: "fused ops") -------------------------------------------
  // Decode shapes run one small_linear launch with the op fused in (kernels.hpp Fusion); the
  // rest run the composition (Backend's defaults).
  void rms_norm_linear_impl(const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& w,
                            const Tensor& y, const Tensor& h) override {
    const __nv_bfloat16* wb = bf16_operand(w);
    // Every block sums the squares of its rows: cheap for the 1-2 row passes of few_rows_k,
    // while at 4-8 rows a qkv layer's 384 blocks would each pull 8 rows of x before their FMAs.
    if (!fused_ops_ || wb == nullptr || x.rows > kFusedNormRows || x.cols % 8 != 0 ||
        !norm_weight.contiguous()) {
      Backend::rms_norm_linear_impl(x, norm_weight, eps, w, y, h);
      return;
    }
    k::Fusion f;
    f.mode = k::Fused::kRmsNormIn;
    f.norm_weight = norm_weight.f32();
    f.eps = eps;
    f.h = view(h);
    k::small_linear(view(x), wb, nullptr, 1, view(y), static_cast<int>(w.rows),
                    static_cast<int>(x.cols), 0.f, stream_, static_cast<int>(x.rows), f);
  }
  void gate_up_swiglu_impl(const Tensor& x, const Tensor& w, const Tensor& gu,
                           const Tensor& act) override {
    const __nv_bfloat16* wb = bf16_operand(w);
    if (!fused_ops_ || wb == nullptr || x.rows > kSmallRows || x.cols % 8 != 0) {
      Backend::gate_up_swiglu_impl(x, w, gu, act);
      return;
    }
    k::Fusion f;
    f.mode = k::Fused::kSwigluOut;
    k::small_linear(view(x), wb, nullptr, 1, view(act), static_cast<int>(w.rows / 2),
                    static_cast<int>(x.cols), 0.f, stream_, static_cast<int>(x.rows), f);
  }
  void grouped_gate_up_swiglu_impl(const Tensor& x, const Tensor& w, const Tensor& offsets,
                                   int64_t max_rows, const Tensor& gu, const Tensor& act) override {
    const int64_t E = offsets.cols - 1;
    const __nv_bfloat16* wb = x.cols % 8 == 0 ? bf16_operand(w) : nullptr;
    if (!fused_ops_ || wb == nullptr || max_rows > kSmallRows) {
      Backend::grouped_gate_up_swiglu_impl(x, w, offsets, max_rows, gu, act);
      return;
    }
    if (max_rows == 0 || x.rows == 0) return;
    k::Fusion f;
    f.mode = k::Fused::kSwigluOut;
    k::small_linear(view(x), wb, offsets.i32(), static_cast<int>(E), view(act),
                    static_cast<int>(w.rows / E / 2), static_cast<int>(x.cols), 0.f, stream_,
                    static_cast<int>(max_rows), f);
  }
  void qk_norm_rope_store_impl(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& q_norm, const Tensor& k_norm, float eps,
                               std::span<const int32_t> positions, int32_t n_heads,
                               int32_t n_kv_heads, int32_t head_dim, float theta,
                               const Tensor& k_cache, const Tensor& v_cache,
                               std::span<const int32_t> slots) override {
    if (q.rows == 0) return;
    // One row of q or k in shared memory (beyond 48 KiB the launch opts in to more); the k
    // block copies v's row of k's width.
    if (!fused_ops_ || std::max(q.cols, k.cols) > kFusedRopeCols || v.cols != k.cols) {
      Backend::qk_norm_rope_store_impl(q, k, v, q_norm, k_norm, eps, positions, n_heads, n_kv_heads,
                                       head_dim, theta, k_cache, v_cache, slots);
      return;
    }
    k::QkRopeStoreArgs a;
    a.q = view(q);
    a.k = view(k);
    a.v = view(v);
    a.k_cache = view(k_cache);
    a.v_cache = view(v_cache);
    a.q_norm = q_norm.empty() ? nullptr : q_norm.f32();
    a.k_norm = k_norm.empty() ? nullptr : k_norm.f32();
    a.eps = eps;
    if (!step_) ring_->reserve({positions, slots});  // both staged before the launch reads them
    a.positions = meta(positions);
    a.slots = meta(slots);
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv_heads;
    a.head_dim = head_dim;
    a.theta = theta;
    k::qk_norm_rope_store(a, stream_);
  }

  void moe_unpermute_device_impl(const Tensor& yp, const Tensor& perm, const Tensor& assign_weight,
                                 int32_t top_k, const Tensor& offsets, const Tensor& y) override {
    if (y.rows == 0) return;
    const int64_t bound = y.rows * top_k;
    const bool ready =
        perm.data == last_perm_ && last_perm_rows_ == kDeviceRows && bound == last_slot_total_;
    int32_t* slot_of = scratch_[3]->get<int32_t>(static_cast<size_t>(bound));
    k::unpermute(view(yp), iview(perm), view(assign_weight), top_k, bound, slot_of, ready, view(y),
                 stream_, offsets.i32() + (offsets.cols - 1));
  }

  // --- step graphs ------------------------------------------------------------
  // Each key owns a device arena (and a pinned twin) holding the step's
  // metadata arrays at fixed addresses, and at most one graph. An arena's
  // slots are twice the sizes first seen; a bigger array reallocates it and
  // drops the key's graph. epoch_ moves whenever memory a graph may use
  // moves (scratch growth, a free, a weight shadow replaced): a graph from an
  // older epoch is dropped instead of launched.
  // Not with INFERSCOPE_CUDA_MATH=fp32: its grouped GEMM runs per expert from
  // host offsets (a wait), which a capture cannot hold. The padded step then
  // runs eagerly.
  bool supports_step_graphs() const override { return !fp32_math_; }
  void begin_step(uint64_t key, std::span<const std::span<const int32_t>> arrays,
                  int32_t context_bound) override {
    require(step_ == nullptr, "begin_step: a step is already open");
    StepArena& a = arenas_[key];
    bool fits = a.slot.size() == arrays.size();
    for (size_t i = 0; fits && i < arrays.size(); ++i) fits = arrays[i].size() <= a.slot[i];
    if (!fits) {
      if (a.dev) {
        drop_graph(key);
        synchronize();  // the arena may still be read by queued work
        release_arena(a);
      }
      size_t total = 0;
      for (auto sp : arrays) {
        a.slot.push_back(std::max<size_t>(64, (2 * sp.size() + 3) / 4 * 4));  // 16-byte slots
        a.at.push_back(total);
        total += a.slot.back();
      }
      a.ints = total;
      ISC_CUDA(cudaMalloc(&a.dev, total * sizeof(int32_t)));
      ISC_CUDA(cudaMallocHost(&a.host, total * sizeof(int32_t)));
      ISC_CUDA(cudaEventCreateWithFlags(&a.copied, cudaEventDisableTiming));
    } else {
      const cudaError_t q = cudaEventQuery(a.copied);
      if (q == cudaErrorNotReady) {  // the last copy from a.host is still pending: rare
        cudaGetLastError();          // "not ready" is no error
        ++host_syncs_;
        ISC_CUDA(cudaEventSynchronize(a.copied));
      } else {
        ISC_CUDA(q);
      }
    }
    size_t used = 0;
    step_spans_.clear();
    step_dev_.clear();
    for (size_t i = 0; i < arrays.size(); ++i) {
      if (!arrays[i].empty())
        std::memcpy(a.host + a.at[i], arrays[i].data(), arrays[i].size_bytes());
      step_spans_.push_back(arrays[i]);
      step_dev_.push_back(a.dev + a.at[i]);
      if (!arrays[i].empty()) used = a.at[i] + arrays[i].size();
    }
    if (used > 0)
      ISC_CUDA(
          cudaMemcpyAsync(a.dev, a.host, used * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    ISC_CUDA(cudaEventRecord(a.copied, stream_));
    step_ = &a;
    step_context_ = context_bound;
  }
  void end_step() override {
    step_ = nullptr;
    step_context_ = 0;
    step_spans_.clear();
    step_dev_.clear();
  }
  void capture_begin() override {
    require(step_ != nullptr && !capturing_, "capture_begin: needs an open step and no capture");
    ISC_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    capturing_ = true;
    capture_epoch_ = epoch_;
  }
  void capture_end(uint64_t key) override {
    require(capturing_, "capture_end: no capture");
    capturing_ = false;
    cudaGraph_t g = nullptr;
    ISC_CUDA(cudaStreamEndCapture(stream_, &g));
    if (epoch_ != capture_epoch_) {
      cudaGraphDestroy(g);
      throw std::logic_error("cuda backend: memory moved during a graph capture");
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    ISC_CUDA(e);
    drop_graph(key);
    graphs_[key] = Graph{exec, epoch_};
    ++graphs_captured_;
  }
  void capture_abort() override {
    if (!capturing_) return;
    capturing_ = false;
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && g) cudaGraphDestroy(g);
    cudaGetLastError();
  }
  bool graph_ready(uint64_t key) override {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) return false;
    if (it->second.epoch == epoch_) return true;
    drop_graph(key);
    return false;
  }
  void graph_launch(uint64_t key) override {
    require(graph_ready(key), "graph_launch: no valid graph for this key");
    ISC_CUDA(cudaGraphLaunch(graphs_[key].exec, stream_));
    ++graph_launches_;
  }

  // --- vision front end ------------------------------------------------------
  void patchify_impl(const Tensor& image, int32_t height, int32_t width, int32_t channels,
                     int32_t patch, const Tensor& out) override {
    k::patchify(view(image), height, width, channels, patch, view(out), stream_);
  }
  void mean_pool_rows_impl(const Tensor& x, int32_t group, const Tensor& out) override {
    k::mean_pool_rows(view(x), group, view(out), stream_);
  }

 private:
  static constexpr int kSsmChunk = 64;
  // The router and the permute index kernel keep per-expert state in one block.
  static constexpr int64_t kMaxExperts = 1024;
  // Up to this many rows (per expert for grouped) a linear runs in small_linear.
  static constexpr int kSmallRows = 64;
  // Up to this many rows rms_norm_linear runs as one launch (few_rows_k, kernels.hpp Fusion).
  static constexpr int64_t kFusedNormRows = 2;
  // Up to this width (floats) qk_norm_rope_store runs as one launch (a row in shared memory).
  static constexpr int64_t kFusedRopeCols = 16384;
  // From this many rows per expert with rows on average (host offsets), grouped_linear runs
  // one cuBLAS GEMM per expert instead of grouped_gemm.
  static constexpr int64_t kCublasExpertRows = 256;
  // Up to this many gathered floats moe_permute gathers inside its index kernel.
  static constexpr int64_t kFusedGatherElems = 1 << 16;
  // last_perm_rows_ of a perm built from device offsets (its row count is on the device).
  static constexpr int64_t kDeviceRows = -2;
  // Prefill attention tiles must average this many rows, else the row kernel runs.
  static constexpr int64_t kMinTileRows = 4;
  // Copies up to this size go through pinned memory in download_many_impl.
  static constexpr size_t kPinnedCopyMax = 1u << 20;

  struct StepArena {
    int32_t* dev = nullptr;
    int32_t* host = nullptr;  // pinned
    cudaEvent_t copied = nullptr;
    std::vector<size_t> slot, at;  // per array: capacity and offset (int32s)
    size_t ints = 0;
  };
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    uint64_t epoch = 0;
  };
  void release_arena(StepArena& a) {
    if (a.dev) cudaFree(a.dev);
    if (a.host) cudaFreeHost(a.host);
    if (a.copied) cudaEventDestroy(a.copied);
    a = StepArena{};
  }
  void drop_graph(uint64_t key) {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) return;
    cudaGraphExecDestroy(it->second.exec);
    graphs_.erase(it);
  }
  // Device copy of host metadata: the open step's copy of a registered array,
  // else staged through the ring (never while capturing: a replay would read
  // whatever the ring holds then).
  const int32_t* meta(std::span<const int32_t> sp) {
    if (step_ != nullptr)
      for (size_t i = 0; i < step_spans_.size(); ++i)
        if (sp.data() == step_spans_[i].data() && sp.size() == step_spans_[i].size())
          return step_dev_[i];
    require(!capturing_,
            "an op inside a graph capture was handed host metadata begin_step did not register");
    return ring_->stage1(sp);
  }

  // perm was just built from device offsets for `bound` assignments, with scratch_[3] holding
  // each assignment's row (slot_of): moe_unpermute of the same perm reuses it.
  void note_device_perm(const Tensor& perm, int64_t bound) {
    last_perm_ = perm.data;
    last_perm_rows_ = kDeviceRows;
    last_slot_total_ = bound;
  }

  struct Shadow {
    __nv_bfloat16* bf16 = nullptr;
    int64_t rows = 0, cols = 0;
    size_t bytes = 0;  // of the fp32 source
  };

  // The bf16 operand of a linear layer's weight, or nullptr (then fp32 cuBLAS): a kBF16
  // weight is its own (a bf16 checkpoint has no fp32 copy to fall back on, so
  // INFERSCOPE_CUDA_MATH=fp32 does not apply to it), an fp32 one its shadow.
  const __nv_bfloat16* bf16_operand(const Tensor& w) {
    if (w.dtype == DType::kBF16) return static_cast<const __nv_bfloat16*>(w.data);
    return fp32_math_ ? nullptr : shadow(w);
  }

  // bf16 copy of an uploaded, contiguous weight; nullptr when w is not one (an
  // activation or a strided view), so the caller falls back to fp32.
  const __nv_bfloat16* shadow(const Tensor& w) {
    if (!w.contiguous() || w.dtype != DType::kF32) return nullptr;
    auto it = shadows_.find(w.data);
    if (it != shadows_.end() && it->second.rows == w.rows && it->second.cols == w.cols)
      return it->second.bf16;
    if (!inside_upload(w.data, w.bytes())) return nullptr;
    if (it != shadows_.end()) {
      ++epoch_;
      waiter_.wait();
      cudaFree(it->second.bf16);
      shadows_.erase(it);
    }
    Shadow s;
    s.rows = w.rows;
    s.cols = w.cols;
    s.bytes = w.bytes();
    ISC_CUDA(cudaMalloc(&s.bf16, static_cast<size_t>(w.elements()) * sizeof(__nv_bfloat16)));
    k::f32_to_bf16(w.f32(), s.bf16, w.elements(), stream_);
    shadows_[w.data] = s;
    return s.bf16;
  }
  // Records an upload, merged with uploads it continues or that continue it
  // inside the same allocation: a weight written piece by piece (a Hugging
  // Face checkpoint's q/k/v into one wqkv, its experts one by one) counts as
  // uploaded whole, so shadow() makes its bf16 copy as for one upload.
  void note_upload(char* p, size_t bytes) {
    auto it = uploaded_.insert_or_assign(p, bytes).first;
    auto alloc = alloc_bytes_.upper_bound(p);
    if (alloc == alloc_bytes_.begin()) return;
    --alloc;
    char* const lo = static_cast<char*>(alloc->first);
    char* const hi = lo + alloc->second;
    if (p < lo || p >= hi) return;  // not inside a known allocation: keep it alone
    if (it != uploaded_.begin()) {
      auto prev = std::prev(it);
      if (prev->first >= lo && prev->first + prev->second == it->first) {
        prev->second += it->second;
        uploaded_.erase(it);
        it = prev;
      }
    }
    auto next = std::next(it);
    if (next != uploaded_.end() && next->first < hi && it->first + it->second == next->first) {
      it->second += next->second;
      uploaded_.erase(next);
    }
  }
  bool inside_upload(const void* p, size_t bytes) const {
    const char* c = static_cast<const char*>(p);
    auto it = uploaded_.upper_bound(const_cast<char*>(c));
    if (it == uploaded_.begin()) return false;
    --it;
    return c >= it->first && c + bytes <= it->first + it->second;
  }
  // Memory about to be written: its shadows and upload marks no longer hold.
  // synced: the caller has already waited for the stream (and must not throw).
  void forget_range(const void* p, size_t bytes, bool synced = false) {
    const char* lo = static_cast<const char*>(p);
    const char* hi = lo + bytes;
    for (auto it = shadows_.begin(); it != shadows_.end();) {
      const char* s = static_cast<const char*>(it->first);
      if (s < hi && s + it->second.bytes > lo) {
        if (!synced) waiter_.wait();
        ++epoch_;
        synced = true;
        cudaFree(it->second.bf16);
        it = shadows_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = uploaded_.begin(); it != uploaded_.end();) {
      if (it->first < hi && it->first + it->second > lo)
        it = uploaded_.erase(it);
      else
        ++it;
    }
  }
  void forget_written(const Tensor& t) {
    last_perm_ = nullptr;        // a perm written by copy/fill is not the one permute_index saw
    host_offsets_of_ = nullptr;  // nor are offsets written so the ones host_offsets() read
    if (shadows_.empty() && uploaded_.empty()) return;
    if (t.rows == 0 || t.cols == 0) return;
    forget_range(t.data, static_cast<size_t>((t.rows - 1) * t.stride + t.cols) * 4);
  }

  bool fp32_math_;
  bool expert_streams_;  // per-expert prefill GEMMs on side streams (Blas::grouped_linear)
  bool fused_ops_;       // env_fused_ops(): the fused ops as one kernel each
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  StreamWaiter waiter_;  // stream_ and host_syncs_, once the stream exists
  std::unique_ptr<k::Blas> blas_;
  std::unique_ptr<StagingRing> ring_;
  std::unique_ptr<Scratch> scratch_[4];
  int32_t* host_counts_ = nullptr;
  char* pinned_ = nullptr;  // download_many_impl's bounce buffer (grows)
  size_t pinned_cap_ = 0;
  std::map<void*, Shadow> shadows_;
  std::map<char*, size_t> uploaded_;
  std::map<void*, size_t> alloc_bytes_;
  std::vector<int32_t> token_seq_;
  std::vector<int32_t> tile_first_;  // prefill attention tiles (prefill_tiles)
  std::map<uint64_t, StepArena> arenas_;
  std::map<uint64_t, Graph> graphs_;
  StepArena* step_ = nullptr;  // the open step (begin_step .. end_step)
  std::vector<std::span<const int32_t>> step_spans_;
  std::vector<const int32_t*> step_dev_;
  int32_t step_context_ = 0;
  bool capturing_ = false;
  uint64_t epoch_ = 0, capture_epoch_ = 0;
  const void* last_perm_ = nullptr;
  int64_t last_perm_rows_ = -1, last_slot_total_ = -1;
  const void* host_offsets_of_ = nullptr;  // the device offsets host_offsets_ copies
  std::vector<int32_t> host_offsets_;
};

}  // namespace

std::unique_ptr<Backend> create_cuda_backend(const BackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

namespace cuda {
namespace {
CudaBackend& as_cuda(Backend& b) {
  auto* c = dynamic_cast<CudaBackend*>(&b);
  if (!c) throw std::invalid_argument("expected the cuda backend, got '" + b.name() + "'");
  return *c;
}
}  // namespace
void* backend_stream(Backend& b) {
  return as_cuda(b).stream();
}
int backend_device(Backend& b) {
  return as_cuda(b).device();
}
}  // namespace cuda

}  // namespace inferscope::engine
