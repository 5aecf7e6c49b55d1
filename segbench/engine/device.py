"""Where and how the maths runs: device, precision, memory format, threads and compilation, resolved once per run.

What ``auto`` resolves to on a CPU depends on what the CPU can do, and was measured
(``segbench bench``; the README's Speed section has the tables):

- precision: bf16 where oneDNN finds native bf16 (AVX512-BF16 or AMX), about 2x the fp32
  step there; fp32 elsewhere, where bf16 is emulated and about 8x slower;
- channels_last: on where the CPU has AVX-512 (oneDNN's NHWC convolutions were 1.3x the
  NCHW ones in fp32 on both kinds of CPU measured, and faster again in bf16); off on other
  CPUs, where it has not been measured.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
from typing import Any

import torch
from torch import nn

from ..errors import UserError, describe
from ..validation import check_choice, check_int, check_switch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, job_num: int | None = None) -> torch.device:
    """``auto`` -> cuda > mps > cpu; an explicit device must exist.

    In a multirun (``job_num`` given) on a machine with several GPUs, ``auto``
    spreads jobs over them round-robin (job i on GPU i mod count), so parallel
    launchers such as joblib give each job its own GPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            return torch.device(f"cuda:{job_num % count}" if job_num is not None and count > 1 else "cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    expected = "auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"trainer.device={name!r} is not a device; expected {expected}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name!r} but CUDA is not available here; use trainer.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device={name!r} but MPS is not available here; use trainer.device=auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"trainer.device={name!r} is not supported; expected {expected}")
    return device


@functools.cache
def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN, which runs the
    convolutions, finds it. Without it bf16 is emulated and several times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether torch's CPU kernels run with AVX-512 here (``torch.backends.cpu.get_cpu_capability``)."""
    try:
        return "AVX512" in torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp16 (with a grad scaler); on a CPU bf16 where it
    is native (:func:`cpu_native_bf16`), else fp32; fp32 on MPS. An explicit bf16 on a CPU without
    native bf16 is kept, with a warning that it is several times slower there."""
    check_choice("trainer.precision", name, PRECISIONS)
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_native_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs a CUDA device (device is {device}); use bf16 or fp32")
    if name == "bf16" and device.type == "cpu" and not cpu_native_bf16():
        log.warning(SLOW_BF16, cpu_name())
    return name


SLOW_BF16 = ("training in bf16 on a CPU without native bf16 (%s): it is emulated there and about 8x slower "
             "than fp32; trainer.precision=auto picks fp32 on this CPU")


def resolve_switch(key: str, value: Any, device: torch.device) -> bool:
    """A trainer switch (compile): ``auto`` is on for CUDA and off elsewhere."""
    check_switch(key, value)
    return device.type == "cuda" if value == "auto" else bool(value)


def resolve_channels_last(value: Any, device: torch.device) -> bool:
    """``trainer.channels_last``: ``auto`` is on for CUDA and for CPUs with AVX-512, where it measured
    faster (see the module's docstring); off elsewhere."""
    check_switch("trainer.channels_last", value)
    if value != "auto":
        return bool(value)
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_avx512())


def resolve_threads(value: Any, concurrent_jobs: int = 1) -> int:
    """``trainer.threads``: torch's intra-op CPU threads for this run. ``auto`` divides the cores this
    process may use among the jobs that run at once on the machine (a packed sweep: joblib's
    ``n_jobs``), at least 1 each; with ``OMP_NUM_THREADS`` set, that. An integer is taken as it is."""
    if value != "auto":
        return check_int("trainer.threads", value, low=1)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, usable_cores() // max(1, concurrent_jobs))


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as a SLURM job's cgroup sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of ``precision`` (fp32: disabled) on ``device``."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def maybe_compile(module: nn.Module) -> nn.Module:
    """torch.compile(module), or the module itself with a warning when torch.compile is unavailable.

    Compilation is lazy: a backend that fails on the first batch is caught by the
    trainer's forward, which falls back to eager mode the same way.
    """
    try:
        return torch.compile(module)
    except Exception as exc:  # backends fail in many ways (no compiler, unsupported platform)
        compile_fallback_warning(exc)
        return module


def compile_fallback_warning(exc: BaseException) -> None:
    log.warning("trainer.compile=true: torch.compile is unavailable here (%s); training in eager mode",
                describe(exc))
