// inferscope-engine: placeholder until the serving loop lands.
#include <cstdio>

#include "inferscope/engine/backend.hpp"

int main() {
  for (const auto& n : inferscope::engine::backend_names()) std::printf("backend %s\n", n.c_str());
  return 0;
}
