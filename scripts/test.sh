#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, and runs every test.
#   1. a sanitizer build (ASan + UBSan) of the unit and integration tests (tests that
#      cannot run meaningfully under ASan skip themselves there: docs/reliability.md);
#   2. a short libFuzzer run of every parser of untrusted bytes;
#   3. the release build and the whole ctest suite (unit, integration, e2e; gpu
#      tests report themselves skipped where no GPU is present).
# The last line printed is ctest's summary of the full suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== sanitizer build (ASan+UBSan), unit and integration tests"
scripts/build.sh asan -DINFERSCOPE_SANITIZE=ON -DINFERSCOPE_CUDA=OFF -DINFERSCOPE_VIEWER=OFF \
  -DINFERSCOPE_BENCHMARKS=OFF >/dev/null
start=$(date +%s)
(cd build/asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest -L 'unit|integration' --output-on-failure -j2 --timeout 600 >ctest.log 2>&1) ||
  { tail -60 build/asan/ctest.log; echo "sanitizer unit/integration tests failed"; exit 1; }
echo "sanitizer tests took $(( $(date +%s) - start )) s"
tail -3 build/asan/ctest.log

echo "== fuzzing (libFuzzer, short run; scripts/fuzz.sh 3600 for a campaign)"
scripts/fuzz.sh "${INFERSCOPE_FUZZ_SECONDS:-20}"

echo "== release build, full suite"
scripts/build.sh release >/dev/null
cd build/release
ctest --output-on-failure -j2 --timeout 600
