// Elementwise kernels, RMSNorm, RoPE, row gathers, casts and the vision
// patchify / pooling. All memory-bound: one pass over the data; reductions
// (RMSNorm) use a block per row so they stay in registers and shared memory.
#include <algorithm>
#include <cstdint>

#include "check.hpp"
#include "kernels.hpp"
#include "pdl.cuh"
#include "warp_reduce.cuh"

namespace inferscope::engine::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t n) {
  int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::clamp<int64_t>(b, 1, 132 * 32));
}

#define GRID_STRIDE(i, n)                                                   \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t)gridDim.x * blockDim.x)

__device__ __forceinline__ float* at(const View& v, int64_t r, int64_t c) {
  return v.p + r * v.stride + c;
}

// The sum of v over the block (a tree: warps, then their partial sums), returned to every
// thread; `partial` is 32 floats of shared memory. Called by every thread.
__device__ __forceinline__ float block_sum(float v, float* partial) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.f;
    t = warp_sum(t);
    if (threadIdx.x == 0) partial[0] = t;
  }
  __syncthreads();
  return partial[0];
}

__global__ void fill_k(View d, float value) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  GRID_STRIDE(i, d.rows * d.cols) * at(d, i / d.cols, i % d.cols) = value;
}
__global__ void fill_i32_k(IView d, int32_t value) {
  GRID_STRIDE(i, d.rows * d.cols) d.p[(i / d.cols) * d.stride + i % d.cols] = value;
}
__global__ void get_rows_k(View table, const int32_t* ids, View out) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  GRID_STRIDE(i, out.rows * out.cols) {
    int64_t r = i / out.cols, c = i % out.cols;
    *at(out, r, c) = *at(table, ids[r], c);
  }
}
__global__ void add_k(View a, View b, View o) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  GRID_STRIDE(i, o.rows * o.cols) {
    int64_t r = i / o.cols, c = i % o.cols;
    *at(o, r, c) = *at(a, r, c) + *at(b, r, c);
  }
}
__global__ void mul_silu_k(View x, View g, View o) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  GRID_STRIDE(i, o.rows * o.cols) {
    int64_t r = i / o.cols, c = i % o.cols;
    float gv = *at(g, r, c);
    *at(o, r, c) = *at(x, r, c) * (gv / (1.f + expf(-gv)));
  }
}
// mul_silu for long batches (a prefill's 65,536 expert rows): a block per row, 16-byte columns,
// no division per element; the same arithmetic as mul_silu_k.
__global__ void mul_silu_v4_k(View x, View g, View o) {
  const int64_t w = o.cols / 4;
  for (int64_t r = blockIdx.x; r < o.rows; r += gridDim.x) {
    const float4* xr = reinterpret_cast<const float4*>(x.p + r * x.stride);
    const float4* gr = reinterpret_cast<const float4*>(g.p + r * g.stride);
    float4* orow = reinterpret_cast<float4*>(o.p + r * o.stride);
    for (int64_t c = threadIdx.x; c < w; c += blockDim.x) {
      const float4 a = xr[c], b = gr[c];
      orow[c] = make_float4(a.x * (b.x / (1.f + expf(-b.x))), a.y * (b.y / (1.f + expf(-b.y))),
                            a.z * (b.z / (1.f + expf(-b.z))), a.w * (b.w / (1.f + expf(-b.w))));
    }
  }
}
__global__ void gelu_k(View x, View o) {
  GRID_STRIDE(i, o.rows * o.cols) {
    int64_t r = i / o.cols, c = i % o.cols;
    float v = *at(x, r, c);
    *at(o, r, c) = 0.5f * v * (1.f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
  }
}

// A block per row; the sum of squares in fp32 over a tree (the CPU uses a
// double accumulator: both are well within the tolerance).
__global__ void rms_norm_k(View x, const float* w, float eps, View o) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  __shared__ float partial[32];
  int64_t r = blockIdx.x;
  // Up to 4 values a thread stay in registers between the sum and the scaling (a decode row of
  // 2048 on 1024 threads: 2), with the weight loaded alongside: one round trip to memory.
  constexpr int kKeep = 4;
  float keep[kKeep], wk[kKeep];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kKeep; ++i) {
    const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
    keep[i] = c < x.cols ? *at(x, r, c) : 0.f;
    wk[i] = c < x.cols ? w[c] : 0.f;
    ss += keep[i] * keep[i];
  }
  for (int64_t c = threadIdx.x + (int64_t)kKeep * blockDim.x; c < x.cols; c += blockDim.x) {
    float v = *at(x, r, c);
    ss += v * v;
  }
  float inv = rsqrtf(block_sum(ss, partial) / x.cols + eps);
#pragma unroll
  for (int i = 0; i < kKeep; ++i) {
    const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
    if (c < x.cols) *at(o, r, c) = keep[i] * inv * wk[i];
  }
  for (int64_t c = threadIdx.x + (int64_t)kKeep * blockDim.x; c < x.cols; c += blockDim.x)
    *at(o, r, c) = *at(x, r, c) * inv * w[c];
}

__global__ void rope_k(View x, const int32_t* pos, int heads, int hd, float theta) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  int half = hd / 2;
  GRID_STRIDE(i, x.rows * heads * half) {
    int p = static_cast<int>(i % half);
    int h = static_cast<int>((i / half) % heads);
    int64_t r = i / ((int64_t)half * heads);
    float* v = at(x, r, (int64_t)h * hd);
    float freq = powf(theta, -2.0f * static_cast<float>(p) / static_cast<float>(hd));
    float ang = static_cast<float>(pos[r]) * freq;
    float cs = cosf(ang), sn = sinf(ang);
    float a = v[p], b = v[p + half];
    v[p] = a * cs - b * sn;
    v[p + half] = a * sn + b * cs;
  }
}

// Backend::qk_norm_rope_store: block (row, 0) does q's row, block (row, 1) k's, in place, and the
// k block then stores k and v in their cache rows. The row is held in shared memory (a rope pair,
// dims i and i + head_dim/2, spans threads); the norm is rms_norm_k's formula and the rotation
// rope_k's, so the fused op computes what the five launches it replaces did (up to the order of
// the sum of squares).
__global__ void qk_norm_rope_store_k(QkRopeStoreArgs a) {
  pdl_wait();  // launched as a programmatic dependent (pdl.cuh)
  pdl_allow_dependents();
  extern __shared__ float row_s[];  // [x.cols]
  __shared__ float partial[32];
  const bool is_q = blockIdx.y == 0;
  const View x = is_q ? a.q : a.k;
  const float* w = is_q ? a.q_norm : a.k_norm;
  const int heads = is_q ? a.n_heads : a.n_kv_heads, hd = a.head_dim;
  const int64_t r = blockIdx.x;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) {
    const float v = *at(x, r, c);
    row_s[c] = v;
    ss += v * v;
  }
  if (w != nullptr) {
    const float inv = rsqrtf(block_sum(ss, partial) / x.cols + a.eps);
    for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) row_s[c] = row_s[c] * inv * w[c];
  }
  __syncthreads();
  const int half = hd / 2;
  for (int i = threadIdx.x; i < heads * half; i += blockDim.x) {  // a thread owns its pair
    const int p = i % half, h = i / half;
    const float freq = powf(a.theta, -2.0f * static_cast<float>(p) / static_cast<float>(hd));
    const float ang = static_cast<float>(a.positions[r]) * freq;
    const float cs = cosf(ang), sn = sinf(ang);
    float* pair = row_s + h * hd + p;
    const float lo = pair[0], hi = pair[half];
    pair[0] = lo * cs - hi * sn;
    pair[half] = lo * sn + hi * cs;
  }
  __syncthreads();
  const int64_t slot = is_q ? -1 : a.slots[r];
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) {
    *at(x, r, c) = row_s[c];  // (columns past the heads: normalised, not rotated)
    if (!is_q) {
      a.k_cache.p[slot * a.k_cache.stride + c] = row_s[c];
      a.v_cache.p[slot * a.v_cache.stride + c] = *at(a.v, r, c);
    }
  }
}

__global__ void to_bf16_k(View x, __nv_bfloat16* out) {
  GRID_STRIDE(i, x.rows * x.cols) out[i] = __float2bfloat16(*at(x, i / x.cols, i % x.cols));
}
// Four values a thread (one 16-byte load, one 8-byte store) and, for contiguous rows, no
// division: a prefill's 65,536 x 2048 expert operand is bandwidth work, not index arithmetic.
__global__ void to_bf16_v4_k(View x, __nv_bfloat16* out) {
  const int64_t w = x.cols / 4;
  const bool flat = x.stride == x.cols;
  GRID_STRIDE(i, x.rows * w) {
    const int64_t r = flat ? 0 : i / w;
    const float4 v =
        *reinterpret_cast<const float4*>(x.p + (flat ? i * 4 : r * x.stride + (i - r * w) * 4));
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    reinterpret_cast<uint2*>(out)[i] = packed;
  }
}
__global__ void f2b_k(const float* x, __nv_bfloat16* out, int64_t n) {
  GRID_STRIDE(i, n) out[i] = __float2bfloat16(x[i]);
}

__global__ void patchify_k(View img, int width, int channels, int patch, View out) {
  int pw = width / patch;
  GRID_STRIDE(i, out.rows * out.cols) {
    int64_t pi = i / out.cols, j = i % out.cols;
    int64_t py = pi / pw, px = pi % pw;
    int64_t dy = j / ((int64_t)patch * channels), rest = j % ((int64_t)patch * channels);
    *at(out, pi, j) = *at(img, py * patch + dy, px * patch * channels + rest);
  }
}

__global__ void mean_pool_k(View x, int group, View out) {
  GRID_STRIDE(i, out.rows * out.cols) {
    int64_t g = i / out.cols, c = i % out.cols;
    float s = 0.f;
    for (int r = 0; r < group; ++r) s += *at(x, g * group + r, c);
    *at(out, g, c) = s * (1.0f / static_cast<float>(group));
  }
}

bool aligned16(const View& v) {
  return reinterpret_cast<uintptr_t>(v.p) % 16 == 0 && v.stride % 4 == 0;
}

}  // namespace

void fill(View d, float value, cudaStream_t s) {
  if (d.rows * d.cols <= 0) return;
  launch_pdl(fill_k, grid_for(d.rows * d.cols), kThreads, 0, s, d, value);
  ISC_LAUNCH();
}
void fill_i32(IView d, int32_t value, cudaStream_t s) {
  if (d.rows * d.cols <= 0) return;
  fill_i32_k<<<grid_for(d.rows * d.cols), kThreads, 0, s>>>(d, value);
  ISC_LAUNCH();
}
void get_rows(View table, const int32_t* ids, View out, cudaStream_t s) {
  if (out.rows * out.cols <= 0) return;
  launch_pdl(get_rows_k, grid_for(out.rows * out.cols), kThreads, 0, s, table, ids, out);
  ISC_LAUNCH();
}
void add(View a, View b, View o, cudaStream_t s) {
  if (o.rows * o.cols <= 0) return;
  launch_pdl(add_k, grid_for(o.rows * o.cols), kThreads, 0, s, a, b, o);
  ISC_LAUNCH();
}
void mul_silu(View x, View g, View o, cudaStream_t s) {
  if (o.rows * o.cols <= 0) return;
  if (o.rows >= kRowKernelMinRows && o.cols % 4 == 0 && aligned16(x) && aligned16(g) &&
      aligned16(o)) {  // prefill: row kernel (decode keeps the dependent launch below)
    mul_silu_v4_k<<<static_cast<int>(std::min<int64_t>(o.rows, 132 * 16)), kThreads, 0, s>>>(x, g,
                                                                                             o);
    ISC_LAUNCH();
    return;
  }
  launch_pdl(mul_silu_k, grid_for(o.rows * o.cols), kThreads, 0, s, x, g, o);
  ISC_LAUNCH();
}
void gelu(View x, View o, cudaStream_t s) {
  if (o.rows * o.cols <= 0) return;
  gelu_k<<<grid_for(o.rows * o.cols), kThreads, 0, s>>>(x, o);
  ISC_LAUNCH();
}
void rms_norm(View x, const float* w, float eps, View o, cudaStream_t s) {
  if (x.rows <= 0) return;
  int threads = 32;
  while (threads < x.cols && threads < 1024) threads <<= 1;
  launch_pdl(rms_norm_k, static_cast<unsigned>(x.rows), threads, 0, s, x, w, eps, o);
  ISC_LAUNCH();
}
void rope(View x, const int32_t* positions, int heads, int head_dim, float theta, cudaStream_t s) {
  int64_t n = x.rows * heads * (head_dim / 2);
  if (n <= 0) return;
  launch_pdl(rope_k, grid_for(n), kThreads, 0, s, x, positions, heads, head_dim, theta);
  ISC_LAUNCH();
}
void qk_norm_rope_store(const QkRopeStoreArgs& a, cudaStream_t s) {
  if (a.q.rows <= 0) return;
  const int64_t cols = std::max(a.q.cols, a.k.cols);
  int threads = 32;
  while (threads < cols / 2 && threads < 1024) threads <<= 1;
  const size_t smem = static_cast<size_t>(cols) * sizeof(float);
  if (smem > 48 * 1024)
    ISC_CUDA(cudaFuncSetAttribute(qk_norm_rope_store_k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)));
  launch_pdl(qk_norm_rope_store_k, dim3(static_cast<unsigned>(a.q.rows), 2), threads, smem, s, a);
  ISC_LAUNCH();
}
void to_bf16(View x, __nv_bfloat16* out, cudaStream_t s) {
  if (x.rows * x.cols <= 0) return;
  if (x.cols % 4 == 0 && aligned16(x) && reinterpret_cast<uintptr_t>(out) % 8 == 0)
    to_bf16_v4_k<<<grid_for(x.rows * x.cols / 4), kThreads, 0, s>>>(x, out);
  else
    to_bf16_k<<<grid_for(x.rows * x.cols), kThreads, 0, s>>>(x, out);
  ISC_LAUNCH();
}
void f32_to_bf16(const float* x, __nv_bfloat16* out, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  f2b_k<<<grid_for(n), kThreads, 0, s>>>(x, out, n);
  ISC_LAUNCH();
}
void patchify(View image, int /*height*/, int width, int channels, int patch, View out,
              cudaStream_t s) {
  if (out.rows * out.cols <= 0) return;
  patchify_k<<<grid_for(out.rows * out.cols), kThreads, 0, s>>>(image, width, channels, patch, out);
  ISC_LAUNCH();
}
void mean_pool_rows(View x, int group, View out, cudaStream_t s) {
  if (out.rows * out.cols <= 0) return;
  mean_pool_k<<<grid_for(out.rows * out.cols), kThreads, 0, s>>>(x, group, out);
  ISC_LAUNCH();
}

}  // namespace inferscope::engine::cuda
