#!/usr/bin/env bash
# The emulated CUDA kernels under the sanitizers: the sanitizer workload (every
# kernel and path, compared bit for bit with the CPU kernels) through the
# library built with AddressSanitizer + UBSan, then through the one built with
# ThreadSanitizer. Any sanitizer report, mismatch or failed launch fails.
#
#   bash scripts/emu_sanitize.sh            # both (builds what is missing)
#   bash scripts/emu_sanitize.sh asan       # one of them
#
# Knobs: PYTHON (default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
VARIANTS=("$@")
[ ${#VARIANTS[@]} -eq 0 ] && VARIANTS=(asan tsan)
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"  # the workload imports tests/cases.py
status=0
for v in "${VARIANTS[@]}"; do
  lib=build-emu-$v/libatss_ops_emu.so  # (make emu-asan, make emu-tsan: CMakeLists.txt's ATSS_EMU)
  [ -f "$lib" ] || make --no-print-directory "emu-$v" || exit 1
  preload=$("${CXX:-g++}" -print-file-name="lib$v.so")  # the sanitizer's runtime, preloaded into Python
  log=$(mktemp)
  echo "== emulated CUDA under $v: $lib (preloading $preload)"
  start=$SECONDS
  # Python and torch are not instrumented: leaks at exit are theirs (detect_leaks=0).
  # torch's own threads (OpenMP) synchronise in ways TSan cannot see, and torch is not
  # instrumented: one intra-op thread, and no reports from uninstrumented modules.
  # Concurrency 3: several blocks of a launch run at once, so TSan sees the inter-block protocol.
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=86" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=86" \
    TSAN_OPTIONS="halt_on_error=0:exitcode=86:report_signal_unsafe=0:detect_deadlocks=0:ignore_noninstrumented_modules=1" \
    OMP_NUM_THREADS=1 ATSS_EMU_CONCURRENCY=3 LD_PRELOAD="$preload" \
    "$PY" scripts/sanitizer_workload.py --emu "$lib" > "$log" 2>&1
  rc=$?
  grep -v "^W11" "$log" | tail -4
  reports=$(grep -cE "ERROR: AddressSanitizer|WARNING: ThreadSanitizer|runtime error:" "$log")
  echo "== $v: exit $rc, $reports sanitizer reports, $((SECONDS - start)) s"
  if [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
    grep -E -A30 "ERROR: AddressSanitizer|WARNING: ThreadSanitizer|runtime error:" "$log" | head -120
    grep -vE "^W1|ok so far|^    #" "$log" | tail -20
    status=1
  fi
  rm -f "$log"
done
exit $status
