"""``python -m segbench.check_data dataset=ph2 [overrides]``: report every problem of a dataset, without training.

Takes the same overrides as ``python -m segbench`` (``dataset.root=...``) and
writes no run directory. Exits 0 when the dataset is usable, 1 otherwise.
"""
from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate

from .errors import SegbenchError
from .summary import CONF_DIR


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(__doc__)
        return 0
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        dataset = instantiate(cfg.dataset, _convert_="all")
    except (HydraException, SegbenchError, ValueError, TypeError) as exc:
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
