#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a while.
#   scripts/fuzz.sh [seconds-per-target]   (CI: 25; a real campaign: 3600 or more)
# A crash leaves crash-* files in build/fuzz/findings/<target>/: copy each into
# tests/fuzz/corpus/<target>/ (it becomes a regression input replayed by ctest)
# and fix the decoder.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-25}
# Exit status (docs/cli.md): 2 for a bad argument, 1 when a build or a target fails.
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 && $# -le 1 ]] ||
  { echo "fuzz: usage: scripts/fuzz.sh [seconds-per-target > 0], got '$*'" >&2; exit 2; }
CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DINFERSCOPE_FUZZ=ON -DINFERSCOPE_CUDA=OFF -DINFERSCOPE_VIEWER=OFF -DINFERSCOPE_BENCHMARKS=OFF >/dev/null
targets=$(cd tests/fuzz && ls *_fuzz.cpp | sed 's/\.cpp$//')
# Progress lines, not one line per file (scripts/lib/ninja-progress).
ninja -C build/fuzz $targets | awk -v tty="$([[ -t 1 ]] && echo 1 || echo 0)" -f scripts/lib/ninja-progress
for t in $targets; do
  name=${t%_fuzz}
  work=build/fuzz/findings/$name
  rm -rf "$work" && mkdir -p "$work/corpus"
  cp tests/fuzz/corpus/$name/* "$work/corpus/"
  if ! (cd "$work" && "../../tests/fuzz/$t" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix=./ corpus >log.txt 2>&1); then
    tail -40 "$work/log.txt"
    echo "fuzz: $t found a crash (see $work)"
    exit 1
  fi
  echo "fuzz: $t $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$work/log.txt" | awk '{print $2}') runs in ${seconds}s, no crash"
done
