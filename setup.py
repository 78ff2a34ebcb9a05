"""The compiled libraries of atss_ops, on the LibTorch stable ABI (package metadata
lives in pyproject.toml; shared build facts in build_config.py):

  atss_ops/_C.abi3.so       the schemas and the CPU kernels, a CPython limited-API
                            module (one binary for every Python >= 3.10)
  atss_ops/_C_cudaN.abi3.so the CUDA kernels (when built) for CUDA major version N,
                            loaded by atss_ops with torch.ops.load_library under a
                            CUDA build of torch of the same major version; it links
                            the CUDA runtime libcudart.so.N that such a torch brings
                            (and has loaded), so it needs only that torch and a driver

Both are compiled against the stable ABI of the oldest supported torch
(TORCH_TARGET_VERSION, from pyproject.toml's ``torch>=X.Y``) and link only
libtorch_cpu (and libtorch_cuda), so one build serves every torch from X.Y on.

CUDA sources are built when FORCE_CUDA=1, or when the CUDA toolkit, a CUDA build of
torch and a visible GPU are all present; the architectures come from
TORCH_CUDA_ARCH_LIST (``make wheel`` sets the release list of build_config.py).
The build prints what it built and never downloads anything (install with
``pip install --no-build-isolation``, or build the wheel with ``make wheel``).
"""

import glob
import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
import build_config  # noqa: E402

try:
    import torch
except ImportError:
    # An isolated build (plain `pip install .`) runs in a fresh environment that pip
    # made for the build: the torch of your environment is not visible in it.
    sys.exit(
        "atss-ops: no torch in the build environment. A plain `pip install .` builds in an "
        "isolated environment that cannot see the torch you installed (pyproject.toml does not "
        "download one on purpose, so that the library is built against your torch): use "
        "`pip install --no-build-isolation .`, or install the prebuilt wheel (`make wheel` "
        "writes it to dist/)."
    )
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _torch_at_least_target():
    have = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if have < build_config.torch_minimum():
        sys.exit(
            f"atss-ops: torch {torch.__version__} is installed, but the library is built against the "
            f"stable ABI of torch {build_config.torch_target()} and needs those headers: install "
            f"torch>={build_config.torch_target()} first"
        )


def _want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        if torch.version.cuda is None:
            raise RuntimeError(f"FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        return True
    return CUDA_HOME is not None and torch.version.cuda is not None and torch.cuda.is_available()


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _nvcc_version():
    """The CUDA toolkit's "major.minor", from its cuda_runtime_api.h (no subprocess)."""
    header = os.path.join(CUDA_HOME, "include", "cuda_runtime_api.h")
    with open(header) as f:
        for line in f:
            if line.startswith("#define CUDART_VERSION"):
                v = int(line.split()[2])
                return f"{v // 1000}.{v % 1000 // 10}"
    raise RuntimeError(f"no CUDART_VERSION in {header}")


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """Keeps object files in ``build/`` whoever runs the build (one folder per
    library): pip's editable install would otherwise compile in a fresh temporary
    folder, so ninja could not reuse what ``setup.py build_ext --inplace``
    (``make build``) compiled."""

    def finalize_options(self):
        super().finalize_options()
        plat = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        self.build_temp = os.path.join(ROOT, "build", f"temp.{plat}")

    def build_extension(self, ext):
        # One folder (and ninja file) per library: both compile csrc/common/ with their flags.
        base = self.build_temp
        self.build_temp = os.path.join(base, ext.name.split(".")[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = base


def _stable(ext, libraries):
    """Links `ext` against exactly `libraries` (torch's helpers add c10, torch and more:
    the stable ABI's symbols are all in libtorch_cpu / libtorch_cuda)."""
    ext.libraries = libraries
    return ext


def _extensions():
    _torch_at_least_target()
    target = build_config.torch_target()
    stable = [build_config.stable_abi_define()]
    common = _sources("csrc/common/*.cpp")
    cpp = _sources("csrc/*.cpp") + common + _sources("csrc/cpu/*.cpp")
    cuda = _want_cuda()
    cuda_version = _nvcc_version() if cuda else ""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if cuda else ""
    cxx = [*build_config.CXX_NUMERICS, *stable]
    exts = [
        _stable(
            CppExtension("atss_ops._C", cpp, extra_compile_args={"cxx": cxx}, py_limited_api=True),
            ["torch_cpu"],
        )
    ]
    if cuda:
        cu = _sources("csrc/cuda/*.cu")
        print(
            f"atss_ops: building CPU + CUDA kernels ({len(cpp)} C++ and {len(cu)} CUDA files, "
            f"CUDA {cuda_version}, archs {archs or '(detected from the visible GPUs)'}, "
            f"CUDA_HOME={CUDA_HOME}), stable ABI of torch {target}"
        )
        # -DUSE_CUDA: the C shim declares its CUDA functions (the current stream).
        nvcc = [*build_config.NVCC_NUMERICS, "-lineinfo", *stable, "-DUSE_CUDA"]
        exts.append(
            _stable(
                CUDAExtension(
                    f"atss_ops._C_cuda{cuda_version.split('.')[0]}",
                    common + cu,
                    extra_compile_args={"cxx": [*cxx, "-DUSE_CUDA"], "nvcc": nvcc},
                    py_limited_api=True,
                ),
                # The CUDA runtime of torch's own CUDA major version (libcudart.so.N, which
                # torch's CUDA build brings and loads): no CUDA toolkit needed, only the driver.
                ["torch_cpu", "torch_cuda", "cudart"],
            )
        )
    else:
        print(
            f"atss_ops: building CPU kernels only ({len(cpp)} C++ files), stable ABI of torch "
            f"{target}; set FORCE_CUDA=1 to build the CUDA kernels"
        )
    return exts


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
    # One wheel for every CPython >= 3.10 (the library uses the limited API alone).
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
