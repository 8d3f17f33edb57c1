// Backend registry: name -> factory. The built-in backends are added on first
// use (explicit calls, no static-initialiser order issues); register_backend()
// adds more at run time.
#include <map>
#include <mutex>
#include <stdexcept>

#include "inferscope/engine/backend.hpp"

namespace inferscope::engine {
namespace {

struct Registry {
  std::mutex mu;
  std::map<std::string, BackendFactory> factories;
};

Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry;  // never destroyed: usable from other static destructors
    reg->factories["cpu"] = [](const BackendOptions& o) { return create_cpu_backend(o); };
#ifdef INFERSCOPE_ENGINE_WITH_CUDA
    reg->factories["cuda"] = [](const BackendOptions& o) { return create_cuda_backend(o); };
#endif
    return reg;
  }();
  return *r;
}

}  // namespace

void register_backend(const std::string& name, BackendFactory factory) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  r.factories[name] = std::move(factory);
}

std::vector<std::string> backend_names() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  std::vector<std::string> names;
  for (const auto& [name, f] : r.factories) names.push_back(name);
  return names;
}

std::unique_ptr<Backend> create_backend(const std::string& name, const BackendOptions& options) {
  BackendFactory factory;
  {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    auto it = r.factories.find(name);
    if (it == r.factories.end()) {
      std::string known;
      for (const auto& [n, f] : r.factories) known += (known.empty() ? "" : ", ") + n;
      throw std::runtime_error("unknown backend '" + name + "' (built: " + known + ")");
    }
    factory = it->second;
  }
  return factory(options);
}

}  // namespace inferscope::engine
