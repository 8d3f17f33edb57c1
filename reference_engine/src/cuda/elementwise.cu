// Elementwise kernels, norms, RoPE, embedding, argmax and the vision patchify.
// All memory-bound: one pass over the data, a warp or block per row so the
// reductions stay in registers and shared memory.
#include <cfloat>

#include "check.hpp"
#include "kernels.hpp"

namespace inferscope::engine::cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<int>(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024).
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? partial[lane] : 0.f;
  return warp_sum(v);
}

__global__ void cast_f2b(const float* x, __nv_bfloat16* y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}
__global__ void cast_b2f(const __nv_bfloat16* x, float* y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}

__global__ void rmsnorm_k(const float* x, const float* w, float* of, __nv_bfloat16* ob, int dim,
                          float eps) {
  const float* row = x + (int64_t)blockIdx.x * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += row[i] * row[i];
  float inv = rsqrtf(block_sum(ss) / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = row[i] * inv * (w ? w[i] : 1.f);
    if (of) of[(int64_t)blockIdx.x * dim + i] = v;
    if (ob) ob[(int64_t)blockIdx.x * dim + i] = __float2bfloat16(v);
  }
}

__global__ void layernorm_k(const float* x, const float* w, const float* b, float* of,
                            __nv_bfloat16* ob, int dim, float eps) {
  const float* row = x + (int64_t)blockIdx.x * dim;
  float s = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) s += row[i];
  float mean = block_sum(s) / dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += (row[i] - mean) * (row[i] - mean);
  float inv = rsqrtf(block_sum(ss) / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = (row[i] - mean) * inv * (w ? w[i] : 1.f) + (b ? b[i] : 0.f);
    if (of) of[(int64_t)blockIdx.x * dim + i] = v;
    if (ob) ob[(int64_t)blockIdx.x * dim + i] = __float2bfloat16(v);
  }
}

// One thread per rotated pair.
__global__ void rope_k(float* x, const int32_t* pos, int rows, int heads, int head_dim,
                       int row_stride, int rot_dim, float theta, bool interleaved) {
  int half = rot_dim / 2;
  int64_t total = (int64_t)rows * heads * half;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int p = static_cast<int>(i % half);
    int h = static_cast<int>((i / half) % heads);
    int r = static_cast<int>(i / ((int64_t)half * heads));
    float* v = x + (int64_t)r * row_stride + (int64_t)h * head_dim;
    // Same expression as the CPU backend: theta^(-2p/rot_dim), angle in fp32.
    float freq = powf(theta, -2.0f * p / rot_dim);
    float ang = pos[r] * freq;
    float sn, cs;
    sincosf(ang, &sn, &cs);
    int i0 = interleaved ? 2 * p : p;
    int i1 = interleaved ? 2 * p + 1 : p + half;
    float a = v[i0], b = v[i1];
    v[i0] = a * cs - b * sn;
    v[i1] = a * sn + b * cs;
  }
}

__global__ void swiglu_k(const float* gu, float* of, __nv_bfloat16* ob, int rows, int ffn) {
  int64_t total = (int64_t)rows * ffn;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / ffn;
    int f = static_cast<int>(i % ffn);
    float g = gu[r * 2 * ffn + f], u = gu[r * 2 * ffn + ffn + f];
    float v = g / (1.f + __expf(-g)) * u;
    if (of) of[i] = v;
    if (ob) ob[i] = __float2bfloat16(v);
  }
}

__global__ void gelu_k(float* x, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    float v = x[i];
    x[i] = 0.5f * v * (1.f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
  }
}

__global__ void axpy_k(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] += a * x[i];
}

__global__ void add_bias_k(float* y, const float* b, int rows, int dim) {
  int64_t total = (int64_t)rows * dim;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] += b[i % dim];
}

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void embedding_k(const T* table, const int32_t* ids, float* out, int dim) {
  const T* src = table + (int64_t)ids[blockIdx.x] * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    out[(int64_t)blockIdx.x * dim + i] = to_f(src[i]);
}

// Ties go to the lowest index, as std::max_element does on the CPU.
__global__ void argmax_k(const float* logits, int32_t* out, int vocab) {
  const float* row = logits + (int64_t)blockIdx.x * vocab;
  float best = -FLT_MAX;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    if (row[i] > best) best = row[i], idx = i;
  for (int o = 16; o > 0; o >>= 1) {
    float ob = __shfl_xor_sync(0xffffffffu, best, o);
    int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    if (ob > best || (ob == best && oi < idx)) best = ob, idx = oi;
  }
  __shared__ float sb[32];
  __shared__ int si[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sb[warp] = best, si[warp] = idx;
  __syncthreads();
  if (warp == 0) {
    int warps = blockDim.x >> 5;
    best = lane < warps ? sb[lane] : -FLT_MAX;
    idx = lane < warps ? si[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) {
      float ob = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, idx, o);
      if (ob > best || (ob == best && oi < idx)) best = ob, idx = oi;
    }
    if (lane == 0) out[blockIdx.x] = idx == 0x7fffffff ? 0 : idx;
  }
}

__global__ void patchify_k(const float* img, int c, int h, int w, int p, __nv_bfloat16* out) {
  int pw = w / p, ph = h / p;
  int64_t per = (int64_t)c * p * p;
  int64_t total = (int64_t)ph * pw * per;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t patch = i / per;
    int j = static_cast<int>(i % per);
    int ch = j / (p * p), dy = (j / p) % p, dx = j % p;
    int py = static_cast<int>(patch / pw), px = static_cast<int>(patch % pw);
    out[i] = __float2bfloat16(img[((int64_t)ch * h + py * p + dy) * w + px * p + dx]);
  }
}

__global__ void pool_rows_k(const float* x, float* out, int out_rows, int dim, int group) {
  int64_t total = (int64_t)out_rows * dim;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / dim;
    int d = static_cast<int>(i % dim);
    float s = 0.f;
    for (int g = 0; g < group; ++g) s += x[(r * group + g) * dim + d];
    out[i] = s / group;
  }
}

int row_threads(int dim) {
  int t = 32;
  while (t < dim && t < 1024) t <<= 1;
  return t;
}

}  // namespace

void cast_f32_to_bf16(const float* x, __nv_bfloat16* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  cast_f2b<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  ISC_LAUNCH();
}
void cast_bf16_to_f32(const __nv_bfloat16* x, float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  cast_b2f<<<blocks_for(n), kThreads, 0, s>>>(x, y, n);
  ISC_LAUNCH();
}
void rmsnorm(const float* x, const float* w, float* of, __nv_bfloat16* ob, int rows, int dim,
             float eps, cudaStream_t s) {
  if (rows <= 0) return;
  rmsnorm_k<<<rows, row_threads(dim), 0, s>>>(x, w, of, ob, dim, eps);
  ISC_LAUNCH();
}
void layernorm(const float* x, const float* w, const float* b, float* of, __nv_bfloat16* ob,
               int rows, int dim, float eps, cudaStream_t s) {
  if (rows <= 0) return;
  layernorm_k<<<rows, row_threads(dim), 0, s>>>(x, w, b, of, ob, dim, eps);
  ISC_LAUNCH();
}
void rope(float* x, const int32_t* positions, int rows, int heads, int head_dim, int row_stride,
          int rot_dim, float theta, bool interleaved, cudaStream_t s) {
  int64_t n = (int64_t)rows * heads * (rot_dim / 2);
  if (n <= 0) return;
  rope_k<<<blocks_for(n), kThreads, 0, s>>>(x, positions, rows, heads, head_dim, row_stride,
                                             rot_dim, theta, interleaved);
  ISC_LAUNCH();
}
void swiglu(const float* gu, float* of, __nv_bfloat16* ob, int rows, int ffn, cudaStream_t s) {
  int64_t n = (int64_t)rows * ffn;
  if (n <= 0) return;
  swiglu_k<<<blocks_for(n), kThreads, 0, s>>>(gu, of, ob, rows, ffn);
  ISC_LAUNCH();
}
void gelu(float* x, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  gelu_k<<<blocks_for(n), kThreads, 0, s>>>(x, n);
  ISC_LAUNCH();
}
void add_inplace(float* y, const float* x, int64_t n, cudaStream_t s) { axpy(y, x, 1.f, n, s); }
void axpy(float* y, const float* x, float a, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  axpy_k<<<blocks_for(n), kThreads, 0, s>>>(y, x, a, n);
  ISC_LAUNCH();
}
void add_bias(float* y, const float* b, int rows, int dim, cudaStream_t s) {
  int64_t n = (int64_t)rows * dim;
  if (n <= 0) return;
  add_bias_k<<<blocks_for(n), kThreads, 0, s>>>(y, b, rows, dim);
  ISC_LAUNCH();
}
void embedding(const float* table, const int32_t* ids, float* out, int rows, int dim,
               cudaStream_t s) {
  if (rows <= 0) return;
  embedding_k<float><<<rows, row_threads(dim), 0, s>>>(table, ids, out, dim);
  ISC_LAUNCH();
}
void embedding_bf16(const __nv_bfloat16* table, const int32_t* ids, float* out, int rows, int dim,
                    cudaStream_t s) {
  if (rows <= 0) return;
  embedding_k<__nv_bfloat16><<<rows, row_threads(dim), 0, s>>>(table, ids, out, dim);
  ISC_LAUNCH();
}
void argmax_rows(const float* logits, int32_t* out, int rows, int vocab, cudaStream_t s) {
  if (rows <= 0) return;
  argmax_k<<<rows, 256, 0, s>>>(logits, out, vocab);
  ISC_LAUNCH();
}
void patchify(const float* image, int channels, int height, int width, int patch,
              __nv_bfloat16* patches, cudaStream_t s) {
  int64_t n = (int64_t)(height / patch) * (width / patch) * channels * patch * patch;
  if (n <= 0) return;
  patchify_k<<<blocks_for(n), kThreads, 0, s>>>(image, channels, height, width, patch, patches);
  ISC_LAUNCH();
}
void pool_rows(const float* x, float* out, int rows, int dim, int group, cudaStream_t s) {
  int out_rows = rows / group;
  int64_t n = (int64_t)out_rows * dim;
  if (n <= 0) return;
  pool_rows_k<<<blocks_for(n), kThreads, 0, s>>>(x, out, out_rows, dim, group);
  ISC_LAUNCH();
}

}  // namespace inferscope::engine::cuda
