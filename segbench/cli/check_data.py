"""``segbench check-data dataset=ph2 [overrides]``: report every problem of a dataset, without training.

Takes the same overrides as ``segbench`` (``dataset.root=...``, ``split.sizes=...``)
and writes no run directory. Exits 0 when the dataset is usable, 1 otherwise.
"""
from __future__ import annotations

import sys

from hydra.errors import HydraException

from ..build import build
from ..config import check_missing, compose_config
from ..errors import SegbenchError, command


@command("segbench check-data", catch=(HydraException,))
def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__)
        return 0
    cfg = compose_config(overrides)
    check_missing(cfg)
    dataset = build(cfg.dataset, "dataset")
    split = build(cfg.split, "split")
    print(f"checking {dataset.describe()} ...")
    try:
        problems, readable = dataset.check()
    except SegbenchError as exc:
        problems, readable = [str(exc)], 0
    if readable and (problem := split.check(readable, "readable cases")):
        problems.append(problem)
    if not problems:  # the split made from the case ids (a split file naming unknown cases, say)
        try:
            ids = dataset.case_ids()
            split.make(ids, subjects=dataset.read_subjects(ids))
        except SegbenchError as exc:
            problems.append(str(exc))
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"OK: no problems found; {readable} readable cases, and the {split.name} split fits")
    return 0

