#!/usr/bin/env bash
# The README's main command: installs, builds (with a progress line), and runs the demo.
# Arguments go to scripts/run-demo.sh (--duration S, --out DIR, ...; see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== building (build/release)"
scripts/build.sh release | awk -v tty="$([[ -t 1 ]] && echo 1 || echo 0)" -f scripts/lib/ninja-progress
exec scripts/run-demo.sh "$@"
