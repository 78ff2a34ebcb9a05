"""A CUDA 12 toolkit for the wheel's ``_C_cuda12`` library, assembled from package
registries (``make cuda12-toolkit``; ``make wheel`` calls it).

NVIDIA's CUDA 12 packages on PyPI hold the headers, the static runtime, ptxas and
libdevice, but not the compiler driver ``nvcc`` nor its front ends (``cicc``,
``cudafe++``) nor ``fatbinary``. Debian's ``nvidia-cuda-toolkit`` package (non-free,
Debian 13 "trixie": CUDA 12.4) holds those. This script downloads, without installing
anything on the system:

* the ``nvidia-cuda-toolkit`` .deb, with ``apt-get download`` under a private apt
  configuration (the mirror of this machine's own Debian sources, suite trixie,
  component non-free), and unpacks nvcc, cicc, cudafe++, ptxas, fatbinary, nvlink, bin2c;
* from PyPI: ``nvidia-cuda-nvcc-cu12`` and ``nvidia-cuda-runtime-cu12`` of the same
  release (the compiler's and the runtime's headers, libdevice),
  ``nvidia-cuda-runtime-cu12`` 12.9 for ``libcudart_static.a`` (the 12.4 wheel has only
  the shared runtime; a newer runtime serves code compiled by an older nvcc) and
  ``nvidia-cuda-cccl-cu12`` 12.9 (``nv/target``, CUB, Thrust, libcu++: the 12.4 wheel
  is a yanked, empty release),

and lays them out as a toolkit (``bin/nvcc`` with its ``nvcc.profile``,
``nvvm/bin/cicc``, ``include/``, ``lib64/libcudart_static.a``, and an empty ``libcudadevrt.a``:
the kernels make no device-side launch) in ``--dest`` (default
``~/.cache/atss-ops/cuda-12``, kept between runs: about 130 MB). Prints that folder.

    python scripts/cuda12_toolkit.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

DEBIAN_SUITE = "trixie"
DEBIAN_PACKAGE = "nvidia-cuda-toolkit"
RELEASE = "12.4"
WHEELS = {
    "nvcc": "nvidia-cuda-nvcc-cu12==12.4.131",
    "runtime": "nvidia-cuda-runtime-cu12==12.4.127",
    "static": "nvidia-cuda-runtime-cu12==12.9.79",
    "cccl": "nvidia-cuda-cccl-cu12==12.9.27",
}
DEB_TOOLS = ("nvcc", "ptxas", "fatbinary", "cudafe++", "nvlink", "bin2c")
NVCC_PROFILE = """\
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
"""


def fail(message: str) -> None:
    sys.exit(f"cuda12_toolkit: {message}")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (its main archive, not security)."""
    texts = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        if os.path.isfile(path) and (path.endswith(".list") or path.endswith(".sources")):
            with open(path) as f:
                texts.append(f.read())
    for text in texts:
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M
        ):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    fail("no Debian archive in this machine's apt sources (needs a Debian-based machine with apt)")


def download_deb(work: str) -> str:
    """The .deb of DEBIAN_PACKAGE from DEBIAN_SUITE's non-free, downloaded into ``work``."""
    if shutil.which("apt-get") is None:
        fail("needs apt-get (Debian's nvidia-cuda-toolkit package holds the CUDA 12 compiler)")
    apt = os.path.join(work, "apt")
    for d in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(apt, d))
    sources = os.path.join(apt, "sources.list")
    with open(sources, "w") as f:
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        signed = f"[signed-by={keyring}] " if os.path.exists(keyring) else ""
        f.write(f"deb {signed}{debian_mirror()} {DEBIAN_SUITE} non-free\n")
    options = [
        f"-oDir::Etc::sourcelist={sources}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::Lists={apt}/lists",
        f"-oDir::Cache={apt}/cache",
        "-oAPT::Sandbox::User=root",
        "-qq",
    ]
    subprocess.run(["apt-get", *options, "update"], check=True)
    subprocess.run(["apt-get", *options, "download", DEBIAN_PACKAGE], check=True, cwd=work)
    debs = glob.glob(os.path.join(work, f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        fail(f"apt-get download {DEBIAN_PACKAGE} gave no .deb")
    version = os.path.basename(debs[0]).split("_")[1]
    if not version.startswith(RELEASE + "."):
        fail(f"{DEBIAN_SUITE}'s {DEBIAN_PACKAGE} is {version} now, not CUDA {RELEASE}: update RELEASE and WHEELS")
    return debs[0]


def download_wheel(spec: str, work: str) -> str:
    folder = tempfile.mkdtemp(dir=work)
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", folder, spec], check=True, env=env
    )
    (wheel,) = glob.glob(os.path.join(folder, "*.whl"))
    out = os.path.join(folder, "unpacked")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(out)
    return os.path.join(out, "nvidia")


def assemble(dest: str, work: str) -> None:
    deb = download_deb(work)
    debdir = os.path.join(work, "deb")
    subprocess.run(["dpkg-deb", "-x", deb, debdir], check=True)
    wheels = {key: download_wheel(spec, work) for key, spec in WHEELS.items()}
    stage = dest + ".partial"
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "nvvm/bin", "include", "lib64"):
        os.makedirs(os.path.join(stage, d))
    real = os.path.join(debdir, "usr/lib/nvidia-cuda-toolkit/bin")
    for tool in DEB_TOOLS:  # /usr/bin/nvcc is Debian's wrapper script: take the real driver
        src = os.path.join(real, tool) if tool == "nvcc" else os.path.join(debdir, "usr/bin", tool)
        shutil.copy2(src, os.path.join(stage, "bin", tool))
    shutil.copytree(os.path.join(real, "crt"), os.path.join(stage, "bin", "crt"))
    shutil.copy2(os.path.join(real, "cicc"), os.path.join(stage, "nvvm", "bin", "cicc"))
    with open(os.path.join(stage, "bin", "nvcc.profile"), "w") as f:
        f.write(NVCC_PROFILE)
    include = os.path.join(stage, "include")
    for key, sub in (("runtime", "cuda_runtime/include"), ("nvcc", "cuda_nvcc/include")):
        shutil.copytree(os.path.join(wheels[key], sub), include, dirs_exist_ok=True)
    cccl = os.path.join(wheels["cccl"], "cuda_cccl/include")
    for name in ("nv", "cub", "thrust", "cuda"):
        shutil.copytree(os.path.join(cccl, name), os.path.join(include, name), dirs_exist_ok=True)
    for stray in glob.glob(os.path.join(include, "__init__.py")):
        os.remove(stray)
    shutil.copytree(os.path.join(wheels["nvcc"], "cuda_nvcc/nvvm/libdevice"), os.path.join(stage, "nvvm", "libdevice"))
    shutil.copy2(os.path.join(wheels["static"], "cuda_runtime/lib/libcudart_static.a"), os.path.join(stage, "lib64"))
    # nvcc links the device runtime (dynamic parallelism) into every executable it links,
    # CMake's compiler check included; no wheel of CUDA <= 12.4 has it, and 12.9's is too
    # new for nvlink 12.4. The kernels make no device-side launch (no -rdc): an empty
    # archive stands in for it.
    subprocess.run(["ar", "rc", os.path.join(stage, "lib64", "libcudadevrt.a")], check=True)
    version = subprocess.run([os.path.join(stage, "bin", "nvcc"), "--version"], capture_output=True, text=True)
    if version.returncode != 0 or f"release {RELEASE}" not in version.stdout:
        fail(f"the assembled nvcc does not run: {version.stdout}{version.stderr}")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(stage, dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=os.path.expanduser("~/.cache/atss-ops/cuda-12"))
    args = parser.parse_args()
    dest = os.path.abspath(args.dest)
    nvcc = os.path.join(dest, "bin", "nvcc")
    if not os.path.exists(os.path.join(dest, "lib64", "libcudadevrt.a")) or not os.access(nvcc, os.X_OK):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="atss-cuda12-") as work:
            assemble(dest, work)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
