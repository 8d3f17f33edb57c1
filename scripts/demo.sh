#!/usr/bin/env bash
# The README's main command: installs, builds, and runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release >/dev/null
exec scripts/run-demo.sh "$@"
