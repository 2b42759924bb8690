#!/usr/bin/env bash
# On the GPU machine, the 4-bit kernels alone: build gpu_tests and fp4_bench with
# VB_WITH_CUDA, run the Fp4 GPU tests, then the benchmark. Shorter than run.sh when only the
# kernels changed.
#
#   device run, carry [".debs"]:  bash scripts/gpu/fp4.sh   (VB_FP4_PROFILE=1: Nsight Compute too)
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/vb-gpu-out}
mkdir -p "$out"
prefix=/tmp/vb-deps
mkdir -p "$prefix"
for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LIBRARY_PATH:-}"
export PATH="/opt/torch/.venv/bin:$PATH"
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DVB_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_PREFIX_PATH="$prefix/usr;$torch_prefix" \
  -DProtobuf_PROTOC_EXECUTABLE="$prefix/usr/bin/protoc" \
  -DProtobuf_INCLUDE_DIR="$prefix/usr/include" \
  -DProtobuf_LIBRARY="$prefix/usr/lib/x86_64-linux-gnu/libprotobuf.so" \
  > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target gpu_tests fp4_bench > "$out/build.log" 2>&1 \
  || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
build-gpu/tests/gpu/gpu_tests --gtest_filter='Fp4*' 2>&1 | tee "$out/fp4-tests.log" \
  | grep -E "OK \]|FAILED|Failure|PASSED|stages" | head -40
tests_rc=${PIPESTATUS[0]}
if [[ "${VB_FP4_PROFILE:-0}" == 1 ]]; then
  # Nsight Compute on one fused launch (28672 x 8192 NVFP4, batch 1: the first the quick
  # benchmark makes after its checks), clocks left as they are.
  ncu --clock-control none --kernel-name regex:fused_linear --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats \
    build-gpu/bench/fp4_bench --quick > "$out/ncu.txt" 2>&1
  grep -vE "^==PROF==" "$out/ncu.txt" | tail -150
  exit "$tests_rc"
fi
build-gpu/bench/fp4_bench 2>&1 | tee "$out/fp4-bench.txt"
exit "$tests_rc"
