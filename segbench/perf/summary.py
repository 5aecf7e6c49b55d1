"""Parameters, forward GFLOPs and output shape of a model config (what ``segbench summary`` tabulates)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..build import build
from ..config import CONF_DIR, compose_config


def model_names(conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))


def summarize(name: str, size: int, base_width: int | None, in_channels: int = 3) -> dict:
    """Params, forward GFLOPs for one (1, in_channels, size, size) image, and output shape."""
    # experiment=none: each model config as it stands (an experiment may set model.base_width)
    overrides = ["experiment=none", f"model={name}"] + ([f"model.base_width={base_width}"] if base_width else [])
    cfg = compose_config(overrides)
    model = build(cfg.model, "model").eval()
    x = torch.zeros(1, in_channels, size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(x)
    return {
        "model": name,
        "base_width": cfg.model.base_width,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": counter.get_total_flops() / 1e9,
        "output": tuple(out.shape),
    }
