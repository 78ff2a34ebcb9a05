"""The driver of CMakeLists.txt (the one build description of the compiled libraries)
for the wheel, ``pip install`` and ``make build``; package metadata lives in
pyproject.toml. It configures and builds, with CMake and Ninja:

  build/cmake-cpu      atss_ops/_C.abi3.so, the schemas and the CPU kernels
  build/cmake-cudaN    atss_ops/_C_cudaN.abi3.so, the CUDA kernels of the CUDA N toolkit
                       at CUDA_HOME, with that runtime linked in statically (any CUDA
                       build of torch loads it; the driver decides whether it runs)

and copies each library into the package (in place, or into the wheel's tree).

CUDA kernels are built when FORCE_CUDA=1, or when the CUDA toolkit, a CUDA build of
torch and a visible GPU are all present; the architectures come from
TORCH_CUDA_ARCH_LIST (``make wheel`` sets the release list of build_config.py).
ATSS_EXTRA_CUDA_HOMES (toolkit folders, ':'-separated) adds one more CUDA library per
toolkit of another major version (``make wheel`` passes the CUDA 12 toolkit of
scripts/cuda12_toolkit.py), for the archs of TORCH_CUDA_ARCH_LIST that toolkit knows,
one per major architecture (PTX of the newest). Ninja rebuilds only what changed. The
build prints what it builds and never downloads anything (install with ``pip install
--no-build-isolation``: it needs the torch, CMake and Ninja of your environment).
"""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

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
from setuptools import Extension, setup  # noqa: E402
from setuptools.command.build_ext import build_ext  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME  # noqa: E402


def _want_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        if torch.version.cuda is None:
            raise RuntimeError(f"FORCE_CUDA=1 but torch {torch.__version__} is a CPU-only build")
        return True
    return CUDA_HOME is not None and torch.version.cuda is not None and torch.cuda.is_available()


def _cuda_major(home):
    """The CUDA toolkit's major version at ``home``, from its cuda_runtime_api.h."""
    header = os.path.join(home, "include", "cuda_runtime_api.h")
    with open(header) as f:
        for line in f:
            if line.startswith("#define CUDART_VERSION"):
                return int(line.split()[2]) // 1000
    raise RuntimeError(f"no CUDART_VERSION in {header}")


def _toolkit_archs(home, wanted):
    """The architectures of ``wanted`` (TORCH_CUDA_ARCH_LIST syntax) for an extra CUDA
    library built by the nvcc at ``home``: those it can compile for, one per major
    architecture (the lowest: a cubin runs on the later minors of its major, so sm_80's
    serves sm_86 and sm_89 GPUs), with PTX of the newest when ``wanted`` asks for PTX."""
    listed = subprocess.run(
        [os.path.join(home, "bin", "nvcc"), "--list-gpu-arch"], capture_output=True, text=True, check=True
    ).stdout.split()
    known = {a[len("compute_") :] for a in listed if a.startswith("compute_")}
    names = [a.strip() for a in wanted.replace(";", " ").split() if a.strip()]
    keep = []
    for arch in sorted({a.replace("+PTX", "") for a in names}, key=lambda a: tuple(map(int, a.split(".")))):
        if arch.replace(".", "") in known and arch.split(".")[0] not in {k.split(".")[0] for k in keep}:
            keep.append(arch)
    if not keep:
        raise RuntimeError(f"the CUDA toolkit at {home} compiles none of TORCH_CUDA_ARCH_LIST={wanted}")
    if any(a.endswith("+PTX") for a in names):
        keep[-1] += "+PTX"
    return ";".join(keep)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


class CMakeLibrary(Extension):
    """A library that CMake builds in ``build_dir`` (options ``cmake_args``) as ``file_name``."""

    def __init__(self, name, build_dir, file_name, cmake_args):
        super().__init__(name, sources=[], py_limited_api=True)
        self.build_dir, self.file_name, self.cmake_args = build_dir, file_name, cmake_args


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        cmake = shutil.which("cmake")
        if cmake is None or shutil.which("ninja") is None:
            raise RuntimeError("atss-ops builds with CMake and Ninja: pip install cmake ninja")
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        configure = [cmake, "-S", ROOT, "-B", ext.build_dir, "-G", "Ninja", f"-DPython3_EXECUTABLE={sys.executable}"]
        configure += ext.cmake_args
        # Configured already with these options: ninja re-runs CMake itself when CMakeLists.txt changes.
        stamp = os.path.join(ext.build_dir, "atss-configure.txt")
        if not os.path.exists(os.path.join(ext.build_dir, "build.ninja")) or _read(stamp) != "\n".join(configure):
            subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
            with open(stamp, "w") as f:
                f.write("\n".join(configure))
        subprocess.run([cmake, "--build", ext.build_dir, "-j", jobs], check=True)
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(os.path.join(ext.build_dir, ext.file_name), dest)


def _extensions():
    build = os.path.join(ROOT, "build")
    cpu = ["-DATSS_PYTHON_MODULE=ON", "-DATSS_CUDA=OFF"]
    exts = [CMakeLibrary("atss_ops._C", os.path.join(build, "cmake-cpu"), "_C.abi3.so", cpu)]
    if not _want_cuda():
        print("atss_ops: building the CPU kernels only; set FORCE_CUDA=1 to build the CUDA kernels")
        return exts
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if not archs and torch.cuda.is_available():  # the visible GPU's
        archs = "{}.{}".format(*torch.cuda.get_device_capability(0))
    homes = [CUDA_HOME] + [h for h in os.environ.get("ATSS_EXTRA_CUDA_HOMES", "").split(os.pathsep) if h]
    for i, home in enumerate(homes):
        major = _cuda_major(home)
        if any(e.name == f"atss_ops._C_cuda{major}" for e in exts):
            raise RuntimeError(f"two CUDA toolkits of major version {major}: {homes}")
        library_archs = archs if i == 0 or not archs else _toolkit_archs(home, archs)
        args = ["-DATSS_PYTHON_MODULE=OFF", "-DATSS_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={home}/bin/nvcc"]
        if library_archs:
            args.append(f"-DTORCH_CUDA_ARCH_LIST={library_archs}")
        name = f"_C_cuda{major}"
        build_dir = os.path.join(build, f"cmake-cuda{major}")
        exts.append(CMakeLibrary(f"atss_ops.{name}", build_dir, f"{name}.abi3.so", args))
        print(f"atss_ops: building {name} (CUDA toolkit {home}, static runtime, archs {library_archs or 'detected'})")
    print("atss_ops: and the CPU kernels (_C)")
    return exts


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": CMakeBuild},
    # One wheel for every CPython >= 3.10 (the library uses the limited API alone).
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
