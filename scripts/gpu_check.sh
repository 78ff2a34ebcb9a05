#!/usr/bin/env bash
# The GPU check of issue 3, run on a machine with a CUDA GPU (the lent H100):
# builds the CUDA kernels, runs the CUDA tests and the whole suite, runs a
# workload of every CUDA op under compute-sanitizer memcheck and racecheck, and
# runs the GPU benchmark.
#
#   bash scripts/gpu_check.sh                  # every step: build test sanitize bench
#   bash scripts/gpu_check.sh build test       # some steps (in the order given)
#
# Steps: env, build, test (pytest -m cuda, then the whole suite), test-cuda,
# test-all, sanitize (memcheck, racecheck), memcheck, racecheck, bench.
# Each step prints a header "===== step =====" and a PASS/FAIL line; the script
# exits nonzero when any step failed. Logs, the benchmark JSON and plot go to
# $OUT when set (the device tool's output folder), else /tmp/atss-gpu-check/.
#
# Knobs: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0),
# BENCH_ARGS (extra arguments of benchmarks.bench_gpu, e.g. "--no-compile"),
# PYTEST_ARGS (extra pytest arguments), FORCE_REBUILD=1 (build even when the
# in-place extension is newer than every source).
#
# Within one 10-minute device call, do not ask for everything at once: a fresh
# machine needs the build (a few minutes) first. Suggested calls:
#   bash scripts/gpu_check.sh build test
#   bash scripts/gpu_check.sh build sanitize
#   bash scripts/gpu_check.sh build bench
# ("build" is skipped when the extension is already up to date.)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/atss-gpu-check}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}

STEPS=("$@")
if [ ${#STEPS[@]} -eq 0 ]; then STEPS=(env build test sanitize bench); fi

FAILED=()
PASSED=()
section() { echo; echo "===== $* ====="; }
result() {  # name status
  if [ "$2" -eq 0 ]; then PASSED+=("$1"); echo "----- $1: PASS"; else FAILED+=("$1"); echo "----- $1: FAIL (status $2)"; fi
}

step_env() {
  section "env"
  nvidia-smi || true
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
  nvcc --version 2>/dev/null | tail -2 || "$CUDA_HOME/bin/nvcc" --version | tail -2
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "compute-sanitizer not on PATH"
  result env 0
}

extension_current() {  # 0 when the in-place extension has CUDA kernels and is newer than every source
  [ "${FORCE_REBUILD:-0}" = 1 ] && return 1
  local so
  so=$(ls atss_ops/_C*.so 2>/dev/null | head -1)
  [ -n "$so" ] || return 1
  [ -z "$(find csrc setup.py -newer "$so" -type f 2>/dev/null | head -1)" ] || return 1
  "$PY" -c "import atss_ops, sys; sys.exit(0 if atss_ops.has_kernel('atss_assign', 'cuda') else 1)" 2>/dev/null
}

step_build() {
  section "build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
  if extension_current; then
    echo "atss_ops extension is up to date and has CUDA kernels: not rebuilt"
    result build 0
    return
  fi
  local start=$SECONDS
  "$PY" -m pip install --no-build-isolation --no-deps -v -e . > "$OUT_DIR/build.log" 2>&1
  local st=$?
  grep -E "atss_ops: building|error|warning" "$OUT_DIR/build.log" | grep -v "^ *$" | tail -40
  echo "build took $((SECONDS - start)) s (full log: build.log)"
  if [ $st -eq 0 ]; then
    "$PY" - <<'EOF'
import sys, atss_ops
ok = atss_ops.extension_available() and all(atss_ops.has_kernel(op, "cuda") for op in
         ("center_distance", "topk_per_level", "iou_statistics", "resolve_multi_gt", "atss_assign"))
print("CUDA kernels registered:", ok)
sys.exit(0 if ok else 1)
EOF
    st=$?
  else
    tail -60 "$OUT_DIR/build.log"
  fi
  result build $st
}

step_test_cuda() {
  section "test-cuda: pytest -m cuda"
  "$PY" -m pytest -m cuda -q -rfEs -p no:cacheprovider ${PYTEST_ARGS:-} tests 2>&1 | tee "$OUT_DIR/test_cuda.log" | tail -60
  result test-cuda "${PIPESTATUS[0]}"
}

step_test_all() {
  section "test-all: the whole suite"
  "$PY" -m pytest -q -rfE -p no:cacheprovider ${PYTEST_ARGS:-} tests 2>&1 | tee "$OUT_DIR/test_all.log" | tail -40
  result test-all "${PIPESTATUS[0]}"
}

sanitizer() {  # tool
  local tool=$1 cs
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  section "$tool: compute-sanitizer --tool $tool on scripts/sanitizer_workload.py"
  local start=$SECONDS
  # Without torch's caching allocator every tensor is its own cudaMalloc, so memcheck
  # sees an access past a tensor's end (inside a cached block it could not).
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool "$tool" --error-exitcode 1 --print-limit 50 \
    "$PY" scripts/sanitizer_workload.py > "$OUT_DIR/$tool.log" 2>&1
  local st=$?
  tail -25 "$OUT_DIR/$tool.log"
  echo "$tool took $((SECONDS - start)) s"
  result "$tool" $st
}

step_bench() {
  section "bench: python -m benchmarks.bench_gpu --out \$OUT"
  "$PY" -m benchmarks.bench_gpu --out "$OUT_DIR" ${BENCH_ARGS:-} 2>&1 | tee "$OUT_DIR/bench_gpu.log" | tail -70
  result bench "${PIPESTATUS[0]}"
}

for step in "${STEPS[@]}"; do
  case "$step" in
    env) step_env ;;
    build) step_build ;;
    test) step_test_cuda; step_test_all ;;
    test-cuda) step_test_cuda ;;
    test-all) step_test_all ;;
    sanitize) sanitizer memcheck; sanitizer racecheck ;;
    memcheck) sanitizer memcheck ;;
    racecheck) sanitizer racecheck ;;
    bench) step_bench ;;
    *) echo "unknown step '$step' (env build test test-cuda test-all sanitize memcheck racecheck bench)"; FAILED+=("$step") ;;
  esac
  # Later steps need the build: stop there if it failed.
  if [ "$step" = build ] && [ ${#FAILED[@]} -gt 0 ] && [ "${FAILED[-1]}" = build ]; then break; fi
done

section "summary"
echo "passed: ${PASSED[*]:-none}"
echo "failed: ${FAILED[*]:-none}"
echo "outputs in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
[ ${#FAILED[@]} -eq 0 ]
