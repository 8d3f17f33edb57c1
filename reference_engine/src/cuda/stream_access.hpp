// What code next to the CUDA backend (the NCCL communicator) needs from it:
// its stream and device. Kept out of backend.hpp so the model code never sees
// a device type.
#pragma once

#include "inferscope/engine/backend.hpp"

namespace inferscope::engine::cuda {

// The backend's in-order stream (a cudaStream_t) and device ordinal. Throws
// std::invalid_argument when `backend` is not the CUDA backend.
void* backend_stream(Backend& backend);
int backend_device(Backend& backend);

}  // namespace inferscope::engine::cuda
