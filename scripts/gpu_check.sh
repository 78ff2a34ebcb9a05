#!/usr/bin/env bash
# The GPU check, in one call, on a machine with a CUDA GPU: installs the wheel
# built elsewhere (dist/atss_ops-*-abi3-*.whl, carried by the device tool; or
# WHEEL=path) or, without one, builds the CUDA kernels from source (setup.py, which
# needs CMake and Ninja there: pip's cmake and ninja, or the system's); runs the CUDA
# tests of the op test files, checks that errors raised
# by the kernels' host code reach Python, runs the sanitizer workload (every
# CUDA op and path, a capped grid included) under compute-sanitizer memcheck,
# racecheck and synccheck, runs the GPU benchmark and trains the bundled
# detector's tiny preset for some steps. Made to finish within 9 minutes on a
# fresh machine (about 1 minute of it the build).
#
#   bash scripts/gpu_check.sh                # every default step
#   bash scripts/gpu_check.sh build test     # some steps, in the order given
#   bash scripts/gpu_check.sh --dry-run      # on a machine without a GPU: every step's
#                                            # plumbing, with the CPU standing in
#
# Steps: env build test cuda12 errors memcheck racecheck synccheck bench tal detector monai
# (default, in that order); also test-all (the whole suite). cuda12 runs the CUDA tests
# again with the wheel's _C_cuda12 library (the CUDA 12 build, static CUDA 12 runtime)
# chosen instead of _C_cuda13 (ATSS_OPS_FAKE_DRIVER_VERSION=12080 makes import take it,
# as under an R570 driver), and then under a CUDA 12 build of torch (torch 2.10.0's
# default, +cu128) when one is at hand: CU12_PYTHON names an interpreter that has it;
# otherwise the step tries to install one into a venv within its time, and says so when
# it cannot (the GPU machine has had no package registry). detector trains
# atss_detector's tiny preset for 30 steps on CUDA (scripts/detector_gpu_step.py:
# finite losses, the first batch's assignment equal to the CPU kernel's bit for
# bit, the time of a step and the share of it spent in atss_assign). tal times the
# TAL kernel against the dense reference (and Ultralytics' assigner where it imports) on
# benchmarks/bench_tal.py's cases, its bits checked against the CPU kernel. monai times atss_assign
# against MONAI's ATSSMatcher on the 3-D LUNA16 case (benchmarks/bench_monai.py)
# when MONAI imports: the GPU machine has no package registry, so
# `make gpu-extra` copies the venv's MONAI (pure Python) into .gpu-extra/, a
# folder this script puts on PYTHONPATH and the device tool can carry. Each step prints a header
# "===== step =====", runs under its own timeout and the remaining time budget,
# and ends with a PASS / FAIL / TIMEOUT / SKIPPED line; one summary closes the
# run, with the benchmark table. Exit status 0 when no step failed. Logs (build,
# test, errors, sanitizers, detector), the benchmark JSON, log and plot (8 files) go to
# $OUT when set (the device tool's output folder), else /tmp/atss-gpu-check/.
#
# Knobs: PYTHON (default python3), WHEEL (the wheel to install; default the newest
# dist/atss_ops-*-abi3-*.whl; FORCE_REBUILD=1 builds from source instead),
# TORCH_CUDA_ARCH_LIST (default 9.0, for a source build),
# BUDGET_S (default 520: the whole run's time budget), BENCH_ARGS (extra
# arguments of benchmarks.bench_gpu; the default run skips torch.compile),
# PYTEST_ARGS, FORCE_REBUILD=1, CAPPED_BLOCKS (default 4: the grid cap of the
# capped sanitizer run).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
STEPS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) STEPS+=("$arg") ;;
  esac
done
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env build test cuda12 errors memcheck racecheck synccheck bench tal detector monai)

PY=${PYTHON:-python3}
OUT_DIR=${OUT:-/tmp/atss-gpu-check}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
WHEEL=${WHEEL:-$(ls -t dist/atss_ops-*-abi3-*.whl 2>/dev/null | head -1)}
[ "${FORCE_REBUILD:-0}" = 1 ] && WHEEL=""
# The installed wheel comes before the source tree (whose atss_ops has no compiled library there).
WHEEL_DIR=/tmp/atss-gpu-check-wheel
export PYTHONPATH="${WHEEL:+$WHEEL_DIR:}$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"  # the sanitizer workload imports tests/cases.py
# With a wheel, nothing may put the source tree before it: no current directory on
# sys.path (Python >= 3.11), and pytest without pyproject's pythonpath "." entry.
PYTEST_PATH_ARGS=""
if [ -n "$WHEEL" ]; then
  export PYTHONSAFEPATH=1
  PYTEST_PATH_ARGS="-o pythonpath=tests"
fi
[ -d .gpu-extra ] && export PYTHONPATH="$PYTHONPATH:$PWD/.gpu-extra"  # MONAI, carried (make gpu-extra)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}
BUDGET_S=${BUDGET_S:-520}
CAPPED_BLOCKS=${CAPPED_BLOCKS:-4}
START=$SECONDS
declare -a SUMMARY=()
FAILED=0

remaining() { echo $((BUDGET_S - (SECONDS - START))); }

# run_step NAME MAX_SECONDS COMMAND...: under min(MAX_SECONDS, time left).
run_step() {
  local name=$1 max=$2
  shift 2
  local left
  left=$(remaining)
  echo
  echo "===== $name ====="
  if [ "$left" -lt 20 ]; then
    echo "----- $name: SKIPPED (time budget spent)"
    SUMMARY+=("$(printf '%-10s SKIPPED  (time budget spent)' "$name")")
    return
  fi
  local limit=$((max < left ? max : left))
  local t0=$SECONDS
  # A step is a function of this script: run it in a child bash (exported) under timeout.
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@"
  local st=$?
  local took=$((SECONDS - t0))
  local verdict=PASS
  if [ $st -eq 124 ] || [ $st -eq 137 ]; then
    verdict="TIMEOUT"
  elif [ $st -ne 0 ]; then
    verdict="FAIL"
  fi
  [ "$verdict" != PASS ] && FAILED=1
  echo "----- $name: $verdict (status $st, ${took} s of at most ${limit} s)"
  SUMMARY+=("$(printf '%-10s %-8s %4d s' "$name" "$verdict" "$took")")
}

step_env() {
  nvidia-smi || true
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
  "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" --version 2>/dev/null | tail -2
  command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || echo "compute-sanitizer not found"
  true
}

extension_current() {  # the in-place extension has CUDA kernels and is newer than every source
  [ "${FORCE_REBUILD:-0}" = 1 ] && return 1
  local so
  so=$(ls atss_ops/_C*.so 2>/dev/null | head -1)
  [ -n "$so" ] || return 1
  [ -z "$(find csrc setup.py -newer "$so" -type f 2>/dev/null | head -1)" ] || return 1
  "$PY" -c "import atss_ops, sys; sys.exit(0 if atss_ops.has_kernel('atss_assign', 'cuda') else 1)" 2>/dev/null
}

step_build() {
  if [ -n "$WHEEL" ]; then
    echo "installing the wheel $WHEEL (no build)"
    rm -rf "$WHEEL_DIR"
    "$PY" -m pip install -q --no-deps --no-index --target "$WHEEL_DIR" "$WHEEL" > "$OUT_DIR/build.log" 2>&1 ||
      { tail -20 "$OUT_DIR/build.log"; return 1; }
  elif extension_current; then
    echo "atss_ops extension is up to date and has CUDA kernels: not rebuilt"
  else
    FORCE_CUDA=1 "$PY" setup.py build_ext --inplace > "$OUT_DIR/build.log" 2>&1
    local st=$?
    grep -E "atss_ops: building|error" "$OUT_DIR/build.log" | tail -30
    if [ $st -ne 0 ]; then
      tail -40 "$OUT_DIR/build.log"
      return $st
    fi
  fi
  "$PY" -m atss_ops
  "$PY" - <<'EOF'
import sys, atss_ops
from atss_ops import _extension
ok = atss_ops.extension_available() and all(atss_ops.has_kernel(op, "cuda") for op in _extension.ALL_OPS)
print("atss_ops", atss_ops.__version__, "from", atss_ops.__file__)
print("CUDA kernels registered:", ok, _extension.EXTENSION_ERROR or _extension.CUDA_ERROR or "")
sys.exit(0 if ok else 1)
EOF
}

# The CUDA 12 library: chosen by a faked R570 driver under this torch, then (if one can
# be had) under a CUDA 12 build of torch.
step_cuda12() {
  local marker=cuda
  [ $DRY_RUN = 1 ] && marker="not cuda and not emu and not slow"
  if ! "$PY" -c "import sys; from atss_ops import _extension as e; sys.exit(0 if 12 in e.cuda_libraries() else 1)"; then
    echo "this build has no _C_cuda12 library (make wheel builds it): nothing to check"
    return 0
  fi
  local st=0
  ATSS_OPS_FAKE_DRIVER_VERSION=12080 "$PY" -m atss_ops | grep -E "^torch|_C_cuda|atss_assign"
  ATSS_OPS_FAKE_DRIVER_VERSION=12080 "$PY" -c "
import sys, os, atss_ops
from atss_ops import _extension as e
print('library serving CUDA tensors:', e.CUDA_LIBRARY, e.CUDA_ERROR or '')
sys.exit(0 if os.path.basename(e.CUDA_LIBRARY or '').startswith('_C_cuda12') else 1)" || st=1
  # shellcheck disable=SC2086
  ATSS_OPS_FAKE_DRIVER_VERSION=12080 "$PY" -m pytest -q -rfE -p no:cacheprovider $PYTEST_PATH_ARGS -m "$marker" \
    tests/test_cuda.py tests/test_equivalence.py > "$OUT_DIR/test_cuda12.log" 2>&1 || st=1
  grep -E "^(FAILED|ERROR)|passed|failed|error" "$OUT_DIR/test_cuda12.log" | tail -10
  local cu12py=${CU12_PYTHON:-}
  if [ -z "$cu12py" ] && [ $DRY_RUN = 0 ]; then
    if timeout 20 "$PY" -m pip index versions torch > /dev/null 2>&1; then
      local minimum  # pyproject.toml's torch>= (X.Y.0 from PyPI: a CUDA 12 build for 2.10)
      minimum=$("$PY" -c "import sys; sys.path.insert(0, '.'); import build_config; print(build_config.torch_target())")
      echo "installing torch $minimum.0 (PyPI's default build) into /tmp/atss-cu12-venv"
      "$PY" -m venv /tmp/atss-cu12-venv &&
        timeout 200 /tmp/atss-cu12-venv/bin/pip install -q "torch==$minimum.0" pytest hypothesis expecttest numpy \
          > "$OUT_DIR/cu12_torch.log" 2>&1 && cu12py=/tmp/atss-cu12-venv/bin/python
    fi
  fi
  if [ -z "$cu12py" ]; then
    echo "no CUDA 12 build of torch here (no CU12_PYTHON, and no package registry answered, or the install ran"
    echo "out of time): the kernels under a cu12x torch stay unverified on this machine"
    return $st
  fi
  "$cu12py" -m atss_ops | grep -E "^torch|_C_cuda|atss_assign"
  # shellcheck disable=SC2086
  "$cu12py" -m pytest -q -rfE -p no:cacheprovider $PYTEST_PATH_ARGS -m "$marker" tests/test_cuda.py \
    > "$OUT_DIR/test_cu12_torch.log" 2>&1 || st=1
  grep -E "^(FAILED|ERROR)|passed|failed|error" "$OUT_DIR/test_cu12_torch.log" | tail -10
  return $st
}

OP_TESTS="tests/test_cuda.py tests/test_tal_cuda.py tests/test_equivalence.py tests/test_errors.py tests/test_properties.py tests/test_determinism.py tests/test_opcheck_compile.py tests/test_ignore_mask.py"

pytest_parallel_args() {  # -n 8 where pytest-xdist is installed
  "$PY" -c "import xdist" 2>/dev/null && echo "-n 8" || true
}

step_test() {
  local marker=cuda extra=""
  [ $DRY_RUN = 1 ] && marker="not cuda and not emu and not slow" && extra="-x"
  # shellcheck disable=SC2086
  "$PY" -c "import atss_ops; print('testing atss_ops from', atss_ops.__file__)"
  "$PY" -m pytest -q -rfE -p no:cacheprovider $PYTEST_PATH_ARGS -m "$marker" $extra $(pytest_parallel_args) \
    ${PYTEST_ARGS:-} $OP_TESTS > "$OUT_DIR/test.log" 2>&1
  local st=$?
  grep -E "^(FAILED|ERROR)|passed|failed|error" "$OUT_DIR/test.log" | tail -30
  return $st
}

step_test_all() {
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -rfE -p no:cacheprovider $PYTEST_PATH_ARGS $(pytest_parallel_args) ${PYTEST_ARGS:-} tests \
    > "$OUT_DIR/test_all.log" 2>&1
  local st=$?
  grep -E "^(FAILED|ERROR)|passed|failed|error" "$OUT_DIR/test_all.log" | tail -30
  return $st
}

# Errors raised by the kernels' host code (value checks of the CPU kernels, a
# bad launch knob of the CUDA kernels) must reach Python as ValueError, in a child process
# each (a crash must not take the check down); on a crash, a native backtrace.
step_errors() {
  local device=cuda
  [ $DRY_RUN = 1 ] && device=cpu
  local st=0
  local probes=(
    "cpu_value_check|torch.ops.atss_ops.center_distance(torch.tensor([[0., 0, 1, 1]]), torch.tensor([[[0., 0, float('nan'), 1]]]))"
    "cpu_fused_value_check|torch.ops.atss_ops.atss_assign(torch.tensor([[0., 0, 1, 1]]), [1], torch.tensor([[[5., 5, 1, 1]]]))"
    "device_bad_knob|__import__('os').environ.update(ATSS_MAX_BLOCKS='many'); torch.ops.atss_ops.atss_assign(torch.tensor([[0., 0, 1, 1]], device='$device'), [1], torch.tensor([[[0., 0, 2, 2]]], device='$device'))"
  )
  for probe in "${probes[@]}"; do
    local name=${probe%%|*} expr=${probe#*|}
    local code="import torch, atss_ops
try:
    $expr
    print('$name: no error raised'); raise SystemExit(1)
except (ValueError, RuntimeError) as e:  # raw ops: RuntimeError on torch 2.15 (README, Errors)
    from atss_ops._extension import input_error
    ok = isinstance(e, ValueError) or input_error(e) is not None
    print('$name:', type(e).__name__ + ':', e)
    raise SystemExit(0 if ok else 1)"
    [ $DRY_RUN = 1 ] && [ "$name" = device_bad_knob ] && { echo "$name: skipped in a dry run (the CPU kernels read no launch knob)"; continue; }
    local log
    log=$(mktemp)
    "$PY" -X faulthandler -c "$code" > "$log" 2>&1
    local rc=$?
    { echo "== $name"; cat "$log"; } >> "$OUT_DIR/errors.log"
    grep -v "^W1" "$log" | tail -3
    rm -f "$log"
    if [ $rc -ne 0 ]; then
      st=1
      echo "$name: the process exited with status $rc"
      local gdb
      gdb=$(command -v cuda-gdb || command -v gdb || true)
      if [ -n "$gdb" ] && [ $rc -ge 128 ]; then  # killed by a signal
        echo "$name: native backtrace ($gdb):"
        timeout 60 "$gdb" -batch -ex run -ex bt -ex quit --args "$PY" -c "$code" 2>&1 | grep -E "^#|signal|SIG" |
          head -40 | tee -a "$OUT_DIR/errors.log"
      fi
    fi
  done
  return $st
}

sanitizer() {  # tool [env...]
  local tool=$1
  shift
  local cs
  cs=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  if [ $DRY_RUN = 1 ]; then
    env "$@" "$PY" scripts/sanitizer_workload.py --dry-run 2>&1 | tail -3
    return "${PIPESTATUS[0]}"
  fi
  # Without torch's caching allocator every tensor is its own cudaMalloc, so memcheck
  # sees an access past a tensor's end (inside a cached block it could not).
  local log
  log=$(mktemp)
  env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$@" "$cs" --tool "$tool" --error-exitcode 1 --print-limit 50 \
    "$PY" scripts/sanitizer_workload.py > "$log" 2>&1
  local st=$?
  { echo "== $tool $*"; cat "$log"; } >> "$OUT_DIR/sanitizers.log"  # one file: the device returns at most 8
  grep -vE "^W1|ok so far" "$log" | tail -25
  rm -f "$log"
  return $st
}

step_bench() {
  local args=(--out "$OUT_DIR" --no-compile)
  [ $DRY_RUN = 1 ] && args+=(--device cpu --quick)
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.bench_gpu "${args[@]}" ${BENCH_ARGS:-} > "$OUT_DIR/bench_gpu.log" 2>&1
  local st=$?
  grep -v "\.\.\.$" "$OUT_DIR/bench_gpu.log" | tail -45
  return $st
}

step_tal() {
  local tmp
  tmp=$(mktemp -d)
  local args=(--device cuda --out "$tmp")
  [ $DRY_RUN = 1 ] && args=(--device cpu --quick --out "$tmp")
  "$PY" -m benchmarks.bench_tal "${args[@]}" > "$OUT_DIR/bench_tal.log" 2>&1
  local st=$?
  cat "$tmp"/tal_*.json >> "$OUT_DIR/bench_tal.log" 2>/dev/null  # one file back: the JSON appended
  rm -rf "$tmp"
  sed -n '/^atss_ops TAL benchmark/,/^{/p' "$OUT_DIR/bench_tal.log" | grep -v "^{"
  return $st
}

step_detector() {
  local args=(--device cuda --steps 30 --warmup 5)
  [ $DRY_RUN = 1 ] && args=(--device cpu --steps 3 --warmup 1)
  local tmp
  tmp=$(mktemp -d)
  "$PY" scripts/detector_gpu_step.py --out "$tmp" "${args[@]}" > "$OUT_DIR/detector.log" 2>&1
  local st=$?
  # One file back (the figures appended to the log).
  [ -f "$tmp/detector_step.json" ] && cat "$tmp/detector_step.json" >> "$OUT_DIR/detector.log"
  rm -rf "$tmp"
  grep -v "^W1" "$OUT_DIR/detector.log" | sed -n '/^{/q;p' | tail -12  # the run's lines, not the JSON
  return $st
}

step_monai() {
  if ! "$PY" -c "import monai" 2>/dev/null; then
    echo "MONAI does not import here (run 'make gpu-extra' before the GPU call, and carry .gpu-extra): skipped"
    return 0
  fi
  local args=(--out "$OUT_DIR" --device cuda --budget 6 --max-runs 30)
  [ $DRY_RUN = 1 ] && args=(--out "$OUT_DIR" --device cpu --budget 1 --max-runs 3)
  "$PY" -m benchmarks.bench_monai "${args[@]}" > "$OUT_DIR/bench_monai.log" 2>&1
  local st=$?
  grep -v "^timing" "$OUT_DIR/bench_monai.log" | tail -14
  return $st
}

export -f step_env extension_current step_build pytest_parallel_args step_test step_cuda12 step_test_all step_errors \
  sanitizer step_bench step_tal step_detector step_monai
export PY OUT_DIR DRY_RUN OP_TESTS WHEEL WHEEL_DIR PYTEST_PATH_ARGS

[ $DRY_RUN = 1 ] && echo "DRY RUN: the CPU stands in for the GPU; nothing here proves the CUDA kernels"
for step in "${STEPS[@]}"; do
  case "$step" in
    env) run_step env 30 step_env ;;
    build) run_step build 300 step_build ;;
    test) run_step test 200 step_test ;;
    cuda12) run_step cuda12 150 step_cuda12 ;;
    test-all) run_step test-all 480 step_test_all ;;
    errors) run_step errors 90 step_errors ;;
    memcheck) run_step memcheck 110 sanitizer memcheck ;;
    racecheck) run_step racecheck 110 sanitizer racecheck ;;
    synccheck) run_step synccheck 80 sanitizer synccheck ATSS_MAX_BLOCKS="$CAPPED_BLOCKS" ;;
    bench) run_step bench 120 step_bench ;;
    tal) run_step tal 60 step_tal ;;
    detector) run_step detector 120 step_detector ;;
    monai) run_step monai 90 step_monai ;;
    *) echo "unknown step '$step' (env build test cuda12 test-all errors memcheck racecheck synccheck bench tal detector monai)"; FAILED=1 ;;
  esac
  if [ "$step" = build ] && [ $FAILED = 1 ]; then
    echo "build failed: later steps need it"
    break
  fi
done

echo
echo "===== summary ($((SECONDS - START)) s of a ${BUDGET_S} s budget) ====="
[ $DRY_RUN = 1 ] && echo "(dry run)"
printf '%s\n' "${SUMMARY[@]}"
if [ -f "$OUT_DIR/bench_gpu.log" ]; then
  echo
  sed -n '/^atss_ops GPU benchmark/,$p' "$OUT_DIR/bench_gpu.log" | grep -v "^-----\|^=====" | head -45
fi
echo "outputs in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
exit $FAILED
