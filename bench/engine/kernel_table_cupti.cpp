// KernelTable on CUPTI's activity API: concurrent-kernel records, summed by
// name in the buffer-completed callback, kept only when they started inside
// the window [start(), stop()] (records of earlier work flushed at start()
// fall before it). Linked against libcupti (bench only; the agent dlopens it).
// stop() finalizes CUPTI, so the table must not run while an agent traces.
#include <cupti.h>
#include <cxxabi.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include "kernel_table.hpp"

namespace inferscope::bench {
namespace {

constexpr size_t kBufferBytes = 8u << 20;
constexpr size_t kMaxNames = 4096;  // bounded: the engine has a few dozen kernels

std::mutex g_mu;
std::map<std::string, KernelSum> g_sums;  // by raw (mangled) name
std::atomic<uint64_t> g_begin{UINT64_MAX}, g_end{UINT64_MAX};

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  const uint64_t begin = g_begin.load(), end = g_end.load();
  CUpti_Activity* rec = nullptr;
  std::lock_guard lock(g_mu);
  while (valid && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL &&
        rec->kind != CUPTI_ACTIVITY_KIND_KERNEL)
      continue;
    auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(rec);
    const char* name = k->name;  // a packed field: copied before binding references to it
    if (k->start < begin || k->start > end || name == nullptr) continue;
    auto it = g_sums.find(name);
    if (it == g_sums.end()) {
      if (g_sums.size() >= kMaxNames) continue;
      it = g_sums.emplace(name, KernelSum{name, 0, 0}).first;
    }
    ++it->second.calls;
    it->second.total_ns += k->end - k->start;
  }
  std::free(buffer);
}

// "void inferscope::engine::cuda::(anonymous namespace)::small_linear_k<1, 2, 4>(View, ...)"
// -> "small_linear_k<1, 2, 4>".
std::string short_name(const std::string& mangled) {
  int status = 0;
  char* d = abi::__cxa_demangle(mangled.c_str(), nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : mangled;
  std::free(d);
  // Namespaces first: "(anonymous namespace)" has a parenthesis the cut below would stop at.
  for (const char* drop : {"inferscope::engine::cuda::", "(anonymous namespace)::"}) {
    for (size_t p; (p = s.find(drop)) != std::string::npos;) s.erase(p, std::strlen(drop));
  }
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {  // cut the parameter list (outside template brackets)
    if (s[i] == '<') ++depth;
    if (s[i] == '>') --depth;
    if (s[i] == '(' && depth == 0 && i > 0) {
      s.resize(i);
      break;
    }
  }
  return s.empty() ? mangled : s;
}

}  // namespace

bool KernelTable::start(std::string* why) {
  CUptiResult r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  if (r == CUPTI_SUCCESS) r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  if (r != CUPTI_SUCCESS) {
    const char* msg = nullptr;
    cuptiGetResultString(r, &msg);
    if (why) *why = std::string("CUPTI: ") + (msg ? msg : "error");
    return false;
  }
  cuptiActivityFlushAll(1);  // records of earlier work land before the window
  {
    std::lock_guard lock(g_mu);
    g_sums.clear();
  }
  uint64_t now = 0;
  cuptiGetTimestamp(&now);
  g_end.store(UINT64_MAX);
  g_begin.store(now);
  return true;
}

std::vector<KernelSum> KernelTable::stop() {
  uint64_t now = 0;
  cuptiGetTimestamp(&now);
  g_end.store(now);
  cuptiActivityFlushAll(1);
  cuptiActivityDisable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  // Detach CUPTI whole: an agent in this process (hf_bench --observe) attaches it afresh, with
  // its own activity callbacks, as it would had the table never run.
  cuptiFinalize();
  std::vector<KernelSum> out;
  {
    std::lock_guard lock(g_mu);
    std::map<std::string, KernelSum> merged;  // short names can coincide: sum them
    for (auto& [raw, sum] : g_sums) {
      KernelSum& m = merged[short_name(raw)];
      m.name = short_name(raw);
      m.calls += sum.calls;
      m.total_ns += sum.total_ns;
    }
    g_sums.clear();
    for (auto& [name, sum] : merged) out.push_back(sum);
  }
  g_begin.store(UINT64_MAX);
  std::sort(out.begin(), out.end(),
            [](const KernelSum& a, const KernelSum& b) { return a.total_ns > b.total_ns; });
  return out;
}

}  // namespace inferscope::bench
