// The name table: a lock for writers (intern is called once per name), and a
// chunked array for lock-free reads of NVTX handles from the hot path.
#include "intern.hpp"

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "inferscope/agent.hpp"
#include "nvtx.hpp"

namespace inferscope::agent {
namespace detail {
namespace {

constexpr uint32_t kChunk = 1024;
constexpr uint32_t kChunks = kMaxNames / kChunk;

struct Table {
  std::mutex mu;
  std::unordered_map<std::string, uint32_t> ids;
  std::vector<std::string> names{std::string{}};  // names[id]; id 0 = no name
  std::array<std::atomic<const void**>, kChunks> nvtx{};
  std::atomic<uint32_t> count{0};
  uint32_t overflow_id = 0;

  ~Table() {
    for (auto& c : nvtx) delete[] c.load();
  }

  uint32_t add_locked(std::string_view name) {
    auto it = ids.find(std::string(name));
    if (it != ids.end()) return it->second;
    const auto id = static_cast<uint32_t>(names.size());
    if (id >= kMaxNames) return overflow_id;
    std::string s(name.substr(0, wire::kMaxStringBytes));
    auto& chunk = nvtx[id / kChunk];
    if (!chunk.load(std::memory_order_relaxed))
      chunk.store(
          new const void* [kChunk] {}, std::memory_order_release);
    chunk.load(std::memory_order_relaxed)[id % kChunk] = nvtx_register(s);
    names.push_back(s);
    ids.emplace(std::move(s), id);
    count.store(id, std::memory_order_release);
    return id;
  }
};

Table& table() {
  // Leaked on purpose: threads may intern or record during static destruction.
  static Table* t = [] {
    auto* tab = new Table;
    std::lock_guard lock(tab->mu);
    tab->overflow_id = tab->add_locked("inferscope.name_overflow");
    return tab;
  }();
  return *t;
}

}  // namespace

uint32_t interned_count() {
  return table().count.load(std::memory_order_acquire);
}

void interned_strings(uint32_t first, uint32_t last, std::vector<wire::StringDef>& out) {
  auto& t = table();
  std::lock_guard lock(t.mu);
  if (first == 0) first = 1;
  for (uint32_t id = first; id <= last && id < t.names.size(); ++id)
    out.push_back(wire::StringDef{id, t.names[id]});
}

const void* nvtx_string(uint32_t id) {
  if (id >= kMaxNames) return nullptr;
  const void** chunk = table().nvtx[id / kChunk].load(std::memory_order_acquire);
  return chunk ? chunk[id % kChunk] : nullptr;
}

}  // namespace detail

uint32_t intern(std::string_view name) {
  auto& t = detail::table();
  std::lock_guard lock(t.mu);
  return t.add_locked(name);
}

}  // namespace inferscope::agent
