#!/usr/bin/env bash
# One call on a GPU machine (H100/H200; torch 2.11, triton 3.6, no network): install the package,
# run the CUDA tests, the kernel and model benchmarks and the profile at the real 2B architecture,
# and write everything under OUTDIR (at most 8 files, the device tool's limit), within 8 minutes.
#
#   bash bench/gpu_check.sh "$OUT"
#
# Then, on the development machine: python -m bench.summarize OUTDIR  (copies the results to
# profiles/<gpu-slug>/ and regenerates profiles/SUMMARY.md).
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PIXELREFER_FAST_KERNELS=auto
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
status=0

{
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 3
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -m pixelrefer_kernels.info
} >"$out/info.txt" 2>&1 || status=1
echo "[gpu_check] installed, $(elapsed) s"

# 1. CUDA tests: bf16, large shapes, Triton compiled for real (no interpreter).
timeout 150 python3 -m pytest tests -m gpu -q -p no:cacheprovider -x --timeout=120 \
  >"$out/gpu_tests.log" 2>&1 || status=1
echo "[gpu_check] gpu tests done, $(elapsed) s"

# 2. Kernel and model benchmarks, every pair beside its baseline in the same run.
timeout 200 python3 -m pytest bench -q -p no:cacheprovider --benchmark-enable \
  --benchmark-min-rounds=5 --benchmark-max-time=0.5 --benchmark-json="$out/bench.json" \
  >"$out/bench.log" 2>&1 || status=1
python3 -m bench.gate --json "$out/bench.json" --machine cuda >>"$out/bench.log" 2>&1 || status=1
echo "[gpu_check] benchmarks done, $(elapsed) s"

# 3. The profile at the real 2B architectures (random bf16 weights).
timeout 150 python3 -m pixelrefer_fast.profiling.cli --preset 2b,lite-2b --device cuda --dtype bfloat16 \
  --out "$out/profile" >"$out/profile.log" 2>&1 || status=1
(cd "$out" && tar czf profile.tar.gz profile && rm -rf profile) || status=1
echo "[gpu_check] profile done, $(elapsed) s, status $status"
exit $status
