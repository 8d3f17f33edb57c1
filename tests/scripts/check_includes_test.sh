#!/usr/bin/env bash
# scripts/check-includes on small made-up trees: a forbidden include (by the
# public path and by a relative path) fails with the file, line and parts named;
# the same tree without it passes. Then the real tree, which must pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
check="$root/scripts/check-includes"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

mkdir -p "$tmp/wire/include/inferscope/wire" "$tmp/collector/include/inferscope/collector" \
         "$tmp/viewer/model/src" "$tmp/analysis/src"
echo '#pragma once' >"$tmp/wire/include/inferscope/wire/records.hpp"
echo '#pragma once' >"$tmp/collector/include/inferscope/collector/layer_stats.hpp"
cat >"$tmp/viewer/model/src/stats.cpp" <<'CPP'
#include <vector>
#include "inferscope/wire/records.hpp"
#include "inferscope/collector/layer_stats.hpp"
CPP
cat >"$tmp/analysis/src/eplb.cpp" <<'CPP'
#include "../../collector/include/inferscope/collector/layer_stats.hpp"
CPP
# The engine core reaches the agent only through its telemetry folder.
mkdir -p "$tmp/agent/include/inferscope" "$tmp/reference_engine/src/serving" \
         "$tmp/reference_engine/src/telemetry"
echo '#pragma once' >"$tmp/agent/include/inferscope/agent.hpp"
echo '#include "inferscope/agent.hpp"' >"$tmp/reference_engine/src/serving/engine.cpp"
echo '#include "inferscope/agent.hpp"' >"$tmp/reference_engine/src/telemetry/telemetry.cpp"

set +e
out=$(python3 "$check" "$tmp" 2>&1)
rc=$?
set -e
[[ $rc -eq 1 ]] || fail "expected exit 1 on a forbidden include, got $rc: $out"
grep -q 'viewer/model/src/stats.cpp:3: viewer_model may not include collector' <<<"$out" ||
  fail "viewer -> collector not reported: $out"
grep -q 'analysis/src/eplb.cpp:1: analysis may not include collector' <<<"$out" ||
  fail "relative include not reported: $out"
grep -q 'reference_engine/src/serving/engine.cpp:1: engine may not include agent' <<<"$out" ||
  fail "engine core -> agent not reported: $out"
! grep -q 'src/telemetry/telemetry.cpp' <<<"$out" || fail "engine telemetry -> agent reported: $out"

sed -i '/collector/d' "$tmp/viewer/model/src/stats.cpp" "$tmp/analysis/src/eplb.cpp"
sed -i '/agent/d' "$tmp/reference_engine/src/serving/engine.cpp"
python3 "$check" "$tmp" >/dev/null || fail "clean made-up tree reported"

python3 "$check" "$root" || fail "the source tree crosses a boundary (above)"
echo "check_includes_test: ok"
