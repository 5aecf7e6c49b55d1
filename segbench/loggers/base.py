"""What every logger shares: failures that warn once instead of stopping training, and the flat config
(:func:`segbench.config.flatten`)."""
from __future__ import annotations

import logging
from typing import Any, Callable

from ..engine import Callback
from ..engine.callbacks import TrainerView
from ..errors import describe
from ..runs import RunDir

log = logging.getLogger("segbench.train")


class Logger(Callback):
    """Base of the loggers: subclasses implement :meth:`start`, :meth:`log_epoch`, :meth:`finish` and
    :meth:`abort`; each is called through a guard, so that the first error (a server that cannot be
    reached, a full disk) is logged as one warning and the logger is off for the rest of the run."""

    name = "logger"

    def __init__(self) -> None:
        self.run_dir: RunDir | None = None
        self.config: dict = {}
        self.failed = False

    def attach(self, run_dir: RunDir, config: dict) -> "Logger":
        """The run directory and the resolved config of the run being logged."""
        self.run_dir, self.config = run_dir, config
        return self

    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        if self.failed:
            return
        try:
            fn(*args)
        except Exception as exc:  # any failure of a tracking backend must not cost the run
            self.failed = True
            log.warning("logger %s failed while %s (%s); training goes on without it, and the run "
                        "directory is written as always", self.name, what, describe(exc))

    # hooks of the training loop, guarded
    def on_fit_start(self, trainer: TrainerView, start_epoch: int) -> None:
        self._guard("starting", self.start, trainer, start_epoch)

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        self._guard(f"logging epoch {int(row['epoch'])}", self.log_epoch, trainer, row)

    def on_run_end(self, trainer: TrainerView, metrics: dict, run_dir: RunDir) -> None:
        self._guard("logging the test results", self.finish, trainer, metrics)

    def on_exception(self, trainer: TrainerView, exc: BaseException) -> None:
        self._guard("closing after an error", self.abort, exc)

    # what a logger does
    def start(self, trainer: TrainerView, start_epoch: int) -> None: ...

    def log_epoch(self, trainer: TrainerView, row: dict[str, float]) -> None: ...

    def finish(self, trainer: TrainerView, metrics: dict) -> None: ...

    def abort(self, exc: BaseException) -> None: ...


def final_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of metrics.json worth tracking: test and val_final metrics, best val IoU (as
    ``best/val_iou``, apart from the per-epoch ``val/iou``) and epoch, times."""
    keep = ("test/", "val_final/", "best_epoch", "train_time_s", "images_per_s", "params")
    renamed = {("best/val_iou" if k == "val/iou" else k): v for k, v in metrics.items()}
    return {k: float(v) for k, v in renamed.items() if (k.startswith(keep) or k == "best/val_iou")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
