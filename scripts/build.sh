#!/usr/bin/env bash
# Configures and builds inferscope into build/<name> (default: build/release).
#   scripts/build.sh [name] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-release}
shift || true
jobs=${INFERSCOPE_JOBS:-$(nproc)}
cmake -S . -B "build/$name" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
ninja -C "build/$name" -j "$jobs"
