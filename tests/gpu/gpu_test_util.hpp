// What the CUDA backend tests share: whether they can run here, and how far a GPU result is
// from its CPU reference.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "inferscope/engine/backend.hpp"

namespace inferscope::engine::gpu_test {

// Empty when the CUDA backend can be created here, else why not. Probed once per process: a
// probe without a device costs ~1 s of CUDA runtime init, so no device node skips it.
inline const std::string& cuda_unavailable_reason() {
  static const std::string reason = [] {
    if (!std::filesystem::exists("/dev/nvidiactl") && !std::filesystem::exists("/dev/dxg"))
      return std::string("no NVIDIA device node (/dev/nvidiactl)");
    try {
      create_backend("cuda", {});
      return std::string();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
  }();
  return reason;
}

// Relative L2 distance of `got` from `ref`; infinite on a size mismatch or a non-finite value.
inline double rel_l2(const std::vector<float>& got, const std::vector<float>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Normal values with the given standard deviation.
inline std::vector<float> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A linear op's tolerance on randn_bf16 weights: both sides multiply the same numbers and only
// the order of the sums differs (an x rounded to bf16, ~3e-3, or a wrong element fails it).
constexpr double kExactWeightsTol = 1e-5;
// A value no op computes: an output prefilled with it shows the rows an op must leave alone.
constexpr float kSentinel = 7.25f;

// Normal values rounded to bf16 (round to nearest even), kept as fp32: as weights, the CUDA
// backend's bf16 operand is then exact and both sides multiply the same numbers.
inline std::vector<float> randn_bf16(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) {
    float f = d(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    std::memcpy(&f, &u, 4);
    x = f;
  }
  return v;
}

// One backend with buffers it owns: the CUDA-vs-CPU tests make the same tensors on both sides.
struct BackendSide {
  std::unique_ptr<Backend> be;
  std::vector<std::unique_ptr<Buffer>> bufs;
  Tensor make(int64_t r, int64_t c, const std::vector<float>& host = {}) {
    bufs.push_back(std::make_unique<Buffer>(*be, r, c));
    if (!host.empty()) be->upload(*bufs.back(), host.data());
    return *bufs.back();
  }
  Tensor make_i32(int64_t r, int64_t c, const std::vector<int32_t>& host = {}) {
    bufs.push_back(std::make_unique<Buffer>(*be, r, c, DType::kI32));
    if (!host.empty()) be->upload(*bufs.back(), host.data());
    return *bufs.back();
  }
  // Downloads any view (strided ones row by row through a contiguous copy).
  std::vector<float> get(const Tensor& t) {
    Tensor src = t;
    std::unique_ptr<Buffer> tmp;
    if (!t.contiguous()) {
      tmp = std::make_unique<Buffer>(*be, t.rows, t.cols, t.dtype);
      be->copy(t, *tmp);
      src = *tmp;
    }
    std::vector<float> v(static_cast<size_t>(t.elements()));
    be->download(src, v.data());
    return v;
  }
  std::vector<int32_t> get_i(const Tensor& t) {
    std::vector<int32_t> v(static_cast<size_t>(t.elements()));
    be->download(t, v.data());
    return v;
  }
};

// A CUDA backend and a CPU backend side by side, the CPU one the oracle, and a seeded generator
// for their inputs; skipped where CUDA cannot run.
class CudaVsCpuTest : public ::testing::Test {
 protected:
  explicit CudaVsCpuTest(uint32_t seed) : rng(seed) {}
  void SetUp() override {
    const std::string& why = cuda_unavailable_reason();
    if (!why.empty()) GTEST_SKIP() << "no CUDA device / backend: " << why;
    gpu.be = create_backend("cuda", {});
    cpu.be = create_backend("cpu", {});
  }
  BackendSide cpu, gpu;
  std::mt19937 rng;
};

}  // namespace inferscope::engine::gpu_test

// In a test body or SetUp(): reports the test skipped (with the reason) where CUDA cannot run.
#define SKIP_WITHOUT_CUDA()                                                             \
  do {                                                                                  \
    const std::string& why = ::inferscope::engine::gpu_test::cuda_unavailable_reason(); \
    if (!why.empty()) GTEST_SKIP() << "no CUDA device / backend: " << why;              \
  } while (0)
