#!/usr/bin/env bash
# Installs every Debian package inferscope needs. Idempotent and quiet when
# everything is already there; nothing is downloaded from anywhere but apt.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  # scripts/check-format (a test stage) checks the tree against .clang-format
  clang-format
  prometheus-cpp-dev libimgui-dev libglfw3-dev libgl-dev
  libzstd-dev zlib1g-dev libasio-dev nlohmann-json3-dev libcli11-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # the Perfetto export: protozero writes it; protoc + libprotobuf decode it in the tests
  libprotozero-dev protobuf-compiler libprotobuf-dev
  prometheus prometheus-alertmanager
  xvfb xauth imagemagick x11-utils curl procps python3 fonts-dejavu-core
  # the Python package: its tests use numpy; pip + setuptools + wheel install it offline
  python3-numpy python3-pip python3-setuptools python3-wheel
  # inferscope.torch is tested on CPU with Debian's torch (tests/python/torch_test.py)
  python3-torch
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's prometheus package starts a system service on :9090; the demo and
# tests run their own on other ports, so leave the system one alone.
echo "install-deps: done"
