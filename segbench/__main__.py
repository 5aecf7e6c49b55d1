"""``python -m segbench [overrides]``: compose the config and call :func:`segbench.train.run`."""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from segbench.errors import UserError

log = logging.getLogger("segbench")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the best validation IoU (what a Hydra sweeper would optimise)."""
    from segbench.train import run  # imported here so `--help` stays fast

    try:
        metrics = run(cfg)
    except UserError as exc:
        log.error("%s", exc)
        print(f"segbench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return float(metrics["val/iou"])


if __name__ == "__main__":
    main()
