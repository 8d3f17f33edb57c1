// NVTX in the "inferscope" domain: the only file that includes nvtx3. Built in
// when the nvtx3 headers are found (INFERSCOPE_HAVE_NVTX); otherwise these are
// no-ops. Without an NVTX injection library (Nsight Systems sets one) a push or
// pop is a check of a function pointer.
#pragma once

#include <string>

namespace inferscope::agent::detail {

bool nvtx_available();
// Registers a string in the inferscope domain; the handle is opaque.
const void* nvtx_register(const std::string& name);
void nvtx_push(const void* registered_string);
void nvtx_pop();

}  // namespace inferscope::agent::detail
