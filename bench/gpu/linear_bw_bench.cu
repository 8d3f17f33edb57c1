// linear_bw_bench: the decode linear (engine::cuda::small_linear) against the
// HBM, in GB/s of weight bytes read, next to the device-to-device copy
// bandwidth and the pre-rewrite kernel (small_linear_v0, bench only), for the
// shapes of an OLMoE-1B-7B decode step (issue 18 part 5):
//   dense    2048 x 2048 (attention projections)
//   lm_head  50304 x 2048
//   gate_up  64 experts x (2048 in -> 2048 out), 8 experts active
//   down     64 experts x (1024 in -> 2048 out), 8 experts active
// at M = 1, 2, 4, 8 rows (per active expert for the grouped shapes).
// Then the prefill expert GEMM (engine::cuda::grouped_gemm vs grouped_gemm_v0)
// in TFLOP/s, all 64 experts at 128 and 1024 rows each (B=8 and B=64 prompts of
// 128 tokens, top-8), next to cuBLAS on one dense GEMM of the same size (what a
// tensor-core GEMM of that shape reaches here).
// Weights rotate through enough copies (dense) or expert sets (grouped) that
// every call reads from HBM, not from the 50 MB L2. CUDA events around --iters
// back-to-back launches; a launch's fixed cost is part of the time (it is part
// of a decode step too). Each shape also checks new against old (relative L2 of
// the outputs: same products, another summation order, so ~1e-6).
//
//   linear_bw_bench [--iters N] [--kernel both|new|old] [--json FILE] [--no-prefill]
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "check.hpp"
#include "kernels.hpp"
#include "small_linear_v0.hpp"

namespace kc = inferscope::engine::cuda;

namespace {

__global__ void fill_bf16(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffff) / 65536.f - 0.5f) * 0.1f);
  }
}
__global__ void fill_f32(float* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2246822519u ^ seed;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    p[i] = static_cast<float>(h & 0xffff) / 65536.f - 0.5f;
  }
}

struct Shape {
  const char* name;
  int n, k, experts;  // experts 0: dense
};

struct Row {
  std::string shape;
  int m = 0;
  double bytes = 0, old_us = 0, new_us = 0, nopdl_us = 0, rel_l2 = 0;
};

// Microseconds per iteration of body(i), i in [0, iters), timed with CUDA events on the default
// stream (the work body queues there).
template <class Body>
double event_us(Body&& body, int iters) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0);
  for (int i = 0; i < iters; ++i) body(i);
  cudaEventRecord(e1);
  ISC_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms * 1e3 / iters;
}

double d2d_gbps() {
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  ISC_CUDA(cudaMalloc(&a, bytes));
  ISC_CUDA(cudaMalloc(&b, bytes));
  ISC_CUDA(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  const double us =
      event_us([&](int) { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); }, 20);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (us * 1e-6) / 1e9;  // read + write, as gpu_bench counts it
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// One shape at M rows (per active expert): times both kernels, compares their outputs.
Row run_shape(const Shape& sh, int m, int iters, bool run_old, bool run_new) {
  constexpr int kActive = 8;
  constexpr size_t kRotateBytes = size_t(256) << 20;  // > L2 (50 MB) by a margin
  const bool grouped = sh.experts > 0;
  const int E = grouped ? sh.experts : 1;
  const size_t w_elems = size_t(E) * sh.n * sh.k;
  const int copies =
      static_cast<int>(std::max<size_t>(1, (kRotateBytes + w_elems * 2 - 1) / (w_elems * 2)));
  const int rows = grouped ? kActive * m : m;
  __nv_bfloat16* w = nullptr;
  float *x = nullptr, *y = nullptr;
  int32_t* offs = nullptr;
  ISC_CUDA(cudaMalloc(&w, w_elems * 2 * copies));
  ISC_CUDA(cudaMalloc(&x, size_t(rows) * sh.k * 4));
  ISC_CUDA(cudaMalloc(&y, size_t(rows) * sh.n * 4));
  fill_bf16<<<1024, 256>>>(w, w_elems * copies, 7u);
  fill_f32<<<256, 256>>>(x, size_t(rows) * sh.k, 11u);
  // Grouped: E/8 disjoint sets of 8 active experts (set s: experts s, s+E/8, ...), m rows each;
  // the calls walk through the sets so the 8 experts' weights are cold in L2 every time.
  const int sets = grouped ? std::max(1, E / kActive) : 1;
  if (grouped) {
    std::vector<int32_t> h(size_t(sets) * (E + 1), 0);
    for (int s = 0; s < sets; ++s) {
      int32_t* o = h.data() + size_t(s) * (E + 1);
      for (int e = 0; e < E; ++e) {
        const bool active = e % sets == s && e / sets < kActive;
        o[e + 1] = o[e] + (active ? m : 0);
      }
    }
    ISC_CUDA(cudaMalloc(&offs, h.size() * 4));
    ISC_CUDA(cudaMemcpy(offs, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  }
  const kc::View xv{x, rows, sh.k, sh.k}, yv{y, rows, sh.n, sh.n};
  auto call = [&](bool old, int it) {
    const __nv_bfloat16* wi = w + w_elems * (it % copies);
    const int32_t* oi = grouped ? offs + size_t(it % sets) * (E + 1) : nullptr;
    if (old)
      inferscope::bench::small_linear_v0(xv, wi, oi, E, yv, sh.n, sh.k, 0.f, nullptr);
    else
      kc::small_linear(xv, wi, oi, E, yv, sh.n, sh.k, 0.f, nullptr, m);
  };
  auto time_us = [&](bool old) {
    for (int i = 0; i < 3; ++i) call(old, i);
    return event_us([&](int i) { call(old, i); }, iters);
  };
  auto output = [&](bool old) {
    ISC_CUDA(cudaMemset(y, 0, size_t(rows) * sh.n * 4));
    call(old, 0);
    std::vector<float> h(size_t(rows) * sh.n);
    ISC_CUDA(cudaMemcpy(h.data(), y, h.size() * 4, cudaMemcpyDeviceToHost));
    return h;
  };
  Row r;
  r.shape = sh.name;
  r.m = m;
  r.bytes = double(grouped ? kActive : 1) * sh.n * sh.k * 2;
  if (run_old) r.old_us = time_us(true);
  if (run_new) {
    r.new_us = time_us(false);
    const bool pdl = kc::pdl_on();
    kc::set_pdl(false);  // the same launches without programmatic dependent launch
    r.nopdl_us = time_us(false);
    kc::set_pdl(pdl);
  }
  r.rel_l2 = run_old && run_new ? rel_l2(output(false), output(true)) : -1;
  ISC_CUDA(cudaDeviceSynchronize());
  cudaFree(w);
  cudaFree(x);
  cudaFree(y);
  if (offs) cudaFree(offs);
  return r;
}

// [SECTION] Prefill expert GEMM
struct GemmRow {
  std::string shape;
  int rows_per_expert = 0;
  double flops = 0, old_us = 0, new_us = 0, cublas_us = 0, rel_l2 = 0;
};

GemmRow run_gemm(const Shape& sh, int rows_per_expert, int iters) {
  const int E = sh.experts, A = E * rows_per_expert;
  const size_t w_elems = size_t(E) * sh.n * sh.k;
  __nv_bfloat16 *w = nullptr, *x = nullptr;
  float* y = nullptr;
  int32_t* offs = nullptr;
  ISC_CUDA(cudaMalloc(&w, w_elems * 2));
  ISC_CUDA(cudaMalloc(&x, size_t(A) * sh.k * 2));
  ISC_CUDA(cudaMalloc(&y, size_t(A) * sh.n * 4));
  fill_bf16<<<1024, 256>>>(w, w_elems, 5u);
  fill_bf16<<<1024, 256>>>(x, size_t(A) * sh.k, 9u);
  std::vector<int32_t> h(E + 1);
  for (int e = 0; e <= E; ++e) h[e] = e * rows_per_expert;
  ISC_CUDA(cudaMalloc(&offs, h.size() * 4));
  ISC_CUDA(cudaMemcpy(offs, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  cublasHandle_t blas = nullptr;
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate");
  auto call = [&](int which) {
    if (which == 0)
      inferscope::bench::grouped_gemm_v0(x, w, offs, y, sh.n, E, sh.n, sh.k, rows_per_expert,
                                         nullptr);
    else if (which == 1)
      kc::grouped_gemm(x, w, offs, y, sh.n, E, sh.n, sh.k, rows_per_expert, nullptr);
    else {  // one dense GEMM of the same FLOPs: all rows against expert 0's weight
      const float alpha = 1.f, beta = 0.f;
      cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, sh.n, A, sh.k, &alpha, w, CUDA_R_16BF, sh.k, x,
                   CUDA_R_16BF, sh.k, &beta, y, CUDA_R_32F, sh.n, CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT);
    }
  };
  auto time_us = [&](int which) {
    call(which);
    return event_us([&](int) { call(which); }, iters);
  };
  auto output = [&](int which) {
    ISC_CUDA(cudaMemset(y, 0, size_t(A) * sh.n * 4));
    call(which);
    std::vector<float> o(size_t(A) * sh.n);
    ISC_CUDA(cudaMemcpy(o.data(), y, o.size() * 4, cudaMemcpyDeviceToHost));
    return o;
  };
  GemmRow r;
  r.shape = sh.name;
  r.rows_per_expert = rows_per_expert;
  r.flops = 2.0 * A * sh.n * sh.k;
  r.old_us = time_us(0);
  r.new_us = time_us(1);
  r.cublas_us = time_us(2);
  r.rel_l2 = rel_l2(output(1), output(0));
  ISC_CUDA(cudaDeviceSynchronize());
  cublasDestroy(blas);
  cudaFree(w);
  cudaFree(x);
  cudaFree(y);
  cudaFree(offs);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 50;
  std::string kernel = "both", json;
  bool prefill = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else if (a == "--kernel" && i + 1 < argc) {
      kernel = argv[++i];
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a == "--no-prefill") {
      prefill = false;
    } else {
      std::fprintf(stderr,
                   "usage: linear_bw_bench [--iters N] [--kernel both|new|old] [--json F] "
                   "[--no-prefill]\n");
      return 2;
    }
  }
  if (iters < 1 || (kernel != "both" && kernel != "new" && kernel != "old")) {
    std::fprintf(stderr, "linear_bw_bench: --iters >= 1, --kernel both|new|old\n");
    return 2;
  }
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::printf("linear_bw_bench: SKIPPED (no CUDA device)\n");
    return 0;
  }
  try {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    const double d2d = d2d_gbps();
    std::printf("linear_bw_bench on %s (%d SMs): d2d copy %.0f GB/s (read+write)\n", prop.name,
                prop.multiProcessorCount, d2d);
    const Shape shapes[] = {{"dense 2048x2048", 2048, 2048, 0},
                            {"lm_head 50304x2048", 50304, 2048, 0},
                            {"gate_up 8/64 x 2048x2048", 2048, 2048, 64},
                            {"down 8/64 x 2048x1024", 2048, 1024, 64}};
    std::printf(
        "(new: back-to-back calls as programmatic dependents, each requesting its weights "
        "while the previous call finishes; nopdl: plain launches)\n");
    std::printf("%-26s %2s %9s | %8s %7s %5s | %8s %7s %5s | %8s %5s | %7s %9s\n", "shape", "M",
                "MB read", "old us", "GB/s", "%d2d", "new us", "GB/s", "%d2d", "nopdl us", "%d2d",
                "speedup", "rel_l2");
    std::vector<Row> rows;
    for (const Shape& sh : shapes)
      for (int m : {1, 2, 4, 8}) {
        Row r;
        try {
          r = run_shape(sh, m, iters, kernel != "new", kernel != "old");
        } catch (const std::exception& e) {  // one shape's failure does not hide the others
          std::printf("%-26s %2d FAILED: %s\n", sh.name, m, e.what());
          cudaGetLastError();
          continue;
        }
        auto gbps = [&](double us) { return us > 0 ? r.bytes / (us * 1e-6) / 1e9 : 0.0; };
        std::printf(
            "%-26s %2d %9.1f | %8.2f %7.0f %4.0f%% | %8.2f %7.0f %4.0f%% | %8.2f %4.0f%% | %6.2fx "
            "%9.2e\n",
            r.shape.c_str(), r.m, r.bytes / 1e6, r.old_us, gbps(r.old_us),
            100 * gbps(r.old_us) / d2d, r.new_us, gbps(r.new_us), 100 * gbps(r.new_us) / d2d,
            r.nopdl_us, 100 * gbps(r.nopdl_us) / d2d, r.new_us > 0 ? r.old_us / r.new_us : 0.0,
            r.rel_l2);
        rows.push_back(r);
      }
    std::vector<GemmRow> gemms;
    if (prefill) {
      std::printf(
          "\nprefill expert GEMM, 64 experts all active (TFLOP/s; cuBLAS: one dense GEMM "
          "of the same size)\n%-26s %6s | %8s %7s | %8s %7s | %8s %7s | %7s %9s\n",
          "shape", "rows/e", "old us", "TFLOP/s", "new us", "TFLOP/s", "cublas", "TFLOP/s",
          "speedup", "rel_l2");
      for (const Shape& sh : {shapes[2], shapes[3]})
        for (int rpe : {128, 1024}) {
          GemmRow g;
          try {
            g = run_gemm(sh, rpe, std::max(3, iters / 10));
          } catch (const std::exception& e) {
            std::printf("%-26s %6d FAILED: %s\n", sh.name, rpe, e.what());
            cudaGetLastError();
            continue;
          }
          auto tf = [&](double us) { return us > 0 ? g.flops / (us * 1e-6) / 1e12 : 0.0; };
          std::printf("%-26s %6d | %8.1f %7.1f | %8.1f %7.1f | %8.1f %7.1f | %6.2fx %9.2e\n",
                      g.shape.c_str(), rpe, g.old_us, tf(g.old_us), g.new_us, tf(g.new_us),
                      g.cublas_us, tf(g.cublas_us), g.new_us > 0 ? g.old_us / g.new_us : 0.0,
                      g.rel_l2);
          gemms.push_back(g);
        }
    }
    if (!json.empty()) {
      FILE* f = std::fopen(json.c_str(), "w");
      if (f == nullptr) throw std::runtime_error("cannot write " + json);
      std::fprintf(f, "{\"device\": \"%s\", \"d2d_gbps\": %.1f, \"rows\": [", prop.name, d2d);
      for (size_t i = 0; i < rows.size(); ++i)
        std::fprintf(f,
                     "%s\n {\"shape\": \"%s\", \"m\": %d, \"bytes\": %.0f, \"old_us\": %.3f, "
                     "\"new_us\": %.3f, \"nopdl_us\": %.3f, \"rel_l2\": %.3g}",
                     i ? "," : "", rows[i].shape.c_str(), rows[i].m, rows[i].bytes, rows[i].old_us,
                     rows[i].new_us, rows[i].nopdl_us, rows[i].rel_l2);
      std::fprintf(f, "\n], \"prefill_gemm\": [");
      for (size_t i = 0; i < gemms.size(); ++i)
        std::fprintf(f,
                     "%s\n {\"shape\": \"%s\", \"rows_per_expert\": %d, \"flops\": %.0f, "
                     "\"old_us\": %.3f, \"new_us\": %.3f, \"cublas_us\": %.3f, \"rel_l2\": %.3g}",
                     i ? "," : "", gemms[i].shape.c_str(), gemms[i].rows_per_expert, gemms[i].flops,
                     gemms[i].old_us, gemms[i].new_us, gemms[i].cublas_us, gemms[i].rel_l2);
      std::fprintf(f, "\n]}\n");
      std::fclose(f);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "linear_bw_bench: %s\n", e.what());
    return 1;
  }
}
