"""Where and how the maths runs: device, precision, memory format and compilation, resolved once per run."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..errors import UserError, describe
from ..validation import check_choice, check_switch

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


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp16 (with a grad scaler); fp32 on CPU and MPS."""
    check_choice("trainer.precision", name, PRECISIONS)
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise UserError(f"trainer.precision=fp16 needs a CUDA device (device is {device}); use bf16 or fp32")
    return name


def resolve_switch(key: str, value: Any, device: torch.device) -> bool:
    """A trainer switch (channels_last, compile): ``auto`` is on for CUDA and off elsewhere."""
    check_switch(key, value)
    return device.type == "cuda" if value == "auto" else bool(value)


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
