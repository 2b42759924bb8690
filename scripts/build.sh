#!/usr/bin/env bash
# Installs what is missing, configures and builds everything (daemon, client, tests,
# benchmarks) into ./build. Set VB_SKIP_INSTALL=1 to skip the package step.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ "${VB_SKIP_INSTALL:-0}" == 1 ]] || ./scripts/install-deps.sh

# The CUDA-runtime parts need only nvcc (no GPU): use the toolkit's when PATH lacks it, so
# that a non-login shell (as CI's may be) still compiles them.
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

build_dir=${VB_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="${VB_BUILD_TYPE:-Release}" \
  -DVB_WARNINGS_AS_ERRORS=ON "$@"
cmake --build "$build_dir" -j "$(nproc)"
