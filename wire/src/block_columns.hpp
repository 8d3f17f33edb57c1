// What the column split (block_columns.cpp) lets tests choose: its code path.
#pragma once

namespace inferscope::wire::detail {

// On: the split runs its baseline x86-64 code even where the CPU has BMI1/2,
// so tests check both paths on one machine. Off (the default): BMI where the
// CPU has it. The output is the same either way.
void use_baseline_split(bool on);

}  // namespace inferscope::wire::detail
