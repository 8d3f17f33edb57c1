// libFuzzer target: arbitrary bytes as a Chrome Trace Event JSON file into the
// viewer's importer (the files users open come from anywhere). Must never
// crash, hang or allocate without bound; bad input ends as a LoadResult error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "inferscope/viewer/loader.hpp"
#include "inferscope/viewer/trace_model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace inferscope::viewer;
  TraceModel model;
  const LoadResult r =
      load_chrome_json_text(std::string(reinterpret_cast<const char*>(data), size), model);
  if (!r.ok && r.error.empty()) __builtin_trap();  // a failure always says why
  (void)r.summary();
  return 0;
}
