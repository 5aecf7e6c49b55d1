"""Where a run ran: segbench's version and commit, the libraries, the machine, the device, the command.

CPU results are exact on one machine but differ in the last digits across CPUs (and bf16 on one
CPU against fp32 on another differs more), so every run dir records this, and the comparison
report warns when the runs it compares differ in torch version or kind of device.
"""
from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import segbench

from .device import cpu_name, cpu_native_bf16

# the libraries whose versions can change a result or the way a run is read
PACKAGES = ("hydra-core", "omegaconf", "numpy", "scipy", "scikit-image", "kornia", "pillow", "optuna", "monai")


@functools.cache
def git_state() -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` when segbench runs from a git checkout, else None."""
    root = Path(segbench.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(changes.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {k: v for k, v in versions.items() if v is not None}


def device_kind(device: torch.device | str) -> str:
    """``cpu``, ``cuda`` or ``mps``: what the report compares (one GPU model against another is not flagged)."""
    return torch.device(device).type


def provenance(device: torch.device, precision: str, channels_last: bool, threads: int) -> dict[str, Any]:
    """This process's record: when, the command line, versions, machine, device and how the maths ran."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "segbench": segbench.__version__,
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "packages": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_native_bf16": cpu_native_bf16(),
        "cpu_threads": threads,
        "gpu": gpu,
        "device": str(device),
        "device_kind": device_kind(device),
        "precision": precision,
        "memory_format": "channels_last" if channels_last else "contiguous",
    }
