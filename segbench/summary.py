"""``python -m segbench.summary``: parameters, forward GFLOPs and output shape of every model config.

    python -m segbench.summary --size 256 --base-width 64
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .build import build
from .config import CONF_DIR, compose_config
from .errors import UserError


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segbench.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (default 256)")
    parser.add_argument("--base-width", type=int, default=64, help="model.base_width for every model (0: each config's own)")
    parser.add_argument("--models", nargs="*", default=None, help="model config names (default: all in conf/model)")
    args = parser.parse_args(argv)
    names = args.models or model_names()
    unknown = sorted(set(names) - set(model_names()))
    if unknown:
        parser.error(f"unknown model config(s) {unknown}; available: {model_names()}")
    print(f"Forward pass of one {args.size}x{args.size} RGB image; GFLOPs counted by torch.utils.flop_counter (2 per multiply-add).\n")
    print("| model | base width | parameters | GFLOPs | output shape |")
    print("|---|---|---|---|---|")
    for name in names:
        try:
            row = summarize(name, args.size, args.base_width or None)
        except UserError as exc:  # an optional extra's model without the extra: the row says so
            print(f"| `{name}` | - | - | - | {exc} |")
            continue
        shape = "x".join(str(d) for d in row["output"])
        print(f"| `{name}` | {row['base_width']} | {row['params']:,} | {row['gflops']:.1f} | {shape} |")


if __name__ == "__main__":
    main()
