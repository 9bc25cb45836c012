#!/usr/bin/env bash
# The GPU check, in one command, on a machine with an NVIDIA GPU, Python 3.12 with PyTorch
# at python3, and no internet:
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # from the repository root; about 5 minutes
#
# Before the GPU session, on a machine that reaches PyPI, fill .whl/ (git-ignored) with the
# wheels the GPU machine lacks: `PYTHON=.venv/bin/python bash benchmarks/gpu_wheels.sh`,
# and carry .whl/ along with the working tree. Then this script:
#   1. prints nvidia-smi and the torch and CUDA versions, and stops (exit 3) without CUDA;
#   2. installs .whl/*.whl into /tmp/site (the project itself runs from this source tree);
#   3. checks that every requirement of the service and its tests is met, and imports it;
#   4. runs the CUDA tests (pytest -m cuda, tests/test_cuda.py) and the API tests (CPU);
#   5. runs the throughput benchmark on cuda in fp32, short measurements;
#   6. measures diffusers VAEs served against in process (benchmarks/diffusers_gpu.py:
#      SD- and SDXL-shaped decode at 512² and 1024², fp32/fp16/bf16, tiled and untiled);
#   7. compares 1, 2, 4 and 8 worker processes (benchmarks/workers.py) on cuda;
#   8. runs the fp32 benchmark again with VAE_MAX_BATCH_SIZE=512: a batch limit sized
#      for a GPU rather than the CPU's 64 (fewer, larger forward passes);
#   9. runs the throughput benchmark in bf16.
# The load generator is wrk when gpu_wheels.sh carried it (.whl/bin/wrk), else httpx.
# A failed step is recorded and the next one runs all the same. OUTDIR (default
# gpu-check-out) gets gpu-check.md (the summary with every benchmark report),
# gpu-check.log (everything printed), bench-cuda-fp32.md, bench-cuda-fp32-batch512.md,
# bench-cuda-bf16.md, bench-diffusers-cuda.md and workers-cuda.md.
# Exit status: 0 when every step passed, 1 when one failed, 3 without torch or CUDA, 2 on
# misuse (no wheels to install, say).
#
# Settings (environment), for dry runs on a CPU and for tests:
#   PYTHON=python3                 the interpreter that has torch
#   GPU_CHECK_WHEELS=.whl          folder of wheels to install
#   GPU_CHECK_SKIP_INSTALL=1       install nothing: the packages are importable already
#   GPU_CHECK_DEVICE=cuda          cpu: a dry run of every step on the CPU (fp32 only)
#   GPU_CHECK_PRECISIONS           default "fp32 bf16" on cuda, "fp32" on cpu
#   GPU_CHECK_SECONDS=3            length of each benchmark measurement
#   GPU_CHECK_SOAK=2000            requests in the benchmark's memory soak (0: none)
#   GPU_CHECK_WORKERS=1,2,4,8      worker counts to compare (empty: leave the step out)
#   GPU_CHECK_BATCH=512            VAE_MAX_BATCH_SIZE of step 8 (empty: leave it out)
#   GPU_CHECK_DIFFUSERS=1          0: leave step 6 out (on cpu it runs tiny configs)
#   GPU_CHECK_BUDGET_S=460         each step's limit is cut to what is left of this
set -euo pipefail

if [ $# -gt 1 ]; then
  echo "usage: bash benchmarks/gpu_check.sh [OUTDIR]" >&2
  exit 2
fi
mkdir -p "${1:-gpu-check-out}"
OUTDIR=$(cd "${1:-gpu-check-out}" && pwd)
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/site}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then PRECISIONS=${GPU_CHECK_PRECISIONS:-fp32}; else
  PRECISIONS=${GPU_CHECK_PRECISIONS:-fp32 bf16}; fi
BENCH_SECONDS=${GPU_CHECK_SECONDS:-3}
BUDGET=${GPU_CHECK_BUDGET_S:-460}  # no step runs past it, so the whole check ends in 8 minutes
SOAK=${GPU_CHECK_SOAK:-2000}
WORKERS=${GPU_CHECK_WORKERS-1,2,4,8}
BATCH=${GPU_CHECK_BATCH-512}
DIFFUSERS=${GPU_CHECK_DIFFUSERS:-1}
SUMMARY=$OUTDIR/gpu-check.md
LOG=$OUTDIR/gpu-check.log
export PYTHONUNBUFFERED=1
ROWS=()
FAILED=0
GPU=none
TORCH=unknown

write_summary() {  # write_summary [WHY]: gpu-check.md from what has run so far
  {
    echo "# GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $(nproc) CPU cores."
    echo "GPU: $GPU. $TORCH. Device: $DEVICE; precisions: $PRECISIONS;" \
      "${BENCH_SECONDS} s a measurement, soak $SOAK requests."
    if [ -n "${1:-}" ]; then printf '\n**Stopped: %s**\n' "$1"; fi
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    if [ ${#ROWS[@]} -gt 0 ]; then printf '%s\n' "${ROWS[@]}"; fi
    echo
    echo "Total: ${SECONDS} s. Everything printed: gpu-check.log."
    grep -E '^=* *[0-9]+ (passed|failed|skipped|errors?|deselected)[ ,](.* )?in [0-9.]+s' "$LOG" 2>/dev/null \
      | sed 's/^=* */- pytest: /; s/ *=*$//' || true
    local report
    for report in $(cd "$OUTDIR" && ls -rt bench-*.md 2>/dev/null); do  # in the order run
      report=$OUTDIR/$report
      printf '\n## Benchmark: %s\n\n' "$(basename "$report" .md | sed 's/^bench-//; s/-/, /g')"
      sed '1,2{/^# /d;/^$/d}' "$report"
    done
    if [ -f "$OUTDIR/workers-$DEVICE.md" ]; then
      printf '\n## Worker processes: %s, fp32\n\n' "$DEVICE"
      cat "$OUTDIR/workers-$DEVICE.md"
    fi
  } >"$SUMMARY"
}

fail() {  # fail STATUS WHY: stop at once, with WHY in the summary
  echo "gpu_check.sh: $2" >&2
  write_summary "$2"
  exit "$1"
}

limited() {  # limited SECONDS COMMAND...: SIGINT past the limit, so Python cleans up
  if command -v timeout >/dev/null; then timeout -s INT -k 30 "$@"; else shift; "$@"; fi
}

step() {  # step NAME LIMIT_S COMMAND...: run, log, record; a failure does not stop the script
  local name=$1 limit=$2 started=$SECONDS rc=0 result=ok left=$((BUDGET - SECONDS))
  shift 2
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  printf '\n=== %s (at most %s s): %s\n' "$name" "$limit" "$*"
  if [ "$limit" -lt 15 ]; then
    rc=1 result="**skipped**: the $BUDGET s budget is spent"
  else
    limited "$limit" "$@" || rc=$?
  fi
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    result="**timed out** after $limit s"
  elif [ "$rc" -ne 0 ] && [ "$result" = ok ]; then
    result="**failed** (exit $rc)"
  fi
  if [ "$rc" -ne 0 ]; then FAILED=1; fi
  echo "=== $name: $result"
  ROWS+=("| $name | $result | $((SECONDS - started)) |")
  write_summary  # after every step: a run cut short still leaves one
}

environment() {
  echo "=== machine: $(nproc) CPU cores, $(uname -sr), $PYTHON = $(command -v "$PYTHON" || echo missing)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi || true
    GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
      2>/dev/null | head -n1 || echo unknown)
  else
    echo "nvidia-smi: not found"
  fi
  TORCH=$("$PYTHON" -c 'import sys, torch
print(f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}),"
      f" CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")') \
    || fail 3 "$PYTHON cannot import torch"
  echo "$TORCH"
}

require_cuda() {
  if [ "$DEVICE" = cpu ]; then
    echo "=== GPU_CHECK_DEVICE=cpu: a dry run on the CPU; the CUDA tests will skip"
    return
  fi
  "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' \
    || fail 3 "no CUDA device: torch sees none ($TORCH; GPU: $GPU). Run this on the GPU machine, or set GPU_CHECK_DEVICE=cpu for a dry run."
}

install_wheels() {
  if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = 1 ]; then
    echo "=== GPU_CHECK_SKIP_INSTALL=1: no wheels installed"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    return
  fi
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if [ ${#wheels[@]} -eq 0 ]; then
    fail 2 "no wheels in $WHEELS: run 'bash benchmarks/gpu_wheels.sh' where PyPI is reachable and carry $WHEELS, or set GPU_CHECK_SKIP_INSTALL=1"
  fi
  step "install ${#wheels[@]} wheels" 60 "$PYTHON" -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
  export PYTHONPATH=$SITE:$ROOT
  if [ -f "$WHEELS/bin/wrk" ]; then  # carried by gpu_wheels.sh; a copy may lose its x bit
    chmod +x "$WHEELS/bin/wrk" "$WHEELS/lib/wrk"
    # wrk -v exits 1 after its banner, so what it prints says whether it runs
    if "$WHEELS/bin/wrk" -v 2>&1 | grep -q '^wrk '; then export PATH=$(cd "$WHEELS/bin" && pwd):$PATH
    else echo "=== the carried wrk does not run: $("$WHEELS/bin/wrk" -v 2>&1 | head -n3)"; fi
  fi
  echo "=== load generator: $(command -v wrk >/dev/null && wrk -v 2>&1 | head -n1 || echo httpx)"
}

workers() {  # workers: benchmarks/workers.py's table, when GPU_CHECK_WORKERS names counts
  if [ -z "$WORKERS" ]; then return; fi
  step "worker processes $WORKERS, $DEVICE fp32" 150 bash -o pipefail -c '"$1" -m \
    benchmarks.workers --device "$2" --workers "$3" --seconds "$4" | tee "$5"' _ "$PYTHON" \
    "$DEVICE" "$WORKERS" "$BENCH_SECONDS" "$OUTDIR/workers-$DEVICE.md"
}

diffusers_rows() {  # the diffusers VAEs' table, unless GPU_CHECK_DIFFUSERS=0
  if [ "$DIFFUSERS" != 1 ]; then return; fi
  local quick=()
  if [ "$DEVICE" = cpu ]; then quick=(--quick --repeats 2); fi
  step "diffusers VAEs, $DEVICE" 200 "$PYTHON" -m benchmarks.diffusers_gpu --device "$DEVICE" \
    "${quick[@]}" --write "$OUTDIR/bench-diffusers-$DEVICE.md"
}

bench() {  # bench PRECISION [BATCH]: with BATCH, under VAE_MAX_BATCH_SIZE=BATCH
  local name=$1 batch=()
  if [ -n "${2:-}" ]; then name="$1-batch$2" batch=("VAE_MAX_BATCH_SIZE=$2"); fi
  step "benchmark, $DEVICE $1${2:+, VAE_MAX_BATCH_SIZE=$2}" 170 env "${batch[@]}" \
    "$PYTHON" -m benchmarks.bench --device "$DEVICE" --precision "$1" \
    --seconds "$BENCH_SECONDS" --soak "$SOAK" --peers '' --write "$OUTDIR/bench-$DEVICE-$name.md"
}

main() {
  environment
  require_cuda
  write_summary
  install_wheels
  step "requirements met" 30 "$PYTHON" -m benchmarks.gpu_wheels check
  step "imports" 60 "$PYTHON" -c 'import benchmarks.bench, vae_service.server.main; print("ok")'
  step "CUDA tests (pytest -m cuda)" 150 "$PYTHON" -m pytest -p no:cacheprovider -q \
    --timeout 120 -m cuda tests/test_cuda.py
  step "API tests (CPU: the wheels at work)" 60 "$PYTHON" -m pytest -p no:cacheprovider -q \
    --timeout 60 tests/test_api_inference.py
  for p in $PRECISIONS; do
    bench "$p"
    if [ "$p" = fp32 ]; then
      diffusers_rows
      workers
      if [ -n "$BATCH" ]; then bench fp32 "$BATCH"; fi
    fi
  done
  write_summary
  echo
  echo "=== done in $SECONDS s: $([ "$FAILED" = 0 ] && echo 'every step passed' || echo 'a step FAILED')"
  echo "=== wrote $SUMMARY, $LOG and the reports beside them:" $(cd "$OUTDIR" && ls bench-*.md workers-*.md 2>/dev/null)
  return "$FAILED"
}

: >"$LOG"
rm -f "$OUTDIR"/bench-*.md "$OUTDIR"/workers-*.md  # an earlier run's reports would pass for this run's
main 2>&1 | tee -a "$LOG"
