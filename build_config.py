"""Build facts shared by every build of the kernel sources: setup.py (the wheel and
the in-place build), scripts/build_emu.py (the emulated CUDA library) and the tests
that check CMakeLists.txt agrees. Plain Python, no torch import.

The oldest torch the compiled library supports is read from pyproject.toml's
``torch>=X.Y`` requirement (the one home of that fact); the sources are compiled
against the LibTorch stable ABI of that version (TORCH_TARGET_VERSION), so any API
newer than it fails at build time, and the library loads in every torch from X.Y on.
"""

from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.abspath(__file__))

# Every float operation rounded on its own (no FMA contraction), as the contract
# requires; never fast-math. C++ (g++) and CUDA (nvcc).
CXX_NUMERICS = ["-O3", "-ffp-contract=off"]
NVCC_NUMERICS = ["-O3", "-fmad=false"]

# The CUDA architectures of the release wheel: SASS for each, PTX of the newest
# (so that newer GPUs JIT-compile it). CI builds fewer (CI_CUDA_ARCHS).
WHEEL_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
CI_CUDA_ARCHS = "9.0+PTX"

# libcudart_static.a calls pthread, dl and shm functions that glibc 2.34 moved into
# libc.so.6 under new symbol versions; linked against a newer glibc they would demand
# it. The CUDA libraries link these stand-ins first (built by setup.py: empty
# functions, only their names, versions and sonames count), so the references keep
# glibc 2.28's versions and libraries (manylinux_2_28) and still resolve under any
# newer glibc, which keeps those versions for old binaries. {soname: {version: names}}
GLIBC_2_28_STUBS = {
    "libpthread.so.0": {
        "GLIBC_2.2.5": (
            "pthread_condattr_setpshared pthread_create pthread_detach pthread_getspecific pthread_join "
            "pthread_key_create pthread_key_delete pthread_kill pthread_mutex_trylock pthread_mutexattr_destroy "
            "pthread_mutexattr_init pthread_mutexattr_setpshared pthread_mutexattr_settype pthread_once "
            "pthread_rwlock_destroy pthread_rwlock_init pthread_rwlock_rdlock pthread_rwlock_timedrdlock "
            "pthread_rwlock_timedwrlock pthread_rwlock_tryrdlock pthread_rwlock_trywrlock pthread_rwlock_unlock "
            "pthread_rwlock_wrlock pthread_rwlockattr_destroy pthread_rwlockattr_init pthread_rwlockattr_setpshared "
            "pthread_setspecific pthread_spin_destroy pthread_spin_init pthread_spin_lock pthread_spin_trylock "
            "pthread_spin_unlock sem_destroy sem_init sem_post sem_timedwait sem_trywait sem_wait"
        ).split(),
    },
    "libdl.so.2": {
        "GLIBC_2.2.5": "dlclose dlerror dlopen dlsym dlvsym".split(),
        "GLIBC_2.3.4": ["dlmopen"],
    },
    "librt.so.1": {"GLIBC_2.2.5": ["shm_open", "shm_unlink"]},
}


def torch_minimum() -> tuple:
    """(major, minor) of pyproject.toml's ``torch>=X.Y`` dependency."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    deps = re.search(r"^dependencies\s*=\s*\[([^\]]*)\]", text, re.M)
    match = re.search(r'"torch\s*>=\s*(\d+)\.(\d+)[^"]*"', deps.group(1) if deps else "")
    if match is None:
        raise RuntimeError('pyproject.toml must require "torch>=X.Y" in [project] dependencies')
    return int(match.group(1)), int(match.group(2))


def torch_target() -> str:
    """The torch version the stable ABI targets, as "X.Y"."""
    return "{}.{}".format(*torch_minimum())


def stable_abi_define() -> str:
    """The compiler flag that pins the stable-ABI target (TORCH_TARGET_VERSION)."""
    major, minor = torch_minimum()
    return f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000"
