#!/usr/bin/env bash
# One short GPU window (H100/H200; torch 2.11, triton 3.6, transformers 5.17, no network): install the
# package offline, run the CUDA tests, the kernel then the model benchmarks, the gate, the profiles (Lite-2B
# before 2B) and the decode probes, every result under OUTDIR, in under 7 minutes.
#
#   bash bench/gpu_check.sh --stamp              # on the development machine, before the copy: writes
#                                                # bench/gpu_check.sha (the commit the copy is of)
#   bash bench/gpu_check.sh OUTDIR               # every step, in order
#   bash bench/gpu_check.sh OUTDIR STEP...       # only these steps (a shorter rerun), in the order given
#   bash bench/gpu_check.sh --list               # the steps, their time limits and commands
#   bash bench/gpu_check.sh --dry-run OUTDIR [STEP...]   # what would run, without running it
#
# The SHA comes from GPU_CHECK_SHA, else git (when the copy has .git), else bench/gpu_check.sha; the first
# step writes it to OUTDIR/sha.txt and exports it for the profile rows (PIXELREFER_FAST_GIT_SHA).
# OUTDIR gets (no folders but profile/, tarred at the end):
#   steps.txt            every step's exit code and seconds, then the total (read this first)
#   sha.txt  info.txt    the commit; install output, versions, nvidia-smi, python -m pixelrefer_kernels.info
#   gpu_tests.log        pytest tests -m gpu (one autotune config per kernel: PIXELREFER_FAST_SKIP_AUTOTUNE=1)
#   bench-kernels.json   region tokenizer, infusion, attention benchmarks (-m gpu), before the model ones
#   bench-model.json     model benchmarks (-m gpu; peak memory counted after the warm-up)
#   bench-decode.json    decode ms/token fast vs hf, Lite-2B and 2B at batch 1 and 16 (last: cut first by the budget)
#   bench.log  gate.txt  the benchmark runs' output; python -m bench.gate on both JSON files (never fatal)
#   profile.log  profile.tar.gz   profiles of lite-2b, then 2b (json, csv, png)
#   decode_probes.json   ms per token: hf dynamic cache, hf static cache, fast (skipped with the reason
#                        when describe() has no decoding=)
#
# Each step has its own time limit (SIGINT first, so pytest writes what it has) and the whole run stays
# within GPU_CHECK_BUDGET_S (default 410 s). Exit code: 0 when every fatal step passed, else 1.
# Then, on the development machine: python -m bench.summarize --import OUTDIR.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
stamp_file="$root/bench/gpu_check.sha"

# name|limit seconds|fatal|log (relative to OUTDIR)|command (run from the repo root by bash -c)
STEPS=(
  "sha|10|1|sha.txt|write_sha"
  "install|45|1|info.txt|python3 -m pip install -q --no-deps --no-build-isolation --no-index -e ."
  "info|25|0|info.txt|show_info"
  "gpu-tests|75|1|gpu_tests.log|PIXELREFER_FAST_SKIP_AUTOTUNE=1 python3 -m pytest tests -m gpu -q -p no:cacheprovider -rfEs"
  "bench-kernels|60|1|bench.log|python3 -m pytest bench/bench_region.py bench/bench_infusion.py bench/bench_attention.py -m gpu -q -p no:cacheprovider -rfEs --benchmark-enable --benchmark-min-rounds=5 --benchmark-max-time=0.3 --benchmark-warmup=off --benchmark-json=\"\$OUT/bench-kernels.json\""
  "bench-model|60|1|bench.log|python3 -m pytest bench/bench_model.py -m gpu -q -p no:cacheprovider -rfEs --benchmark-enable --benchmark-min-rounds=3 --benchmark-max-time=0.5 --benchmark-warmup=off --benchmark-json=\"\$OUT/bench-model.json\""
  "gate|15|0|gate.txt|python3 -m bench.gate --json \"\$OUT/bench-kernels.json\" --machine cuda; python3 -m bench.gate --json \"\$OUT/bench-model.json\" --machine cuda"
  "profile-lite-2b|50|1|profile.log|python3 -m pixelrefer_fast.profiling.cli --preset lite-2b --device cuda --dtype bfloat16 --regions 1,16 --mask-num 32 --decode-tokens 8 --repeats 3 --warmup 1 --no-progress --yes \$PLOT_FLAG --out \"\$OUT/profile\""
  "profile-2b|50|1|profile.log|python3 -m pixelrefer_fast.profiling.cli --preset 2b --device cuda --dtype bfloat16 --regions 1,16 --mask-num 32 --decode-tokens 8 --repeats 3 --warmup 1 --no-progress --yes \$PLOT_FLAG --out \"\$OUT/profile\""
  "decode-probes|50|0|bench.log|python3 -m bench.decode_probe --preset lite-2b --device cuda --dtype bfloat16 --tokens 32 --repeats 3 --out \"\$OUT/decode_probes.json\""
  "bench-decode|60|0|bench.log|python3 -m pytest bench/bench_decode.py -m gpu -q -p no:cacheprovider -rfEs --benchmark-enable --benchmark-min-rounds=3 --benchmark-max-time=0.5 --benchmark-warmup=off --benchmark-json=\"\$OUT/bench-decode.json\""
)

step_field() { local IFS='|'; read -r -a f <<<"$1"; echo "${f[$2]}"; }
step_names() { for s in "${STEPS[@]}"; do step_field "$s" 0; done; }
find_step() { for s in "${STEPS[@]}"; do [ "$(step_field "$s" 0)" = "$1" ] && { echo "$s"; return 0; }; done; return 1; }

list_steps() {
  local total=0
  for s in "${STEPS[@]}"; do
    printf '%-16s %4ss  fatal=%s  -> %-16s %s\n' "$(step_field "$s" 0)" "$(step_field "$s" 1)" "$(step_field "$s" 2)" \
      "$(step_field "$s" 3)" "${s#*|*|*|*|}"
    total=$(( total + $(step_field "$s" 1) ))
  done
  echo "sum of step limits: ${total} s (budget ${GPU_CHECK_BUDGET_S:-410} s)"
}

case "${1:-}" in
  --list) list_steps; exit 0 ;;
  --stamp)
    git -C "$root" describe --always --dirty --abbrev=12 >"$stamp_file" && cat "$stamp_file"; exit $? ;;
  --dry-run) dry=1; shift ;;
  ""|-h|--help) sed -n '2,16p' "$0"; exit 2 ;;
  *) dry=0 ;;
esac
out=${1:?usage: bench/gpu_check.sh [--dry-run] OUTDIR [STEP...]}
shift
selected=("$@")
(( ${#selected[@]} )) || mapfile -t selected < <(step_names)
for name in "${selected[@]}"; do
  find_step "$name" >/dev/null || { echo "unknown step '$name'; steps: $(step_names | tr '\n' ' ')" >&2; exit 2; }
done

if (( dry )); then
  for name in "${selected[@]}"; do
    s=$(find_step "$name")
    echo "$name (limit $(step_field "$s" 1) s, fatal $(step_field "$s" 2), log $(step_field "$s" 3)): ${s#*|*|*|*|}"
  done
  exit 0
fi

mkdir -p "$out"
OUT=$(cd "$out" && pwd)
export OUT
cd "$root"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 PIXELREFER_FAST_KERNELS=auto
python3 -c "import matplotlib" >/dev/null 2>&1 && PLOT_FLAG="" || PLOT_FLAG="--no-plots"
export PLOT_FLAG
budget=${GPU_CHECK_BUDGET_S:-410}
start=$(date +%s)
status=0
: >>"$OUT/steps.txt"
echo "run at $(date -u +%FT%TZ): ${selected[*]}" >>"$OUT/steps.txt"

sha_now() {
  if [ -n "${GPU_CHECK_SHA:-}" ]; then echo "$GPU_CHECK_SHA"
  elif git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then git -C "$root" describe --always --dirty --abbrev=12
  elif [ -f "$stamp_file" ]; then cat "$stamp_file"
  else echo unknown; fi
}
PIXELREFER_FAST_GIT_SHA=$(sha_now)
export PIXELREFER_FAST_GIT_SHA
write_sha() { echo "$PIXELREFER_FAST_GIT_SHA"; }
show_info() {
  python3 -c "import torch, triton, transformers, numpy, setuptools; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__, 'setuptools', setuptools.__version__)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -m pixelrefer_kernels.info
}
export -f write_sha show_info

for name in "${selected[@]}"; do
  s=$(find_step "$name")
  limit=$(step_field "$s" 1); fatal=$(step_field "$s" 2); log="$OUT/$(step_field "$s" 3)"; command=${s#*|*|*|*|}
  left=$(( budget - ($(date +%s) - start) - 5 ))
  if (( left < 10 )); then
    echo "$name: skipped, budget spent" >>"$OUT/steps.txt"
    (( fatal )) && status=1
    continue
  fi
  (( limit > left )) && limit=$left
  begin=$(date +%s)
  echo "== $name: $command" >>"$log"
  timeout -s INT -k 15 "$limit" bash -c "$command" >>"$log" 2>&1
  rc=$?
  echo "$name: rc=$rc, $(( $(date +%s) - begin )) s (limit $limit s)" >>"$OUT/steps.txt"
  (( rc != 0 && fatal )) && status=1
done

if [ -d "$OUT/profile" ]; then
  tar czf "$OUT/profile.tar.gz" -C "$OUT" profile && rm -rf "$OUT/profile" || status=1
fi
echo "total: $(( $(date +%s) - start )) s, status $status" >>"$OUT/steps.txt"
cat "$OUT/steps.txt"
exit $status
