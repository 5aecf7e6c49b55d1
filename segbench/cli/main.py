"""The ``segbench`` command: ``segbench COMMAND [args]`` runs one of :data:`COMMANDS`; ``segbench
[overrides]`` (a first argument that is not a command) trains, as ``segbench train [overrides]``."""
from __future__ import annotations

import importlib
import sys

# name: (module under segbench.cli, what it does in one line)
COMMANDS = {
    "train": ("train", "train one run, or a sweep with -m (the default: segbench key=value ... trains)"),
    "evaluate": ("evaluate", "score trained runs on a labelled dataset (or their own test split), and compare"),
    "predict": ("predict", "apply trained runs (or their ensemble) to new images: masks, overlays, a CSV"),
    "export": ("export", "write a trained run as an ONNX or TorchScript model file"),
    "compare": ("compare", "the comparison report of run or sweep directories"),
    "rescore": ("rescore", "score finished runs again with the current metrics, in place"),
    "check-data": ("check_data", "report every problem of a dataset, without training"),
    "bench": ("bench", "time the trainer against a notebook loop and the bare ceiling"),
    "summary": ("summary", "parameters, GFLOPs and output shape of every model config"),
    "upgrade-checkpoints": ("upgrade_checkpoints", "convert trusted checkpoints from before segbench 0.2 once"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items()]
    return "\n".join([
        "usage: segbench [COMMAND] [ARGS ...]",
        "       segbench [key=value ...]          (no command: train; segbench train --help lists the config)",
        "",
        "Config-driven training and comparison of segmentation networks.",
        "",
        "commands:",
        *lines,
        "",
        "segbench COMMAND --help prints a command's usage; python -m segbench.<module> runs the same command",
        "(python -m segbench.check_data, python -m segbench.evaluate, ...).",
    ])


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        print(usage())
        return 0
    name = args.pop(0) if args and args[0] in COMMANDS else "train"
    module = importlib.import_module(f"segbench.cli.{COMMANDS[name][0]}")
    return module.main(args)
