// The name table: a lock for writers (intern is called once per name), and a
// chunked array for lock-free reads of NVTX handles from the hot path.
#include "intern.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
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
  // layer + 1 per id (0: not a layer's range); chunks made by the first tag in them.
  std::array<std::atomic<std::atomic<uint16_t>*>, kChunks> layers{};
  std::atomic<uint32_t> layer_key{0};
  std::atomic<uint32_t> count{0};
  uint32_t overflow_id = 0;

  ~Table() {
    for (auto& c : nvtx) delete[] c.load();
    for (auto& c : layers) delete[] c.load();
  }

  // With mu held: ties id (not the overflow id) to layer (< kMaxLayers).
  // nullptr, or why nothing changed.
  const char* tag_locked(uint32_t id, uint32_t layer) {
    auto& chunk = layers[id / kChunk];
    if (!chunk.load(std::memory_order_relaxed))
      chunk.store(
          new std::atomic<uint16_t>[kChunk] {}, std::memory_order_release);
    std::atomic<uint16_t>& slot = chunk.load(std::memory_order_relaxed)[id % kChunk];
    const uint16_t old = slot.load(std::memory_order_relaxed);
    if (old != 0) return old == layer + 1 ? nullptr : "names another layer already";
    if (layer_key.load(std::memory_order_relaxed) == 0) {
      const uint32_t key = add_locked("layer");
      if (key == overflow_id) return "did not fit the name table";
      layer_key.store(key, std::memory_order_release);
    }
    slot.store(static_cast<uint16_t>(layer + 1), std::memory_order_release);
    return nullptr;
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

int32_t layer_of(uint32_t id) {
  if (id >= kMaxNames) return -1;
  const std::atomic<uint16_t>* chunk = table().layers[id / kChunk].load(std::memory_order_acquire);
  return chunk ? static_cast<int32_t>(chunk[id % kChunk].load(std::memory_order_acquire)) - 1 : -1;
}

uint32_t layer_key() {
  return table().layer_key.load(std::memory_order_acquire);
}

}  // namespace detail

uint32_t intern(std::string_view name) {
  auto& t = detail::table();
  std::lock_guard lock(t.mu);
  return t.add_locked(name);
}

uint32_t intern_layer(std::string_view name, uint32_t layer) {
  auto& t = detail::table();
  std::lock_guard lock(t.mu);
  const uint32_t id = t.add_locked(name);
  const char* why = nullptr;
  if (layer >= wire::kMaxLayers)
    why = "is past the last layer (1023)";
  else if (id == t.overflow_id)
    why = "did not fit the name table";
  else
    why = t.tag_locked(id, layer);
  if (why)
    std::fprintf(stderr, "inferscope agent: range '%.*s' not tied to layer %u: it %s\n",
                 static_cast<int>(std::min<size_t>(name.size(), 200)), name.data(), layer, why);
  return id;
}

}  // namespace inferscope::agent
