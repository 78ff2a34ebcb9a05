"""``python -m atss_ops``: what serves each op here, and why.

For when the GPU path is slower than promised: the torch build, the NVIDIA driver,
each compiled library of the package and whether it loaded (or why not), and per
op and device whether a compiled kernel or the pure-PyTorch reference serves it.
``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def report() -> dict:
    """The facts :func:`main` prints, as a dict."""
    import torch

    import atss_ops
    from atss_ops import _extension

    driver = _extension.driver_version()
    here = os.path.dirname(os.path.abspath(atss_ops.__file__))
    libraries = []
    cpu_library = [f for f in sorted(os.listdir(here)) if f.startswith("_C.") and f.endswith(".so")]
    for name in cpu_library or ["_C.abi3.so"]:
        state = "loaded" if _extension.EXTENSION_ERROR is None else f"not loaded: {_extension.EXTENSION_ERROR}"
        libraries.append({"file": name, "holds": "schemas and CPU kernels", "state": state})
    for major, path in sorted(_extension.cuda_libraries().items(), reverse=True):
        minimum, branch = _extension.DRIVER_MINIMUM.get(major, (major * 1000, "?"))
        if path == _extension.CUDA_LIBRARY:
            state = "loaded"
        elif _extension.CUDA_LIBRARY is not None:
            chosen = "the newest one" if driver is None else "the newest one the driver runs"
            state = f"not loaded: {os.path.basename(_extension.CUDA_LIBRARY)} serves ({chosen})"
        else:
            state = f"not loaded: {_extension.CUDA_ERROR}"
        libraries.append(
            {
                "file": os.path.basename(path),
                "holds": f"CUDA kernels + CUDA {major} runtime, for drivers {branch}+ "
                f"(CUDA {_extension.format_cuda_version(minimum)})",
                "state": state,
            }
        )
    gpus = []
    if torch.version.cuda is not None and driver is not None:
        try:
            for i in range(torch.cuda.device_count()):
                major, minor = torch.cuda.get_device_capability(i)
                gpus.append(f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})")
        except Exception as exc:  # a broken driver is what this report is for: say it, go on
            gpus.append(f"none usable ({exc})")
    ops = {
        op: {dev: "compiled" if atss_ops.has_kernel(op, dev) else "reference" for dev in ("cpu", "cuda")}
        for op in _extension.ALL_OPS
    }
    return {
        "atss_ops": getattr(atss_ops, "__version__", "?"),
        "package": here,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "driver_cuda": _extension.format_cuda_version(driver) if driver is not None else None,
        "driver_release": _extension.driver_release(),
        "gpus": gpus,
        "libraries": libraries,
        "ops": ops,
        "import_warning": _extension.IMPORT_WARNING,
    }


def _print(info: dict) -> None:
    print(f"atss_ops {info['atss_ops']} at {info['package']}")
    build = f"CUDA {info['torch_cuda']} build" if info["torch_cuda"] else "CPU-only build"
    print(f"torch {info['torch']} ({build}), Python {info['python']}")
    if info["driver_cuda"] is None:
        print("NVIDIA driver: none found (libcuda.so.1 does not load)")
    else:
        release = f"{info['driver_release']}, " if info["driver_release"] else ""
        print(f"NVIDIA driver: {release}supports CUDA {info['driver_cuda']}")
    if info["gpus"]:
        print("GPUs: " + "; ".join(info["gpus"]))
    print("compiled libraries:")
    file_width = max(len(lib["file"]) for lib in info["libraries"])
    holds_width = max(len(lib["holds"]) for lib in info["libraries"])
    for lib in info["libraries"]:
        print(f"  {lib['file']:<{file_width}}  {lib['holds']:<{holds_width}}  {lib['state']}")
    print("what serves each op:")
    width = max(len(op) for op in info["ops"])
    print(f"  {'op':<{width}}  {'cpu':<9}  cuda")
    for op, by_device in info["ops"].items():
        print(f"  {op:<{width}}  {by_device['cpu']:<9}  {by_device['cuda']}")
    if info["import_warning"]:
        print(f"import said: {info['import_warning']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atss_ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    args = parser.parse_args(argv)
    info = report()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
