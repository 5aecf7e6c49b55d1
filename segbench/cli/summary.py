"""``segbench summary``: parameters, forward GFLOPs and output shape of every model config.

    segbench summary --size 256 --base-width 64
"""
from __future__ import annotations

import argparse

from ..errors import UserError, command
from ..perf.summary import model_names, summarize


@command("segbench summary")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench summary", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="input side in pixels (default 256)")
    parser.add_argument("--base-width", type=int, default=64,
                        help="model.base_width for every model (0: each config's own)")
    parser.add_argument("--models", nargs="*", default=None, help="model config names (default: all in conf/model)")
    args = parser.parse_args(argv)
    names = args.models or model_names()
    unknown = sorted(set(names) - set(model_names()))
    if unknown:
        parser.error(f"unknown model config(s) {unknown}; available: {model_names()}")
    print(f"Forward pass of one {args.size}x{args.size} RGB image; GFLOPs counted by torch.utils.flop_counter "
          "(2 per multiply-add).\n")
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
    return 0
