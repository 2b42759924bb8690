#!/usr/bin/env bash
# On the GPU machine, the 4-bit kernels alone: build gpu_tests and fp4_bench with
# VB_WITH_CUDA, run the Fp4 GPU tests, then the benchmark. Shorter than run.sh when only the
# kernels changed.
#
#   device run, carry [".debs"]:  bash scripts/gpu/fp4.sh   (VB_FP4_PROFILE=1: Nsight Compute
#   instead of the benchmark; VB_FP4_BENCH=variants,table,shapes: which benchmarks;
#   VB_FP4_SASS=1: the kernels' machine code, VB_FP4_SASS_MATCH: of the names matching a regex)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh
configure_gpu_build || exit 1
cmake --build build-gpu -j "$(nproc)" --target gpu_tests fp4_bench > "$out/build.log" 2>&1 \
  || { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
if [[ "${VB_FP4_SASS:-0}" == 1 ]]; then  # the kernels' machine code, for reading elsewhere
  cuobjdump -sass build-gpu/backends/cuda/CMakeFiles/backends_cuda.dir/fp4_kernels.cu.o \
    > "$out/fp4_kernels.sass" 2>&1 || echo "cuobjdump failed"
  if [[ -n "${VB_FP4_SASS_MATCH:-}" ]]; then  # only the functions whose name matches
    awk -v pattern="$VB_FP4_SASS_MATCH" '/Function : /{keep = $0 ~ pattern} keep' \
      "$out/fp4_kernels.sass" > "$out/fp4_match.sass" && rm "$out/fp4_kernels.sass"
  fi
fi
build-gpu/tests/gpu/gpu_tests --gtest_filter='Fp4*' 2>&1 | tee "$out/fp4-tests.log" \
  | grep -E "OK \]|FAILED|Failure|PASSED|GPU integer" | sed -n 1,40p
tests_rc=${PIPESTATUS[0]}
if [[ "${VB_FP4_PROFILE:-0}" == 1 ]]; then
  # Nsight Compute on one fused launch (28672 x 8192 NVFP4, batch 1: the first the quick
  # benchmark makes after its checks), clocks left as they are.
  # VB_FP4_PROFILE_RUNS: "STAGES ROW_TILES WARPS BATCH" configurations separated by commas.
  IFS=, read -ra runs <<< "${VB_FP4_PROFILE_RUNS:-2 2 8 1}"
  for run in "${runs[@]}"; do
    name=$(echo "$run" | tr ' ' _)
    # shellcheck disable=SC2086
    ncu --clock-control none --kernel-name regex:linear_kernel --launch-skip 3 --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis --section SchedulerStats --section SourceCounters \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,dram__bytes_read.sum,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,lts__t_sectors_srcunit_tex_op_read.sum,dram__sectors_read.sum" \
      build-gpu/bench/fp4_bench --one $run > "$out/ncu-$name.txt" 2>&1
    echo "=== ncu: stages, row_tiles, warps, batch = $run"
    grep -vE "^==PROF==" "$out/ncu-$name.txt" | grep -E "Duration|DRAM Throughput|Registers Per|Achieved Active|Issued Warp|Eligible Warps|Waves|Dynamic Shared" | head -12
    grep -E "stalled_.*ratio|dram__|inst_executed|bank_conflicts|lts__t_sectors" "$out/ncu-$name.txt" \
      | awk '$NF+0 > 0.05 || !/stalled/' | sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' | head -30
  done
  exit "$tests_rc"
fi
# VB_FP4_BENCH: which benchmarks, comma-separated: "variants" (the kernel-variant sweep),
# "table" (every format, the defaults, against a plain read of the same bytes), "shapes" (how
# fast each warp load shape reads the weight); default all three; empty: the tests only.
IFS=, read -ra benches <<< "${VB_FP4_BENCH-variants,table,shapes}"
for bench in "${benches[@]}"; do
  case "$bench" in
    variants) build-gpu/bench/fp4_bench --variants 2>&1 | tee "$out/fp4-variants.txt" ;;
    table) build-gpu/bench/fp4_bench 2>&1 | tee "$out/fp4-bench.txt" ;;
    shapes) build-gpu/bench/fp4_bench --shapes 2>&1 | tee "$out/fp4-shapes.txt" ;;
    *) echo "VB_FP4_BENCH: unknown benchmark '$bench' (variants, table, shapes)"; exit 2 ;;
  esac
done
exit "$tests_rc"
