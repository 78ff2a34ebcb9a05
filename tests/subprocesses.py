"""Fresh interpreters for the tests that need one: an import from another package folder,
environment variables read at load time, a memory cap."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict


def run_import(script: str, package_dir: str) -> subprocess.CompletedProcess:
    """Runs ``script`` in a fresh interpreter that imports ``atss_ops`` from ``package_dir``
    (not this tree's editable install)."""
    preamble = (
        # An editable install's finder (pip install -e) would import the built package instead.
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', type(f).__name__)]\n"
    )
    return subprocess.run(
        [sys.executable, "-c", preamble + script],
        cwd=package_dir,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=package_dir),
    )


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class env_vars:
    """Context manager: environment variables set (None: unset) for the block (e.g. ATSS_MAX_BLOCKS)."""

    def __init__(self, **values):
        self.values = values
        self.saved = {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = os.environ.get(k)
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_isolated(setup: str, calls: Dict[str, str], memory_gb: int = 8) -> subprocess.CompletedProcess:
    """Runs ``calls`` (label -> Python expression) after ``setup`` in a fresh interpreter.

    For inputs that may crash the process (a segfault would take pytest down)
    or allocate absurd amounts of memory: the child's address space is capped
    at ``memory_gb`` GiB, so a huge allocation fails fast instead of swapping.
    Each call prints one line, flushed, ``label: ok <repr>`` or
    ``label: <ExceptionType>: <message>``, so the lines before a crash survive.
    """
    lines = [
        "import sys, torch, atss_ops",
        "from atss_ops import reference",
        setup,
        "def _probe(label, fn):",
        "    try:",
        "        out = fn()",
        "        print(f'{label}: ok {out!r}'.replace(chr(10), ' '), flush=True)",
        "    except Exception as e:",
        "        print(f'{label}: {type(e).__name__}: {e}'.replace(chr(10), ' '), flush=True)",
    ]
    lines += [f"_probe({label!r}, lambda: {expr})" for label, expr in calls.items()]

    def limit():
        import resource

        cap = memory_gb << 30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.dirname(os.path.abspath(__file__))]))
    return subprocess.run(
        [sys.executable, "-c", "\n".join(lines)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def isolated_results(proc: subprocess.CompletedProcess, labels) -> Dict[str, str]:
    """label -> what ``run_isolated`` printed for it ("<no output: process died with code N>" after a crash)."""
    out = {}
    for line in proc.stdout.splitlines():
        label, _, rest = line.partition(": ")
        out[label] = rest
    died = f"<no output: the process died with code {proc.returncode}; stderr tail: {proc.stderr[-300:]!r}>"
    return {label: out.get(label, died) for label in labels}


def run_python(*args: str, timeout: int = 300, **env_extra: str) -> str:
    """Runs ``python args...`` from the repository root (on its import path, plus
    ``env_extra``); returns stdout, fails the test with the output."""
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    # Idle OpenMP threads sleep instead of spinning: several processes share few cores here.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout
