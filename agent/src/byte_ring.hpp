// The SPSC byte ring lives in the public hot_path.hpp (ScopedRange writes it
// inline in the host's code); the agent's own code names it from here.
#pragma once

#include "inferscope/hot_path.hpp"

namespace inferscope::agent::detail {
using hot::ByteRing;
using hot::kPadKind;
using hot::RingHeader;
}  // namespace inferscope::agent::detail
