#!/usr/bin/env bash
# One call on a GPU machine (H100/H200; torch 2.11, triton 3.6, no network): install the package, run the
# CUDA tests, the CUDA kernel and model benchmarks, the regression gate and the profile at the real 2B
# architectures (full and Lite, random bf16 weights), and write everything under OUTDIR.
#
#   bash bench/gpu_check.sh "$OUT"
#
# OUTDIR gets at most 8 files (the device tool returns 8), no folders:
#   steps.txt       every step's exit code and seconds, then the total (read this first)
#   info.txt        install output, nvidia-smi, python -m pixelrefer_kernels.info
#   gpu_tests.log   pytest tests -m gpu
#   bench.json      pytest-benchmark results of bench/ -m gpu (every pair beside its baseline)
#   bench.log       the benchmark run's output
#   gate.txt        python -m bench.gate --machine cuda on bench.json (recorded, never fails the script)
#   profile.log     the two profile runs' output
#   profile.tar.gz  profile/<slug>/<date>_<sha>_profile-{2b,lite-2b}.{json,csv,png}
#
# Each step runs under `timeout` (SIGINT first, so pytest still writes the results it has) and the whole
# script within GPU_CHECK_BUDGET_S seconds (default 560, under the device tool's 600 s per command);
# about 5-8 minutes on an H100. Exit code: 0 when every step but the gate passed, else 1.
# Then, on the development machine: python -m bench.summarize --import OUTDIR (copies the results to
# profiles/<gpu-slug>/ and regenerates profiles/SUMMARY.md).
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 PIXELREFER_FAST_KERNELS=auto
budget=${GPU_CHECK_BUDGET_S:-560}
start=$(date +%s)
status=0
: >"$out/steps.txt"

elapsed() { echo $(( $(date +%s) - start )); }

# step NAME TIMEOUT_S LOG FATAL COMMAND...: run COMMAND with its output appended to LOG, within
# TIMEOUT_S and what is left of the budget; record its exit code (124: timed out) in steps.txt.
step() {
  local name=$1 limit=$2 log=$3 fatal=$4
  shift 4
  local left=$(( budget - $(elapsed) - 10 ))
  if (( left < 15 )); then
    echo "$name: skipped, budget spent ($(elapsed) s)" >>"$out/steps.txt"
    (( fatal )) && status=1
    return
  fi
  (( limit > left )) && limit=$left
  local begin rc
  begin=$(date +%s)
  timeout -s INT -k 20 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "$name: rc=$rc, $(( $(date +%s) - begin )) s (limit $limit s)" >>"$out/steps.txt"
  (( rc != 0 && fatal )) && status=1
  return 0
}

py_has() { python3 -c "import $1" >/dev/null 2>&1; }
timeout_flag=()
py_has pytest_timeout && timeout_flag=(--timeout=120)
plot_flag=()
py_has matplotlib || plot_flag=(--no-plots)

info="$out/info.txt"
step install 120 "$info" 1 python3 -m pip install -q --no-deps --no-build-isolation -e .
if command -v nvidia-smi >/dev/null; then
  step nvidia-smi 30 "$info" 0 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
else
  echo "nvidia-smi: not found" >>"$info"
fi
step kernels-info 60 "$info" 1 python3 -m pixelrefer_kernels.info

# 1. CUDA tests: bf16, large shapes, Triton compiled for real (no interpreter).
step gpu-tests 150 "$out/gpu_tests.log" 1 \
  python3 -m pytest tests -m gpu -q -p no:cacheprovider -rfEs "${timeout_flag[@]}"

# 2. CUDA kernel and model benchmarks, every pair beside its baseline in the same run; then the gate.
step benchmarks 210 "$out/bench.log" 1 \
  python3 -m pytest bench -m gpu -q -p no:cacheprovider -rfEs "${timeout_flag[@]}" --benchmark-enable \
  --benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-warmup=off --benchmark-json="$out/bench.json"
step gate 30 "$out/gate.txt" 0 python3 -m bench.gate --json "$out/bench.json" --machine cuda

# 3. The profile at the real 2B architectures (random bf16 weights), full and Lite.
for preset in 2b lite-2b; do
  step "profile-$preset" 90 "$out/profile.log" 1 \
    python3 -m pixelrefer_fast.profiling.cli --preset "$preset" --device cuda --dtype bfloat16 \
    --regions 1,4,16 --mask-num 16,32,64 --decode-tokens 8 --repeats 3 --warmup 1 --no-progress \
    "${plot_flag[@]}" --out "$out/profile"
done
if [ -d "$out/profile" ]; then
  tar czf "$out/profile.tar.gz" -C "$out" profile && rm -rf "$out/profile" || status=1
else
  echo "profile: no output folder" >>"$out/steps.txt"
fi

echo "total: $(elapsed) s, status $status" >>"$out/steps.txt"
cat "$out/steps.txt"
exit $status
