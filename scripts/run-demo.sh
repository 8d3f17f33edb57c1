#!/usr/bin/env bash
# Runs the demo from an existing build (scripts/demo.sh builds first).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "inferscope demo: wire codec throughput"
build/release/bench/wire_codec_bench --benchmark_min_time=0.2
