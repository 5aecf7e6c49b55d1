"""``python -m segbench.upgrade_checkpoints RUN_DIR [RUN_DIR ...]``: convert checkpoints written by
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
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .errors import SegbenchError, command
from .runs.atomic import atomic_file
from .runs.checkpoint import load_checkpoint
from .runs import find_runs

log = logging.getLogger(__name__)


def _plain_numpy_state(state: object) -> dict:
    """numpy's legacy RNG state tuple (as ``np.random.get_state()`` returns it) as segbench 0.2 stores it."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": np.asarray(keys).tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def converted(state: dict) -> dict:
    """``state`` (a segbench checkpoint loaded with weights_only=False) in the form a safe load reads."""
    state = dict(state)
    rng = dict(state.get("rng") or {})
    if isinstance(rng.get("numpy"), tuple):
        rng["numpy"] = _plain_numpy_state(rng["numpy"])
        state["rng"] = rng
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, map_location="cpu", weights_only=True)  # raises if anything unsafe is left
    return state


def upgrade_file(path: Path) -> bool:
    """Convert one checkpoint in place; False when it already loads safely."""
    try:
        load_checkpoint(path)
        return False
    except SegbenchError:
        pass
    state = torch.load(path, map_location="cpu", weights_only=False)  # the explicit opt-in: trusted files only
    if not isinstance(state, dict):
        raise SegbenchError(f"'{path}' is not a segbench checkpoint (it holds a {type(state).__name__})")
    try:
        safe = converted(state)
    except Exception as exc:  # noqa: BLE001 - what the safe load still refuses
        raise SegbenchError(f"'{path}' holds more than segbench writes; it cannot be converted ({exc})") from exc
    with atomic_file(path) as tmp:
        torch.save(safe, tmp)
    return True


def upgrade_run(run_dir: Path) -> list[str]:
    """Convert the checkpoints of one run dir; returns what was done, a line per file."""
    done: list[str] = []
    folder = Path(run_dir) / "checkpoints"
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    by_inode: dict[tuple[int, int], Path] = {}
    for path in files:
        stat = path.stat()
        first = by_inode.setdefault((stat.st_dev, stat.st_ino), path)
        if first is not path:  # a hard link (best.pt of last.pt): made the same converted file again
            if first.stat().st_ino != stat.st_ino:
                tmp = path.with_name(f".{path.name}.link.tmp")
                tmp.unlink(missing_ok=True)
                os.link(first, tmp)
                os.replace(tmp, path)
            done.append(f"{path}: the same file as {first.name}")
            continue
        done.append(f"{path}: {'converted' if upgrade_file(path) else 'already safe, left as it is'}")
    return done


@command("segbench.upgrade_checkpoints", catch=(FileNotFoundError,))
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segbench.upgrade_checkpoints", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run dirs, or sweep dirs holding them")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    extra = [Path(p) for p in args.paths if (Path(p) / "checkpoints").is_dir()]
    dirs = sorted({r.path for r in runs} | set(extra))
    if not dirs:
        raise SegbenchError(f"no run directories under {', '.join(args.paths)}")
    for run_dir in dirs:
        for line in upgrade_run(run_dir):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
