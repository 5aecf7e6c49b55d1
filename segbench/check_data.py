"""``python -m segbench.check_data dataset=ph2 [overrides]``: report every problem of a dataset, without training.

Takes the same overrides as ``python -m segbench`` (``dataset.root=...``) and
writes no run directory. Exits 0 when the dataset is usable, 1 otherwise.
"""
from __future__ import annotations

import sys

from hydra.errors import HydraException

from .config import compose_config
from .errors import SegbenchError
from .train import build


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__)
        return 0
    try:
        cfg = compose_config(overrides)
        dataset = build(cfg.dataset, "dataset")
    except (HydraException, SegbenchError) as exc:
        print(f"segbench.check_data: error: {exc}", file=sys.stderr)
        return 2
    target = cfg.dataset._target_.rsplit(".", 1)[-1]
    where = cfg.dataset.get("root", f"generated, {cfg.dataset.get('num_cases')} cases")
    print(f"checking {target} ({where}) ...")
    problems = dataset.check()
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"OK: no problems found; the split {list(dataset.split_sizes)} fits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
