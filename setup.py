"""The compiled libraries of atss_ops, on the LibTorch stable ABI (package metadata
lives in pyproject.toml; shared build facts in build_config.py):

  atss_ops/_C.abi3.so       the schemas and the CPU kernels, a CPython limited-API
                            module (one binary for every Python >= 3.10)
  atss_ops/_C_cudaN.abi3.so the CUDA kernels (when built), compiled by a CUDA N.x
                            toolkit, with that CUDA runtime linked in statically
                            (libcudart_static.a, its symbols hidden): it needs no
                            libcudart.so, so it loads under any CUDA build of torch,
                            and runs where the driver supports CUDA N

Both are compiled against the stable ABI of the oldest supported torch
(TORCH_TARGET_VERSION, from pyproject.toml's ``torch>=X.Y``) and link only
libtorch_cpu (and libtorch_cuda), so one build serves every torch from X.Y on.

CUDA sources are built when FORCE_CUDA=1, or when the CUDA toolkit, a CUDA build of
torch and a visible GPU are all present; the architectures come from
TORCH_CUDA_ARCH_LIST (``make wheel`` sets the release list of build_config.py).
ATSS_EXTRA_CUDA_HOMES (toolkit folders, ':'-separated) adds one more CUDA library per
toolkit of another major version, from the same sources and flags (``make wheel``
passes the CUDA 12 toolkit of scripts/cuda12_toolkit.py), for the archs of
TORCH_CUDA_ARCH_LIST that toolkit knows, one per major architecture (PTX of the newest).
The build prints what it built and never downloads anything (install with
``pip install --no-build-isolation``, or build the wheel with ``make wheel``).
"""

import contextlib
import glob
import os
import subprocess
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
import torch.utils.cpp_extension as cpp_extension  # noqa: E402
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


def _cuda_version(home):
    """The CUDA toolkit's "major.minor" at ``home``, from its cuda_runtime_api.h (no subprocess)."""
    header = os.path.join(home, "include", "cuda_runtime_api.h")
    with open(header) as f:
        for line in f:
            if line.startswith("#define CUDART_VERSION"):
                v = int(line.split()[2])
                return f"{v // 1000}.{v % 1000 // 10}"
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


@contextlib.contextmanager
def _toolkit(home, archs):
    """torch's extension builder reads the toolkit from a module global and the
    architectures from the environment: both pointed at one toolkit for a while."""
    saved_home, saved_archs = cpp_extension.CUDA_HOME, os.environ.get("TORCH_CUDA_ARCH_LIST")
    cpp_extension.CUDA_HOME = home
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = saved_home
        if saved_archs is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved_archs


def _glibc_stubs(compiler, folder):
    """Builds the stand-in libraries of build_config.GLIBC_2_28_STUBS in ``folder``;
    returns their paths (link inputs ahead of libc)."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for soname, versions in build_config.GLIBC_2_28_STUBS.items():
        base = os.path.join(folder, soname)
        names = [n for symbols in versions.values() for n in symbols]
        with open(base + ".c", "w") as f:
            f.write("".join(f"void {n}(void) {{}}\n" for n in names))
        with open(base + ".map", "w") as f:
            f.write("".join(f"{v} {{ global: {'; '.join(symbols)}; }};\n" for v, symbols in versions.items()))
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{soname}", f"-Wl,--version-script={base}.map"]
            + ["-o", base, base + ".c"],
            check=True,
        )
        paths.append(base)
    return paths


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
        # One folder (and ninja file) per library: each compiles csrc/common/ with its flags.
        base = self.build_temp
        self.build_temp = os.path.join(base, ext.name.split(".")[-1])
        try:
            cuda_home = getattr(ext, "cuda_home", None)
            if cuda_home is None:
                return super().build_extension(ext)
            stubs = _glibc_stubs(self.compiler.compiler_so[0], os.path.join(self.build_temp, "glibc-2.28-stubs"))
            ext.extra_link_args = [*ext.extra_link_args, *stubs]
            with _toolkit(cuda_home, ext.cuda_archs):
                super().build_extension(ext)
        finally:
            self.build_temp = base


def _stable(ext, libraries):
    """Links `ext` against exactly `libraries` (torch's helpers add c10, torch and more:
    the stable ABI's symbols are all in libtorch_cpu / libtorch_cuda)."""
    ext.libraries = libraries
    return ext


def _cuda_extension(home, archs, sources, stable):
    """The CUDA kernel library ``atss_ops._C_cudaN`` compiled by the toolkit at ``home``."""
    version = _cuda_version(home)
    # -DUSE_CUDA: the C shim declares its CUDA functions (the current stream).
    cxx = [*build_config.CXX_NUMERICS, *stable]
    nvcc = [*build_config.NVCC_NUMERICS, "-lineinfo", *stable, "-DUSE_CUDA"]
    with _toolkit(home, archs):  # the toolkit's include and library folders
        ext = CUDAExtension(
            f"atss_ops._C_cuda{version.split('.')[0]}",
            sources,
            extra_compile_args={"cxx": [*cxx, "-DUSE_CUDA"], "nvcc": nvcc},
            # The static runtime's symbols stay inside the library.
            extra_link_args=["-Wl,--exclude-libs,libcudart_static.a"],
            py_limited_api=True,
        )
    ext.cuda_home, ext.cuda_archs, ext.cuda_version = home, archs, version
    return _stable(ext, ["torch_cpu", "torch_cuda", "cudart_static"])


def _extensions():
    _torch_at_least_target()
    target = build_config.torch_target()
    stable = [build_config.stable_abi_define()]
    common = _sources("csrc/common/*.cpp")
    cpp = _sources("csrc/*.cpp") + common + _sources("csrc/cpu/*.cpp")
    cxx = [*build_config.CXX_NUMERICS, *stable]
    exts = [
        _stable(
            CppExtension("atss_ops._C", cpp, extra_compile_args={"cxx": cxx}, py_limited_api=True),
            ["torch_cpu"],
        )
    ]
    if not _want_cuda():
        print(
            f"atss_ops: building CPU kernels only ({len(cpp)} C++ files), stable ABI of torch "
            f"{target}; set FORCE_CUDA=1 to build the CUDA kernels"
        )
        return exts
    cu = _sources("csrc/cuda/*.cu")
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    homes = [CUDA_HOME] + [h for h in os.environ.get("ATSS_EXTRA_CUDA_HOMES", "").split(os.pathsep) if h]
    for i, home in enumerate(homes):
        ext = _cuda_extension(home, archs if i == 0 or not archs else _toolkit_archs(home, archs), common + cu, stable)
        if any(getattr(e, "cuda_version", "").split(".")[0] == ext.cuda_version.split(".")[0] for e in exts):
            raise RuntimeError(f"two CUDA toolkits of major version {ext.cuda_version.split('.')[0]}: {homes}")
        exts.append(ext)
        print(
            f"atss_ops: building CUDA kernels {ext.name} ({len(cu)} CUDA files, CUDA {ext.cuda_version} at "
            f"{home}, static runtime, archs {ext.cuda_archs or '(detected from the visible GPUs)'})"
        )
    print(f"atss_ops: and the CPU kernels ({len(cpp)} C++ files), stable ABI of torch {target}")
    return exts


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
    # One wheel for every CPython >= 3.10 (the library uses the limited API alone).
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
