// Built when CUDA/CUPTI is not: the agent runs without GPU activity tracing.
#include <cstdio>

#include "cupti_tracer.hpp"

namespace inferscope::agent::detail {

std::unique_ptr<CuptiTracer> CuptiTracer::start(Agent::Impl&) {
  std::fprintf(stderr, "inferscope agent: CUPTI requested but this build has no CUDA support\n");
  return nullptr;
}

bool CuptiTracer::built_in() { return false; }

}  // namespace inferscope::agent::detail
