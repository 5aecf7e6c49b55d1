"""What happens around the training loop, one class each: best-epoch tracking, history.csv,
checkpoints, the epoch log line, progress bars.

A callback overrides the hooks it needs; the trainer calls them in the order the
callbacks were given. A callback with state to resume (the best epoch so far)
returns it from :meth:`Callback.state_dict`; the trainer stores it in every
checkpoint and hands it back through :meth:`Callback.load_state_dict`.
New behaviour (EMA, early stopping, loggers) is a new class here, not a change to the loop.
"""
from __future__ import annotations

import copy
import datetime
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..data import SegArrays
from ..names import DEFAULT_MONITOR
from ..runs import RunDir
from ..validation import check_choice, check_int, check_number

log = logging.getLogger("segbench.train")


class TrainerView(Protocol):
    """What a callback sees of the training loop (:class:`segbench.engine.loop.Trainer` is the one
    implementation): callbacks read these and write only ``averaged`` (EMA) and ``stop_requested``
    (early stopping). Named here so that callbacks do not import the loop that calls them."""

    settings: Any                          # FitSettings: epochs, batch size, threshold, class names, ...
    module: nn.Module                      # the network being trained
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler           # enabled under fp16 only
    history: list[dict[str, float]]        # one row per epoch so far (history.csv)
    val: SegArrays | None                  # the val split on the device, while fitting
    averaged: nn.Module | None             # set by a callback that averages the weights (EMA)
    stop_requested: bool                   # set by a callback to end training after this epoch

    def state(self, epoch: int) -> dict: ...

    def predict(self, data: SegArrays) -> torch.Tensor: ...


class Callback:
    """Hooks of the training loop; every one does nothing unless overridden."""

    def setup(self, trainer: TrainerView) -> None:
        """When the trainer is made (before a resume restores any state)."""

    def on_fit_start(self, trainer: TrainerView, start_epoch: int) -> None: ...

    def on_train_epoch_start(self, trainer: TrainerView, epoch: int, batches: int) -> None: ...

    def on_before_optimizer_step(self, trainer: TrainerView) -> None:
        """After the backward pass, before the optimizer steps (gradients are scaled under fp16)."""

    def on_train_batch_end(self, trainer: TrainerView, batch: int, running_loss: Callable[[], float]) -> None:
        """After each optimizer step; ``running_loss()`` reads the epoch's mean loss so far (a host sync)."""

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        """After validation; ``row`` is the epoch's history row, already appended to ``trainer.history``."""

    def on_fit_end(self, trainer: TrainerView) -> None: ...

    def on_exception(self, trainer: TrainerView, exc: BaseException) -> None:
        """Training stops with ``exc`` (an error, or Ctrl-C); it is raised again after every callback."""

    def on_run_end(self, trainer: TrainerView, metrics: dict, run_dir: RunDir) -> None:
        """After the test step, once metrics.json and the plots are in ``run_dir`` (loggers send them on)."""

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None: ...


MONITOR_MODES = ("max", "min", "auto")
LOWER_IS_BETTER = ("loss", "hd", "hd95")  # val metrics where auto means min


@dataclass(frozen=True)
class Monitor:
    """The val metric a run optimises (``trainer.monitor``) and its direction (``trainer.monitor_mode``):
    it picks the best checkpoint, drives early stopping and the plateau scheduler, is the value a run
    returns to a sweeper and the report's "best val" column. ``auto`` mode is ``min`` for
    ``val/loss`` (and distances), ``max`` otherwise."""

    key: str = DEFAULT_MONITOR
    mode: str = "max"

    def __post_init__(self) -> None:
        check_choice("trainer.monitor_mode", self.mode, MONITOR_MODES)
        if self.mode == "auto":
            metric = self.key.partition("/")[2]
            object.__setattr__(self, "mode", "min" if metric in LOWER_IS_BETTER else "max")

    @property
    def worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def better(self, value: float, than: float, by: float = 0.0) -> bool:
        """Whether ``value`` improves on ``than`` by more than ``by`` (False for NaN)."""
        return value > than + by if self.mode == "max" else value < than - by

    def record(self, value: float, epoch: int) -> dict:
        """metrics.json's ``monitor``: what chose the best checkpoint."""
        return {"key": self.key, "mode": self.mode, "value": value, "epoch": epoch}


class BestTracker(Callback):
    """Keeps the best epoch by the monitored history column (``val/iou``, higher is better, by default)."""

    def __init__(self, monitor: Monitor | str = DEFAULT_MONITOR, mode: str = "max") -> None:
        self.monitor = monitor if isinstance(monitor, Monitor) else Monitor(monitor, mode)
        self.epoch, self.value = 0, self.monitor.worst
        self.improved = False

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        value = row[self.monitor.key]  # NaN on an epoch that was not validated (trainer.val_every): never the best
        self.improved = self.monitor.better(value, self.value)
        if self.improved:
            self.epoch, self.value = int(row["epoch"]), value

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.value = state["epoch"], state["value"]


class GradClip(Callback):
    """Clips the gradient norm of all parameters to ``max_norm`` before every optimizer step
    (unscaled first under fp16, so the norm is the true one)."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = check_number("callbacks.grad_clip.max_norm", max_norm, 0, low_open=True)

    def on_before_optimizer_step(self, trainer: TrainerView) -> None:
        trainer.scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.module.parameters(), self.max_norm)


class EMA(Callback):
    """An exponential moving average of the weights (and BatchNorm statistics), updated after every
    optimizer step: w_ema <- decay * w_ema + (1 - decay) * w (the first step copies w).

    The averaged weights are the ones validated, chosen as best, tested and saved as a checkpoint's
    ``model``; the trained weights go into ``train_model``, so a resume continues both exactly.
    The update is ``torch.optim.swa_utils.get_ema_multi_avg_fn`` (a foreach lerp), the maths of
    ``AveragedModel``. ``AveragedModel.update_parameters`` itself is not used: it copies its CPU step
    counter to the device every step, which on a GPU waits for the queued kernels (a host sync per
    batch). Here the count is a Python int, so an update only queues kernels.
    """

    def __init__(self, decay: float) -> None:
        self.decay = check_number("callbacks.ema.decay", decay, 0, 1, low_open=True, high_open=True)
        self.update = get_ema_multi_avg_fn(self.decay)
        self.module: torch.nn.Module | None = None
        self.steps = 0  # optimizer steps averaged so far

    def setup(self, trainer: TrainerView) -> None:
        self.module = copy.deepcopy(trainer.module).eval()
        self.module.requires_grad_(False)
        trainer.averaged = self.module

    def on_train_batch_end(self, trainer: TrainerView, batch: int, running_loss: Callable[[], float]) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        trained = [t.detach() for t in (*trainer.module.parameters(), *trainer.module.buffers())]
        with torch.no_grad():
            if self.steps == 0:
                torch._foreach_copy_(averaged, trained)
            else:  # one foreach call per dtype (and device), as AveragedModel groups them
                groups: dict[tuple, tuple[list, list]] = {}
                for mine, theirs in zip(averaged, trained, strict=True):
                    pair = groups.setdefault((mine.device, mine.dtype), ([], []))
                    pair[0].append(mine)
                    pair[1].append(theirs)
                for mine, theirs in groups.values():
                    self.update(mine, theirs, self.steps)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"n_averaged": self.steps}  # the name AveragedModel gives it, as in earlier checkpoints

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["n_averaged"])


class EarlyStopping(Callback):
    """Stops training when the monitored val metric (``trainer.monitor``) has not improved by more than
    ``min_delta`` for ``patience`` validations; ``stopped_epoch`` is the last epoch trained (None when
    it did not stop)."""

    def __init__(self, patience: int, min_delta: float = 0.0, monitor: Monitor | str = DEFAULT_MONITOR,
                 mode: str = "auto") -> None:
        self.patience = check_int("callbacks.early_stop.patience", patience, low=1)
        self.min_delta = check_number("callbacks.early_stop.min_delta", min_delta, 0)
        self.monitor = monitor if isinstance(monitor, Monitor) else Monitor(monitor, mode)
        self.best, self.wait, self.stopped_epoch = self.monitor.worst, 0, None

    def on_fit_start(self, trainer: TrainerView, start_epoch: int) -> None:
        trainer.stop_requested = self.stopped_epoch is not None  # a resumed run that had already stopped

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        value = row[self.monitor.key]
        if math.isnan(value):
            return  # not validated (trainer.val_every): patience counts validations
        if self.monitor.better(value, self.best, self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(row["epoch"])
            trainer.stop_requested = True
            log.info("early stopping after epoch %d: %s has not improved by more than %g for %d validations",
                     self.stopped_epoch, self.monitor.key, self.min_delta, self.patience)

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.stopped_epoch = state["best"], state["wait"], state["stopped_epoch"]


class HistoryWriter(Callback):
    """Rewrites history.csv after every epoch (and at a resume, dropping rows of an unfinished epoch)."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    def on_fit_start(self, trainer: TrainerView, start_epoch: int) -> None:
        if trainer.history:
            self.run_dir.write_history(trainer.history)

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        self.run_dir.write_history(trainer.history)


class Checkpointer(Callback):
    """Writes ``last.pt`` after every epoch, in the background, and makes ``best.pt`` the same file
    when the epoch is the best so far. ``config`` (the resolved run config) goes into every checkpoint,
    so a run can be rebuilt from it alone. Training ends only after the last write is on disk."""

    def __init__(self, run_dir: RunDir, best: BestTracker, config: dict | None = None) -> None:
        self.run_dir, self.best, self.config = run_dir, best, config or {}

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        state = {**trainer.state(int(row["epoch"])), "config": self.config}
        self.run_dir.save_checkpoint(state, best=self.best.improved)

    def on_fit_end(self, trainer: TrainerView) -> None:
        self.run_dir.wait_for_checkpoints()

    def on_exception(self, trainer: TrainerView, exc: BaseException) -> None:
        try:  # the last good epoch reaches the disk before the error goes on
            self.run_dir.wait_for_checkpoints()
        except Exception as write_error:  # the original error matters more; report this one
            log.error("%s", write_error)


class EpochLogger(Callback):
    """One log line per epoch (train.log and the console)."""

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        if math.isnan(row["val/iou"]):  # not validated (trainer.val_every)
            log.info("epoch %d/%d  lr %.2e  train/loss %.4f  train/iou %.4f  (%.1fs)", row["epoch"],
                     trainer.settings.epochs, row["lr"], row["train/loss"], row["train/iou"], row["time"])
            return
        log.info(
            "epoch %d/%d  lr %.2e  train/loss %.4f  train/iou %.4f  val/loss %.4f  val/iou %.4f  val/dice %.4f  "
            "(%.1fs)",
            row["epoch"], trainer.settings.epochs, row["lr"], row["train/loss"], row["train/iou"], row["val/loss"],
            row["val/iou"], row["val/dice"], row["time"],
        )


def duration(seconds: float) -> str:
    """``3 h 05 min``, ``12 min 30 s``, ``42 s``: how a person reads a wait."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class TimeEstimate(Callback):
    """Logs the estimated time to the end of training: after the first epoch of a launch, then every
    ``every`` epochs (about a tenth of the run by default). The estimate is the mean wall time of the
    epochs this launch has trained (training, validation, checkpoint) times the epochs left.

    ``slow_hint``, when given, is logged once if the whole run is estimated at more than ``slow_after``
    seconds; it is judged early, from the first batches, so that a user does not wait an epoch to learn
    it (a preset made for a GPU, run on a CPU, says which preset is made for a CPU).
    """

    def __init__(self, every: int | None = None, slow_hint: str | None = None, slow_after: float = 3600.0) -> None:
        self.every, self.slow_hint, self.slow_after = every, slow_hint, slow_after
        self.start = self.first_batch = 0.0
        self.start_epoch = 1
        self.epochs_done = self.batches = 0
        self.hinted = False

    def on_fit_start(self, trainer: TrainerView, start_epoch: int) -> None:
        self.start, self.start_epoch, self.epochs_done = time.perf_counter(), start_epoch, 0
        if self.every is None:
            self.every = max(1, trainer.settings.epochs // 10)

    def on_train_batch_end(self, trainer: TrainerView, batch: int, running_loss: Callable[[], float]) -> None:
        if self.slow_hint is None or self.hinted or self.epochs_done:
            return
        if batch == 1:  # the first batch pays for warm-up (allocation, autotuning): measured from its end
            self.first_batch = time.perf_counter()
        elif batch == 2 and self.batches > 2:  # one batch tells the order of magnitude, which is what matters
            per_batch = time.perf_counter() - self.first_batch
            left = trainer.settings.epochs - self.start_epoch + 1
            self._hint(per_batch * self.batches * left)

    def on_train_epoch_start(self, trainer: TrainerView, epoch: int, batches: int) -> None:
        self.batches = batches

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        self.epochs_done += 1
        epoch, total = int(row["epoch"]), trainer.settings.epochs
        left = total - epoch
        if left <= 0 or (self.epochs_done > 1 and self.epochs_done % self.every):
            return
        per_epoch = (time.perf_counter() - self.start) / self.epochs_done
        estimate = per_epoch * left
        finish = datetime.datetime.now() + datetime.timedelta(seconds=estimate)
        log.info("estimated %s to finish training (%d of %d epochs left at %.1f s each; about %s), then the test",
                 duration(estimate), left, total, per_epoch, finish.strftime("%H:%M"))
        self._hint(estimate)

    def _hint(self, estimate: float) -> None:
        if self.slow_hint and not self.hinted and estimate > self.slow_after:
            self.hinted = True
            log.warning("this run is estimated at %s of training here: %s", duration(estimate), self.slow_hint)


class ProgressBar(Callback):
    """tqdm bars: one over epochs (val IoU, best so far), one over the batches of an epoch with the
    running loss, read every ``log_every`` batches (each read is a host sync)."""

    def __init__(self, log_every: int = 10, best: BestTracker | None = None) -> None:
        self.log_every, self.best = log_every, best
        self.epochs: Any = None
        self.batches: Any = None

    def on_fit_start(self, trainer: TrainerView, start_epoch: int) -> None:
        total = trainer.settings.epochs
        self.epochs = tqdm(total=total, initial=start_epoch - 1, desc="epochs", dynamic_ncols=True)

    def on_train_epoch_start(self, trainer: TrainerView, epoch: int, batches: int) -> None:
        self.batches = tqdm(total=batches, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)

    def on_before_optimizer_step(self, trainer: TrainerView) -> None:
        """After the backward pass, before the optimizer steps (gradients are scaled under fp16)."""

    def on_train_batch_end(self, trainer: TrainerView, batch: int, running_loss: Callable[[], float]) -> None:
        self.batches.update()
        if batch % self.log_every == 0 or batch == self.batches.total:
            self.batches.set_postfix(loss=f"{running_loss():.4f}")
        if batch == self.batches.total:
            self.batches.close()

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        if not math.isnan(row["val/iou"]):  # a validated epoch (trainer.val_every)
            postfix = {"val/iou": f"{row['val/iou']:.3f}"}
            if self.best is not None:
                postfix["best"] = f"{self.best.value:.3f}@{self.best.epoch}"
            self.epochs.set_postfix(postfix)
        self.epochs.update()

    def _close(self) -> None:
        for bar in (self.batches, self.epochs):
            if bar is not None:
                bar.close()

    def on_fit_end(self, trainer: TrainerView) -> None:
        self._close()

    def on_exception(self, trainer: TrainerView, exc: BaseException) -> None:
        self._close()
