"""The compiled extension of atss_ops (``atss_ops._C``): the C++ CPU kernels always,
the CUDA kernels when asked or possible. Package metadata lives in pyproject.toml.

CUDA sources are built when FORCE_CUDA=1, or when the CUDA toolkit, a CUDA
build of torch and a visible GPU are all present. Without a GPU, set
TORCH_CUDA_ARCH_LIST (e.g. "9.0") too. The build prints what it built and never
downloads anything (install with `pip install --no-build-isolation`).
"""

import glob
import os
import sys
import sysconfig

try:
    import torch
except ImportError:
    # An isolated build (plain `pip install .`) has no torch: stop rather than
    # compile against another torch than the one the package will run with.
    sys.exit(
        "atss-ops compiles against the installed torch: install torch first, then "
        "`pip install --no-build-isolation .` (plain `pip install .` builds in an isolated environment without it)"
    )
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


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


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """Keeps object files in ``build/`` whoever runs the build: pip's editable
    install would otherwise compile in a fresh temporary folder, so ninja could
    not reuse what ``setup.py build_ext --inplace`` (``make build``) compiled."""

    def finalize_options(self):
        super().finalize_options()
        plat = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        self.build_temp = os.path.join(ROOT, "build", f"temp.{plat}")


def _extension():
    cpp = _sources("csrc/*.cpp") + _sources("csrc/common/*.cpp") + _sources("csrc/cpu/*.cpp")
    # -ffp-contract=off / -fmad=false: every float operation is rounded on its
    # own, as the contract requires (no fused multiply-add). Never fast-math.
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp"]
    if _want_cuda():
        cu = _sources("csrc/cuda/*.cu")
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "(detected from the visible GPUs)")
        print(
            f"atss_ops: building CPU + CUDA kernels ({len(cpp)} C++ and {len(cu)} CUDA files, "
            f"CUDA {torch.version.cuda}, archs {arch}, CUDA_HOME={CUDA_HOME})"
        )
        return CUDAExtension(
            "atss_ops._C",
            cpp + cu,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-fmad=false", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    print(f"atss_ops: building CPU kernels only ({len(cpp)} C++ files); set FORCE_CUDA=1 to build the CUDA kernels")
    return CppExtension("atss_ops._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExt},
)
