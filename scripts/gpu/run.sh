#!/usr/bin/env bash
# On the GPU machine, in one call: unpack the carried Debian packages into a prefix, build
# everything with VB_WITH_CUDA against the machine's LibTorch, run the GPU-labelled tests
# (then the rest, for information), and the GPU benchmark. Logs go to $OUT when set.
#
#   device run, carry [".debs"]:  bash scripts/gpu/run.sh   (VB_GPU_BENCH=0: tests only)
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - started )) s] $*"; }

stamp "unpacking $(ls .debs/*.deb | wc -l) packages"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

stamp "configure"
configure_gpu_build || exit 1

stamp "build"
cmake --build build-gpu -j "$(nproc)" > "$out/build.log" 2>&1 \
  || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }

stamp "GPU tests"
(cd build-gpu && ctest -L gpu --output-on-failure > "$out/gpu-tests.log" 2>&1)
gpu_rc=$?
grep -E "tests passed|Failed|\*\*\*" "$out/gpu-tests.log" | head -20
# The figures the GPU tests print (errors against the CPU reference, devices, OOM answer).
build-gpu/tests/gpu/gpu_tests --gtest_brief=1 2>&1 | grep -E "^(GPU |[0-9]+x|out-of-memory)"

stamp "unit and integration tests against the CUDA build"
(cd build-gpu && ctest -L "unit|integration" -E interop -j 8 --output-on-failure \
  > "$out/other-tests.log" 2>&1)
other_rc=$?
grep -E "tests passed|\*\*\*Failed|Failure$|^Expected|^  Actual|^Value of" "$out/other-tests.log" | head -40

if [[ "${VB_GPU_BENCH:-1}" == 0 ]]; then
  stamp "done (benchmarks skipped: VB_GPU_BENCH=0)"
  [[ $gpu_rc == 0 && $other_rc == 0 ]]
  exit
fi

stamp "vbctl doctor"
build-gpu/client/vbctl doctor 2>&1 | tee "$out/doctor.txt"

stamp "GPU benchmark"
build-gpu/bench/gpu_bench 2>&1 | tee "$out/gpu-bench.txt"

stamp "tier store benchmark (SSD files under /var/tmp)"
mkdir -p /var/tmp/vb-tier-bench
build-gpu/bench/tier_bench --dir /var/tmp/vb-tier-bench 2>&1 | tee "$out/tier-bench.txt"

stamp "4-bit weight benchmark"
build-gpu/bench/fp4_bench 2>&1 | tee "$out/fp4-bench.txt"
stamp "done"
[[ $gpu_rc == 0 && $other_rc == 0 ]]
