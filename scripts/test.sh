#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, and runs every test (unit,
# integration against real vbd processes on loopback ports, Python interop, bench smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
cd "${VB_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" "$@"
