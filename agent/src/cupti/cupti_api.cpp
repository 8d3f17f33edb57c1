// dlopen of libcupti and libcuda (cupti_api.hpp says why and where from).
#include "cupti_api.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace inferscope::agent::detail {
namespace {

// The toolkit we were compiled against: CUPTI's activity record layouts are
// versioned, so the matching major version is tried first.
constexpr int kCudaMajor = CUDA_VERSION / 1000;

std::vector<std::string> cupti_candidates(bool& from_env) {
  if (const char* env = std::getenv("INFERSCOPE_CUPTI_LIBRARY"); env && *env) {
    from_env = true;
    return {env};
  }
  from_env = false;
  std::vector<std::string> c = {"libcupti.so." + std::to_string(kCudaMajor), "libcupti.so"};
#ifdef INFERSCOPE_CUPTI_BUILD_PATH
  c.push_back(INFERSCOPE_CUPTI_BUILD_PATH);
#endif
  return c;
}

struct Loaded {
  CuptiApi api;
  bool ok = false;
  std::string error;
};

Loaded load() {
  Loaded l;
  bool from_env = false;
  std::string tried;
  void* handle = nullptr;
  for (const std::string& name : cupti_candidates(from_env)) {
    // RTLD_LOCAL: CUPTI's symbols stay out of the global namespace; we only
    // ever reach them through dlsym.
    handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) {
      l.api.path = name;
      break;
    }
    const char* why = dlerror();
    tried += "\n  " + name + ": " + (why ? why : "not found");
  }
  if (!handle) {
    l.error = "libcupti could not be loaded; tried:" + tried +
              (from_env ? "\n  (INFERSCOPE_CUPTI_LIBRARY is set, so nothing else was tried)"
                        : "\n  Install CUPTI (it ships with the CUDA toolkit and in the "
                          "nvidia-cuda-cupti wheel) and add its directory to LD_LIBRARY_PATH, "
                          "or set INFERSCOPE_CUPTI_LIBRARY to the library's path.");
    return l;
  }
  std::string missing;
#define INFERSCOPE_CUPTI_LOAD(name, required)                                \
  l.api.name = reinterpret_cast<decltype(l.api.name)>(dlsym(handle, #name)); \
  if (!l.api.name && (required)) missing += std::string(missing.empty() ? "" : ", ") + #name;
  INFERSCOPE_CUPTI_FUNCTIONS(INFERSCOPE_CUPTI_LOAD)
#undef INFERSCOPE_CUPTI_LOAD
  if (!missing.empty()) {
    // Too old a CUPTI. The handle is kept: CUPTI does not like being unloaded.
    l.error = l.api.path + " lacks " + missing + " (built against CUDA " +
              std::to_string(kCudaMajor) + "; point INFERSCOPE_CUPTI_LIBRARY at a matching CUPTI)";
    return l;
  }
  l.ok = true;
  return l;
}

}  // namespace

const CuptiApi* load_cupti(std::string& error) {
  static const Loaded loaded = load();  // never unloaded: CUPTI owns threads and callbacks
  if (!loaded.ok) {
    error = loaded.error;
    return nullptr;
  }
  return &loaded.api;
}

int cuda_device_count(std::string& error) {
  // The driver, not cudart: it is what every CUDA process has loaded already,
  // and it needs no matching runtime version.
  static void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!driver) {
    const char* why = dlerror();
    error = std::string("no CUDA driver (libcuda.so.1: ") + (why ? why : "not found") + ")";
    return -1;
  }
  auto init = reinterpret_cast<decltype(&::cuInit)>(dlsym(driver, "cuInit"));
  auto count = reinterpret_cast<decltype(&::cuDeviceGetCount)>(dlsym(driver, "cuDeviceGetCount"));
  auto name = reinterpret_cast<decltype(&::cuGetErrorString)>(dlsym(driver, "cuGetErrorString"));
  if (!init || !count) {
    error = "libcuda.so.1 lacks cuInit or cuDeviceGetCount";
    return -1;
  }
  int n = 0;
  CUresult r = init(0);
  if (r == CUDA_SUCCESS) r = count(&n);
  if (r != CUDA_SUCCESS) {
    const char* s = nullptr;
    if (name) name(r, &s);
    error = std::string("CUDA driver error: ") + (s ? s : std::to_string(static_cast<int>(r)));
    return -1;
  }
  return n;
}

}  // namespace inferscope::agent::detail
