// The process-wide name table behind inferscope::agent::intern().
//
// Ids are dense (1, 2, 3, ...) and never reused, so a shipper can send
// "every name from id k on" after a reconnect. The table is bounded
// (kMaxNames); once full, intern() returns the id of "inferscope.name_overflow"
// so a program that interns unbounded names (e.g. per request) cannot grow it.
#pragma once

#include <cstdint>
#include <vector>

#include "inferscope/wire/records.hpp"

namespace inferscope::agent::detail {

inline constexpr uint32_t kMaxNames = 1u << 16;

// Number of names interned so far (the largest id).
uint32_t interned_count();
// Appends StringDefs for ids [first, last] to out.
void interned_strings(uint32_t first, uint32_t last, std::vector<wire::StringDef>& out);
// NVTX registered-string handle for an id (nullptr when NVTX is not built in).
const void* nvtx_string(uint32_t id);
// The model layer a range name was tied to by intern_layer() (agent.hpp), or -1.
// Lock-free: read by the shipper for every CPU range and by the CUPTI buffer
// thread for every attributed kernel.
int32_t layer_of(uint32_t id);
// The id of the arg key "layer": 0 until the first intern_layer(), so that a
// process that tags no layer ships no such name.
uint32_t layer_key();

}  // namespace inferscope::agent::detail
