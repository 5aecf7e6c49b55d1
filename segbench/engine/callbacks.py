"""What happens around the training loop, one class each: best-epoch tracking, history.csv,
checkpoints, the epoch log line, progress bars.

A callback overrides the hooks it needs; the trainer calls them in the order the
callbacks were given. A callback with state to resume (the best epoch so far)
returns it from :meth:`Callback.state_dict`; the trainer stores it in every
checkpoint and hands it back through :meth:`Callback.load_state_dict`.
New behaviour (EMA, early stopping, loggers) is a new class here, not a change to the loop.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Callable

from tqdm.auto import tqdm

from ..rundir import RunDir

if TYPE_CHECKING:
    from .loop import Trainer

log = logging.getLogger("segbench.train")


class Callback:
    """Hooks of the training loop; every one does nothing unless overridden."""

    def on_fit_start(self, trainer: "Trainer", start_epoch: int) -> None: ...

    def on_train_epoch_start(self, trainer: "Trainer", epoch: int, batches: int) -> None: ...

    def on_train_batch_end(self, trainer: "Trainer", batch: int, running_loss: Callable[[], float]) -> None:
        """After each optimizer step; ``running_loss()`` reads the epoch's mean loss so far (a host sync)."""

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        """After validation; ``row`` is the epoch's history row, already appended to ``trainer.history``."""

    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None:
        """Training stops with ``exc`` (an error, or Ctrl-C); it is raised again after every callback."""

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None: ...


class BestTracker(Callback):
    """Keeps the best epoch by a history column (``val/iou``, higher is better, by default)."""

    def __init__(self, monitor: str = "val/iou", mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.epoch, self.value = 0, -math.inf if mode == "max" else math.inf
        self.improved = False

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        value = row[self.monitor]
        self.improved = value > self.value if self.mode == "max" else value < self.value
        if self.improved:
            self.epoch, self.value = int(row["epoch"]), value

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.value = state["epoch"], state["value"]


class HistoryWriter(Callback):
    """Rewrites history.csv after every epoch (and at a resume, dropping rows of an unfinished epoch)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    def on_fit_start(self, trainer: "Trainer", start_epoch: int) -> None:
        if trainer.history:
            self.run_dir.write_history(trainer.history)

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        self.run_dir.write_history(trainer.history)


class Checkpointer(Callback):
    """Writes ``last.pt`` after every epoch, in the background, and makes ``best.pt`` the same file
    when the epoch is the best so far. ``config`` (the resolved run config) goes into every checkpoint,
    so a run can be rebuilt from it alone. Training ends only after the last write is on disk."""

    def __init__(self, run_dir: RunDir, best: BestTracker, config: dict | None = None) -> None:
        self.run_dir, self.best, self.config = run_dir, best, config or {}

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        state = {**trainer.state(int(row["epoch"])), "config": self.config}
        self.run_dir.save_checkpoint(state, best=self.best.improved)

    def on_fit_end(self, trainer: "Trainer") -> None:
        self.run_dir.wait_for_checkpoints()

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None:
        try:  # the last good epoch reaches the disk before the error goes on
            self.run_dir.wait_for_checkpoints()
        except Exception as write_error:  # the original error matters more; report this one
            log.error("%s", write_error)


class EpochLogger(Callback):
    """One log line per epoch (train.log and the console)."""

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        log.info(
            "epoch %d/%d  lr %.2e  train/loss %.4f  train/iou %.4f  val/loss %.4f  val/iou %.4f  val/dice %.4f  (%.1fs)",
            row["epoch"], trainer.settings.epochs, row["lr"], row["train/loss"], row["train/iou"], row["val/loss"],
            row["val/iou"], row["val/dice"], row["time"],
        )


class ProgressBar(Callback):
    """tqdm bars: one over epochs (val IoU, best so far), one over the batches of an epoch with the
    running loss, read every ``log_every`` batches (each read is a host sync)."""

    def __init__(self, log_every: int = 10, best: BestTracker | None = None) -> None:
        self.log_every, self.best = log_every, best
        self.epochs: Any = None
        self.batches: Any = None

    def on_fit_start(self, trainer: "Trainer", start_epoch: int) -> None:
        total = trainer.settings.epochs
        self.epochs = tqdm(total=total, initial=start_epoch - 1, desc="epochs", dynamic_ncols=True)

    def on_train_epoch_start(self, trainer: "Trainer", epoch: int, batches: int) -> None:
        self.batches = tqdm(total=batches, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)

    def on_train_batch_end(self, trainer: "Trainer", batch: int, running_loss: Callable[[], float]) -> None:
        self.batches.update()
        if batch % self.log_every == 0 or batch == self.batches.total:
            self.batches.set_postfix(loss=f"{running_loss():.4f}")
        if batch == self.batches.total:
            self.batches.close()

    def on_epoch_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        postfix = {"val/iou": f"{row['val/iou']:.3f}"}
        if self.best is not None:
            postfix["best"] = f"{self.best.value:.3f}@{self.best.epoch}"
        self.epochs.set_postfix(postfix)
        self.epochs.update()

    def _close(self) -> None:
        for bar in (self.batches, self.epochs):
            if bar is not None:
                bar.close()

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._close()

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None:
        self._close()
