"""``segbench upgrade-checkpoints RUN_DIR [RUN_DIR ...]``: convert checkpoints written by
segbench before 0.2 once, so that they load safely.

segbench reads checkpoints with ``torch.load(weights_only=True)``, which runs no code from the file.
Checkpoints of segbench before 0.2 pickled numpy's RNG state, which such a load refuses. This command
is the explicit opt-in for those files: it loads each one with ``weights_only=False`` (which can run
code from the file: convert only checkpoints you trust, such as your own runs), stores the numpy
state as plain numbers, checks that the result loads with ``weights_only=True``, and replaces the file
atomically (``best.pt`` stays the same file as ``last.pt`` when it was). A checkpoint that already
loads safely is left as it is.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..compat import upgrade_run
from ..errors import SegbenchError, command
from ..runs import find_runs


@command("segbench upgrade-checkpoints", catch=(FileNotFoundError,))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench upgrade-checkpoints", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run dirs, or sweep dirs holding them")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths, required=False)  # a run from before 0.2 may hold only checkpoints/
    extra = [Path(p) for p in args.paths if (Path(p) / "checkpoints").is_dir()]
    dirs = sorted({r.path for r in runs} | set(extra))
    if not dirs:
        raise SegbenchError(f"no run directories under {', '.join(args.paths)}")
    for run_dir in dirs:
        for line in upgrade_run(run_dir):
            print(line)
    return 0

