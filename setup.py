"""Build of atss_ops: the C++ CPU kernels always, the CUDA kernels when asked or possible.

CUDA sources are built when FORCE_CUDA=1, or when the CUDA toolkit, a CUDA
build of torch and a visible GPU are all present. Without a GPU, set
TORCH_CUDA_ARCH_LIST (e.g. "9.0") too. The build prints what it built and never
downloads anything (install with `pip install --no-build-isolation`).
"""

import glob
import os

import torch
from setuptools import find_packages, setup
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


def _extension():
    cpp = _sources("csrc/*.cpp") + _sources("csrc/common/*.cpp") + _sources("csrc/cpu/*.cpp")
    # -ffp-contract=off / -fmad=false: every float operation is rounded on its
    # own, as the contract requires (no fused multiply-add). Never fast-math.
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp"]
    if _want_cuda():
        cu = _sources("csrc/cuda/*.cu")
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "(detected from the visible GPUs)")
        print(f"atss_ops: building CPU + CUDA kernels ({len(cpp)} C++ and {len(cu)} CUDA files, "
              f"CUDA {torch.version.cuda}, archs {arch}, CUDA_HOME={CUDA_HOME})")
        return CUDAExtension(
            "atss_ops._C",
            cpp + cu,
            define_macros=[("ATSS_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-fmad=false", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    print(f"atss_ops: building CPU kernels only ({len(cpp)} C++ files); "
          "set FORCE_CUDA=1 to build the CUDA kernels")
    return CppExtension("atss_ops._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])


setup(
    name="atss-ops",
    version="0.1.0",
    description="Fast, bit-exact ATSS anchor assignment for PyTorch (CPU and CUDA kernels)",
    packages=find_packages(include=["atss_ops", "atss_ops.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["atss-detector=atss_ops.detector.cli:main"]},
    python_requires=">=3.10",
)
