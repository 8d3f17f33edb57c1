#!/usr/bin/env bash
# scripts/test.sh's own output, checked against stub stages: the real
# install/build/ctest/fuzz steps are replaced by small scripts in a scratch
# copy, so this runs in a second and can fail on each promise of the script:
#   - build progress lines with elapsed time;
#   - a failing test stage prints the failing test's own output and the log path;
#   - the last lines are a per-stage summary, and the exit status is non-zero on failure.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; echo "--- output ---"; cat "$work/out"; exit 1; }

mkdir -p "$work/scripts/lib" "$work/build/asan" "$work/build/release" "$work/tests/fuzz" "$work/bin"
cp "$src/scripts/test.sh" "$work/scripts/"
cp "$src/scripts/lib/ninja-progress" "$work/scripts/lib/"
touch "$work/tests/fuzz/a_fuzz.cpp" "$work/tests/fuzz/b_fuzz.cpp"
printf '#!/bin/sh\nexit 0\n' >"$work/scripts/install-deps.sh"
printf '#!/bin/sh\necho fuzz ok\n' >"$work/scripts/fuzz.sh"
# FORMAT_FAILS makes the formatting check fail as scripts/check-format does.
printf '#!/bin/sh\n[ -n "$FORMAT_FAILS" ] && { echo "check-format: agent/src/x.cpp"; exit 1; }\necho "check-format: 3 files formatted"\n' >"$work/scripts/check-format"
cat >"$work/scripts/build.sh" <<'STUB'
#!/bin/sh
# ninja's own lines; BUILD_FAILS makes the compile fail as ninja shows it.
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do echo "[$i/20] Building CXX object x$i.o"; done
[ -n "$BUILD_FAILS" ] && { echo "FAILED: x21.o"; echo "x21.cpp:3:1: error: expected ';'"; exit 1; }
# BUILD_MARKER: says the build is running, then lasts until the file is gone.
[ -n "$BUILD_MARKER" ] && { touch "$BUILD_MARKER"; while [ -e "$BUILD_MARKER" ]; do sleep 0.05; done; }
exit 0
STUB
cat >"$work/bin/ctest" <<'STUB'
#!/bin/sh
# A ctest run of three tests; CTEST_FAILS makes the second fail with its own output.
echo "Test project $PWD"
echo "    Start 1: ok"
echo "    Start 2: bad"
echo "1/3 Test #1: ok ...............................   Passed    0.02 sec"
echo "    Start 3: skip"
if [ -n "$CTEST_FAILS" ]; then
  echo "2/3 Test #2: bad ..............................***Failed    0.02 sec"
  echo "[ RUN      ] Bad.Thing"
  echo "bad_test.cpp:42: Failure: Expected equality of these values: 1 vs 2"
  i=0; while [ $i -lt 80 ]; do echo "noise line $i"; i=$((i + 1)); done
  echo "3/3 Test #3: skip .............................***Skipped   0.01 sec"
  echo; echo "33% tests passed, 1 tests failed out of 3"; echo
  echo "The following tests FAILED:"; echo "	  2 - bad (Failed)"
  exit 8
fi
echo "2/3 Test #2: bad ..............................   Passed    0.02 sec"
echo "3/3 Test #3: skip .............................***Skipped   0.01 sec"
echo; echo "100% tests passed, 0 tests failed out of 3"
STUB
chmod +x "$work"/scripts/*.sh "$work/scripts/check-format" "$work/bin/ctest"
run() { (cd "$work" && env PATH="$work/bin:$PATH" "$@" scripts/test.sh) >"$work/out" 2>&1; }

# 1. Everything passes.
rc=0; run env || rc=$?
((rc == 0)) || fail "exit status $rc with every stage passing"
grep -q '^  build: 10/20 (50%), [0-9]m[0-9][0-9]s$' "$work/out" || fail "no build progress line with elapsed time"
(($(grep -c '^  build: ' "$work/out") <= 22)) || fail "one progress line per file instead of a compact counter"
tail -9 "$work/out" | head -1 | grep -q '^== summary$' || fail "the summary is not the last lines"
for s in dependencies formatting "sanitizer build" "sanitizer tests" fuzzing "release build" "full suite"; do
  tail -8 "$work/out" | grep -qE "^   $s +passed +[0-9]m[0-9][0-9]s" || fail "summary line for '$s'"
done
tail -8 "$work/out" | grep -q 'sanitizer tests .*2 passed, 0 failed, 1 skipped of 3' ||
  fail "sanitizer stage counts are not 2 passed, 0 failed, 1 skipped of 3"
tail -1 "$work/out" | grep -q 'all stages passed' || fail "last line"

# 2. A sanitizer test fails: its own output and the log path, then the summary.
rc=0; run env CTEST_FAILS=1 || rc=$?
((rc != 0)) || fail "exit status 0 with a failing sanitizer test"
grep -q 'bad_test.cpp:42: Failure' "$work/out" || fail "the failing test's assertion is not printed"
grep -q "the whole log is $work/build/asan/ctest.log" "$work/out" || fail "the log path is not named"
tail -8 "$work/out" | grep -qE '^   sanitizer tests +failed .*1 failed' || fail "summary does not mark the sanitizer tests failed"
tail -8 "$work/out" | grep -qE '^   full suite +skipped' || fail "later stages are not marked skipped"
tail -1 "$work/out" | grep -q 'FAILED' || fail "last line does not say FAILED"

# 3. A build fails: the compiler's error is shown, the stage is marked failed.
rc=0; run env BUILD_FAILS=1 || rc=$?
((rc != 0)) || fail "exit status 0 with a failing build"
grep -q "x21.cpp:3:1: error: expected ';'" "$work/out" || fail "the compile error is not shown"
tail -8 "$work/out" | grep -qE '^   sanitizer build +failed' || fail "summary does not mark the build failed"

# 4. The tree is not formatted: the file is named, formatting is marked failed, the rest skipped.
rc=0; run env FORMAT_FAILS=1 || rc=$?
((rc != 0)) || fail "exit status 0 with an unformatted tree"
grep -q 'check-format: agent/src/x.cpp' "$work/out" || fail "the unformatted file is not named"
tail -8 "$work/out" | grep -qE '^   formatting +failed' || fail "summary does not mark formatting failed"
tail -8 "$work/out" | grep -qE '^   sanitizer build +skipped' || fail "the build ran after formatting failed"
# 5. Interrupted during the build (a CI timeout's TERM): the summary must not say "all stages
# passed" and the exit status is the signal's.
marker="$work/building"
(cd "$work" && exec env PATH="$work/bin:$PATH" BUILD_MARKER="$marker" scripts/test.sh) >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 2000); do [ -e "$marker" ] && break; sleep 0.05; done
[ -e "$marker" ] || fail "the build stage never started"
kill -TERM "$pid"
rm -f "$marker"  # the stub build ends; bash then runs the TERM trap
rc=0; wait "$pid" || rc=$?
((rc == 143)) || fail "exit status $rc after TERM, not 143"
tail -8 "$work/out" | grep -qE '^   sanitizer build +failed .*exit status 143' ||
  fail "summary does not mark the interrupted build failed"
tail -1 "$work/out" | grep -q 'FAILED (exit status 143)' || fail "last line after TERM"
echo "test.sh: progress, failure output and summary as promised"
