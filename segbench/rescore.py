"""``python -m segbench.rescore RUN_DIR [RUN_DIR ...]``: score finished runs again with the current metrics.

The same as ``python -m segbench.evaluate RUN_DIR ... --in-place`` (one code path, in
:mod:`segbench.evaluate`): each run's best checkpoint and saved config predict its val and test splits
(the case ids of its split.json) with the run's own threshold rule, test-time augmentation,
post-processing and resolution, and its metrics.json (``test/*``, ``val_final/*``, the per-group
breakdown, the definitions) and test_per_image.csv are rewritten. Training results (best epoch, val IoU
of the epochs, timings) are kept; metrics.json records the rescoring under ``rescored``. Use it when a
metric's definition changes, so that old runs compare with new ones. The dataset is read from where
the run read it, or from ``--dataset-root``.
"""
from __future__ import annotations

import sys

from . import evaluate
from .evaluate import rescore

__all__ = ["main", "rescore"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    return evaluate.main(["--in-place", *args])


if __name__ == "__main__":
    sys.exit(main())
