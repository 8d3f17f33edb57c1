#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, and runs every test.
#   0. the formatting check (scripts/check-format: the tree against .clang-format);
#   1. a sanitizer build (ASan + UBSan) of the unit and integration tests (tests that
#      cannot run meaningfully under ASan skip themselves there: docs/reliability.md);
#   2. a short libFuzzer run of every parser of untrusted bytes;
#   3. the release build and the whole ctest suite (unit, integration, e2e; gpu
#      tests report themselves skipped where no GPU is present).
# Builds show a progress line with the elapsed time; a failed test stage prints
# the failing tests' own output and names its log. The last lines printed are a
# summary of every stage (passed / failed / skipped, tests counted, time), and the
# exit status is non-zero if any stage failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# [SECTION] Stages: each records its result, a note and its time for the summary.
stages=("dependencies" "formatting" "sanitizer build" "sanitizer tests" "fuzzing" "release build" "full suite")
declare -A result note seconds
current="" current_start=0
begin() {
  current=$1
  current_start=$SECONDS
  echo "== $1${2:+: $2}"
}
finish() {  # result [note]
  result[$current]=$1
  note[$current]=${2:-}
  seconds[$current]=$((SECONDS - current_start))
  echo "   $current: $1 in $(duration "${seconds[$current]}")${2:+ ($2)}"
  current=""
}
duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
progress() {  # ninja's progress lines, compacted (in place on a terminal)
  awk -v tty="$([[ -t 1 ]] && echo 1 || echo 0)" -f scripts/lib/ninja-progress
}

# ctest's counts from its log: "P passed, F failed, S skipped of N".
ctest_counts() {
  local log=$1 total failed skipped
  total=$(grep -oE 'tests failed out of [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || echo 0)
  failed=$(grep -oE '[0-9]+ tests failed out of' "$log" | tail -1 | grep -oE '^[0-9]+' || echo 0)
  skipped=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped' "$log" || true)
  echo "$((total - failed - skipped)) passed, $failed failed, $skipped skipped of $total"
}

# The output ctest kept for each failed test (its status line up to the next test's
# line), so the failing assertion is on screen, not only the last lines of the log.
failed_test_output() {
  awk '
    /^ *[0-9]+\/[0-9]+ Test +#[0-9]+: / { show = ($0 ~ /\*\*\*(Failed|Exception|Timeout)|Not Run/); shown = 0 }
    /^ *Start +[0-9]+: / { show = 0 }
    /^[0-9]+% tests passed/ { show = 0; tail_part = 1 }
    show && shown++ < 250 { print }
    tail_part { print }
  ' "$1"
}

summary() {
  local rc=$? s line
  trap - EXIT
  [[ -n $current ]] && finish failed "stopped with exit status $rc"
  echo
  echo "== summary"
  for s in "${stages[@]}"; do
    if [[ -z ${result[$s]:-} ]]; then
      printf '   %-16s %-7s %8s  %s\n' "$s" skipped - "an earlier stage failed"
      continue
    fi
    line=$(printf '   %-16s %-7s %8s' "$s" "${result[$s]}" "$(duration "${seconds[$s]}")")
    echo "$line${note[$s]:+  ${note[$s]}}"
  done
  if ((rc == 0)); then echo "   all stages passed"; else echo "   FAILED (exit status $rc)"; fi
  exit "$rc"
}
trap summary EXIT
# Interrupted (Ctrl-C, a CI timeout): the summary must say so, with the signal's exit status,
# never "all stages passed" (the EXIT trap alone would see the status of the last command).
trap 'exit 130' INT
trap 'exit 143' TERM

# [SECTION] 0. Dependencies
begin "dependencies"
scripts/install-deps.sh
finish passed

begin "formatting" "every tracked C/C++/CUDA file against .clang-format"
scripts/check-format
finish passed

# [SECTION] 1. Sanitizer build and its unit and integration tests
begin "sanitizer build" "ASan+UBSan, build/asan"
scripts/build.sh asan -DINFERSCOPE_SANITIZE=ON -DINFERSCOPE_CUDA=OFF -DINFERSCOPE_VIEWER=OFF \
  -DINFERSCOPE_BENCHMARKS=OFF | progress
finish passed

begin "sanitizer tests" "unit and integration under ASan+UBSan"
log=$PWD/build/asan/ctest.log
if (cd build/asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest -L 'unit|integration' --output-on-failure -j2 --timeout 600 >"$log" 2>&1); then
  grep -E '^[0-9]+% tests passed' "$log" || true
  finish passed "$(ctest_counts "$log")"
else
  failed_test_output "$log"
  echo "sanitizer unit/integration tests failed; the whole log is $log"
  finish failed "$(ctest_counts "$log"); log $log"
  exit 1
fi

# [SECTION] 2. Fuzzing
begin "fuzzing" "libFuzzer, ${INFERSCOPE_FUZZ_SECONDS:-20} s per target; scripts/fuzz.sh 3600 for a campaign"
scripts/fuzz.sh "${INFERSCOPE_FUZZ_SECONDS:-20}"
finish passed "$(ls tests/fuzz/*_fuzz.cpp | wc -l) targets, no crash"

# [SECTION] 3. Release build and the whole suite
begin "release build" "build/release"
scripts/build.sh release | progress
finish passed

begin "full suite" "unit, integration, e2e, gpu"
log=$PWD/build/release/ctest.log
if (cd build/release && ctest --output-on-failure -j2 --timeout 600 2>&1 | tee "$log"); then
  finish passed "$(ctest_counts "$log")"
else
  echo "full suite failed; the whole log is $log"
  finish failed "$(ctest_counts "$log"); log $log"
  exit 1
fi
