"""What a benchmark's figures depend on besides its arguments: the commit, the interpreter,
the machine and the versions of the libraries that compute them.

A result file records it, so that a figure can be traced to what produced it, and a run
continued or re-run elsewhere says where it may differ. The same commit (99b1c8e) and seed
gave ``fl_protocol.py``'s Friedman *nothing shared* 117.71 on the machine of its committed
rows and 114.59 on one installed later from the same ``pyproject.toml`` (Adult's: the same
to seven digits): last bits of arithmetic, which a device's decisions can amplify. Which
difference of the two machines moved them (a library's version, the CPU) is not known:
their environments were not recorded.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

#: The libraries whose versions can move a figure (numerics, training, federated engine).
PACKAGES = ("numpy", "pandas", "scipy", "scikit-learn", "torch", "coremltools", "flwr", "ray",
            "opacus", "diffprivlib")

ROOT = Path(__file__).resolve().parents[1]


def environment(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """The commit (``None`` outside a git checkout; ``dirty`` if files differ from it), the
    Python version, the platform, the CPU count and each of ``packages``' installed version
    (``None`` if it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"commit": _commit(), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "cpu": _cpu(),
            "packages": versions}


def _cpu() -> str:
    """The CPU's model and the vector instructions torch's and BLAS's kernels choose among
    (their sums round differently on other instructions). ``fl_protocol.py``'s committed
    Friedman rows of 4 December (e5b689d with changes not committed) give seed 0's
    foundation an error of 137.20; e5b689d itself, and every commit since, 135.81 on the
    host of the same evening, whose recorded environment differs in nothing but the commit:
    the CPU, not recorded then, may be what differs."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value for key, value in
              (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    flags = sorted(f for f in fields.get("flags", "").split()
                   if f.startswith(("avx", "fma", "amx")))
    return " ".join([fields.get("model name", "").strip() or platform.machine(), *flags])


def differences(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """What differs between two :func:`environment` records that can move a figure: the
    Python version, the CPU (``None`` in records made before it was recorded) and each
    package's version, as ``"name a -> b"`` (the commit and the platform are left out: a
    continued run is expected to move to a later commit); ``["not recorded"]`` when
    ``before`` is ``None``."""
    if before is None:
        return ["not recorded"]
    changed = [f"{key} {before.get(key)} -> {now.get(key)}" for key in ("python", "cpu")
               if before.get(key) != now.get(key)]
    old, new = before.get("packages", {}), now.get("packages", {})
    return changed + [f"{name} {old.get(name)} -> {new.get(name)}"
                      for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head} (dirty)" if dirty else head
