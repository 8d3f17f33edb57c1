// Built when CUDA/CUPTI is not: the agent runs without GPU activity tracing.
#include <cstdio>

#include "cupti_tracer.hpp"

namespace inferscope::agent::detail {

std::unique_ptr<CuptiTracer> CuptiTracer::start(Agent::Impl&, uint32_t) {
  std::fprintf(stderr,
               "inferscope agent: GPU tracing requested but this build has no CUDA support; "
               "bursts and captures are scheduled and counted, nothing is recorded\n");
  return nullptr;
}

bool CuptiTracer::built_in() {
  return false;
}

}  // namespace inferscope::agent::detail
