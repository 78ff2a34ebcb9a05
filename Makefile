# Two commands on a fresh machine: `make demo` and `make test`. Each creates the
# virtual environment, installs what the project needs, builds the extension
# (incrementally, with ninja) and runs.
#
# Knobs: PYTHON (the interpreter that creates the venv), VENV, TORCH_SPEC (or TORCH_BUILD=cpu).
# CUDA kernels: FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 CUDA_HOME=/usr/local/cuda make build
# (built automatically when the CUDA toolkit, a CUDA build of torch and a GPU are present).
# The release wheel: `make wheel` (WHEEL_ARCHS), checked by `make wheel-check` (WHEEL_TORCH).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What pip installs first into the venv (torchvision 0.29.x goes with torch 2.14 and 2.15). The
# default comes from PyPI, whose Linux x86-64 torch is the CUDA 13 build: with its NVIDIA
# libraries the venv takes about 5.7 GB. TORCH_BUILD=cpu takes PyTorch's CPU-only build from
# PyTorch's own package index instead (a fraction of the size; no CUDA kernels are built or
# tested with it). Either applies when the venv is made: pip keeps a torch it already has, so
# switch with `rm -rf .venv` first. Any other pip arguments: TORCH_SPEC="torch==... --index-url ...".
TORCH_VERSIONS ?= torch==2.14.1 torchvision==0.29.1
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(TORCH_BUILD),cpu)
TORCH_SPEC ?= $(TORCH_VERSIONS) --index-url $(TORCH_CPU_INDEX)
else
TORCH_SPEC ?= $(TORCH_VERSIONS)
endif
export MAX_JOBS ?= 2
# The venv's ninja and cmake (from requirements.txt) come first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# torch guesses the wrong CUDA home from the nvcc wrapper on PATH.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

.PHONY: venv build install test demo bench bench-gpu gpu-extra cmake-check cmake-cuda-check emu emu-asan emu-tsan emu-sanitize \
	wheel cuda12-toolkit wheel-check lint format clean

venv: $(VENV)/.stamp-deps

$(VENV)/.stamp-deps: requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	@$(PY) -c 'import torch; print(f"venv: torch {torch.__version__}, " + (f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"))'
	touch $@

# In-place build (setup.py drives CMakeLists.txt; ninja recompiles only what changed): its
# output goes to build/make-build.log, shown whole when the build fails, and otherwise all
# but ninja's "[n/N] ..." lines (setup.py's summary and any compiler warning stay).
build: venv
	@mkdir -p build
	@echo "$(PY) setup.py --quiet build_ext --inplace  (log: build/make-build.log)"
	@if $(PY) setup.py --quiet build_ext --inplace > build/make-build.log 2>&1; then \
	  grep -v -e '^\[[0-9]*/[0-9]*\] ' -e '^ninja: no work to do' build/make-build.log || true; \
	else status=$$?; cat build/make-build.log; exit $$status; fi

# Installs both packages with the detector's dependencies (the `detector` extra of
# pyproject.toml) and the `atss-detector` console script into the venv. The
# objects compiled by `make build` are reused: only the link runs again.
install: build
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e ".[detector]"

# The whole suite, the emulated CUDA kernels included (ATSS_REQUIRE_EMU: a missing
# emulated library is an error, not a skip).
test: install emu
	ATSS_REQUIRE_EMU=1 $(PY) -m pytest -q tests

# CMake (CMakeLists.txt, the one build description) in folder $(1) with options $(2).
cmake_build = cmake -S . -B $(1) -G Ninja -DPython3_EXECUTABLE=$(abspath $(PY)) $(2) > /dev/null && \
	cmake --build $(1) -j $(MAX_JOBS)

# The test-only library of the CUDA kernel sources run through the host execution
# model (csrc/cuda/emu/): build-emu/libatss_ops_emu.so, ops torch.ops.atss_ops_emu.*.
emu: venv
	$(call cmake_build,build-emu,-DATSS_PYTHON_MODULE=OFF -DATSS_EMU=ON -DATSS_SANITIZER=none)

# The same library under AddressSanitizer + UBSan (build-emu-asan/), and under
# ThreadSanitizer (build-emu-tsan/).
emu-asan: venv
	$(call cmake_build,build-emu-asan,-DATSS_PYTHON_MODULE=OFF -DATSS_EMU=ON -DATSS_SANITIZER=asan)

emu-tsan: venv
	$(call cmake_build,build-emu-tsan,-DATSS_PYTHON_MODULE=OFF -DATSS_EMU=ON -DATSS_SANITIZER=tsan)

# The emulated sanitizer workload (every kernel and path) under each sanitizer:
# any report fails.
emu-sanitize: emu-asan emu-tsan
	bash scripts/emu_sanitize.sh

# The binary wheel: dist/atss_ops-<version>-cp310-abi3-manylinux_2_28_x86_64.whl, CPU and
# CUDA kernels (WHEEL_ARCHS: SASS for each, PTX of the newest; CUDA toolkit from CUDA_HOME),
# on the LibTorch stable ABI (every torch from pyproject.toml's minimum on) and CPython's
# limited API (every Python >= 3.10). Each CUDA library carries its CUDA runtime
# (static), so it runs under any CUDA build of torch: _C_cuda13 (CUDA_HOME's toolkit,
# drivers R580+) and, with WHEEL_CUDA12=1 (the default), _C_cuda12 (the CUDA 12.4 toolkit
# that `make cuda12-toolkit` assembles in CUDA12_HOME, drivers R525+; the archs of
# WHEEL_ARCHS it knows). auditwheel checks its symbols against the manylinux policy (it
# also fits the older manylinux_2_24; the file keeps the one tag manylinux_2_28);
# torch's own libraries stay external.
WHEEL_ARCHS ?= $(shell $(PYTHON) -c 'import build_config; print(build_config.WHEEL_CUDA_ARCHS)')
WHEEL_PLAT := manylinux_2_28_x86_64
WHEEL_CUDA12 ?= 1
CUDA12_HOME ?= $(HOME)/.cache/atss-ops/cuda-12
wheel: venv $(if $(filter 1,$(WHEEL_CUDA12)),cuda12-toolkit)
	rm -rf dist/raw dist/repaired build/lib.* build/bdist.* && mkdir -p dist
	@start=$$(date +%s); \
	FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$(WHEEL_ARCHS)" $(if $(filter 1,$(WHEEL_CUDA12)),ATSS_EXTRA_CUDA_HOMES="$(CUDA12_HOME)") \
	  $(PY) -m pip wheel --quiet --disable-pip-version-check \
	  --no-build-isolation --no-deps -w dist/raw . && \
	$(VENV)/bin/auditwheel repair --plat $(WHEEL_PLAT) --exclude libtorch_cpu.so --exclude libtorch_cuda.so \
	  -w dist/repaired dist/raw/atss_ops-*.whl && \
	rm -f dist/atss_ops-*.whl && \
	$(PY) -m wheel tags --remove --platform-tag $(WHEEL_PLAT) dist/repaired/atss_ops-*.whl && \
	mv dist/repaired/atss_ops-*.whl dist/ && rm -rf dist/repaired dist/raw && \
	$(VENV)/bin/auditwheel show dist/atss_ops-*-$(WHEEL_PLAT).whl && \
	ls -l dist/atss_ops-*-$(WHEEL_PLAT).whl && \
	echo "make wheel: archs $(WHEEL_ARCHS), $$(( $$(date +%s) - start )) s"

# The CUDA 12 toolkit of the wheel's _C_cuda12 (nvcc 12.4 from Debian's package, headers
# and the static runtime from NVIDIA's PyPI wheels; about 130 MB, kept in CUDA12_HOME).
cuda12-toolkit: venv
	$(PY) scripts/cuda12_toolkit.py --dest "$(CUDA12_HOME)"

# The wheel installed with no compiler into venvs of several torch releases (holding that
# torch and the test tools only, kept in ~/.cache/atss-ops/wheel-check between runs), and
# the op tests run against the installed package (scripts/wheel_check.py).
# WHEEL_TORCH: the torch versions to try, TORCH[@PYTHON] (default: scripts/wheel_check.py's DEFAULT_TORCH).
WHEEL_TORCH ?=
WHEEL_TESTS ?= auto
wheel-check: venv
	$(PY) scripts/wheel_check.py $(if $(WHEEL_TORCH),--torch $(WHEEL_TORCH)) --tests $(WHEEL_TESTS)

demo: install
	$(PY) -m benchmarks.bench_cpu --check
	$(PY) -m atss_detector.demo --out runs/demo

bench: build
	$(PY) -m benchmarks.bench_cpu --check

bench-gpu: build
	$(PY) -m benchmarks.bench_gpu

# MONAI (pure Python) copied into .gpu-extra/ for the GPU check's monai step: the
# GPU machine has no package registry; scripts/gpu_check.sh puts .gpu-extra on
# PYTHONPATH (carry it with the device tool).
gpu-extra: venv
	rm -rf .gpu-extra && mkdir -p .gpu-extra
	cp -r "$$($(PY) -c 'import monai, os; print(os.path.dirname(monai.__file__))')" .gpu-extra/

# The plain library of the same sources (build-cmake/libatss_ops.so), loaded by
# tests/test_cmake_library.py: the CPU kernels, and with CMAKE_WITH_CUDA=ON the CUDA
# kernels too (compiles without a GPU; archs from TORCH_CUDA_ARCH_LIST, default 9.0).
CMAKE_WITH_CUDA ?= OFF
cmake-check: venv
	$(call cmake_build,build-cmake,-DATSS_PYTHON_MODULE=OFF -DATSS_LIBRARY=ON -DATSS_CUDA=$(CMAKE_WITH_CUDA) \
	  $(if $(filter ON,$(CMAKE_WITH_CUDA)),-DCMAKE_CUDA_COMPILER=$(CUDA_HOME)/bin/nvcc \
	  -DTORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-9.0}"))

cmake-cuda-check:
	$(MAKE) cmake-check CMAKE_WITH_CUDA=ON

# Style: ruff (Python) and clang-format (C++/CUDA), configured in pyproject.toml and .clang-format.
lint: venv
	.ci/lint

format: venv
	$(VENV)/bin/ruff check --fix --quiet .
	$(VENV)/bin/ruff format --quiet .
	find csrc \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print0 | xargs -0 $(VENV)/bin/clang-format -i

clean:
	rm -rf build build-cmake build-emu build-emu-asan build-emu-tsan atss_ops/_C*.so runs benchmarks/results .gpu-extra \
	  dist
