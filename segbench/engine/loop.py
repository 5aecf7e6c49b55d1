"""The training loop over in-memory tensors: fit, evaluate, predict.

Batches are indexed from the split's uint8 tensors on the device and
normalised there; per-batch statistics are accumulated on the device and read
once per epoch (no host synchronisation per batch). What happens around the
loop (history.csv, checkpoints, best epoch, progress bars, logging) is done by
callbacks (:mod:`segbench.engine.callbacks`); the loop itself never writes a file.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data import SegArrays
from ..errors import TrainingError
from ..metrics import class_keys, image_metrics
from ..names import VAL_COLUMNS
from ..validation import check_choice
from . import distributed
from .callbacks import Callback
from .device import AUTOCAST_DTYPES, autocast, compile_fallback_warning, maybe_compile
from .normalize import Normalizer
from .schedule import Schedule
from .signals import Stopped, deferred, held_signal

log = logging.getLogger(__name__)


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


class OutOfMemory(TrainingError):
    """The device ran out of memory; the message names the batch size and what to try."""


def out_of_memory(exc: BaseException, what: str, batch_size: int, key: str) -> OutOfMemory:
    smaller = max(1, batch_size // 2)
    return OutOfMemory(
        f"out of GPU memory during {what} at {key}={batch_size}: try {key}={smaller}, or a smaller "
        f"model.base_width or dataset.image_size ({str(exc).splitlines()[0]})"
    )


def numpy_rng_state() -> dict:
    """numpy's global RNG state in plain types (a list, not an array), which ``torch.load(weights_only=True)``
    reads: a checkpoint holds nothing that unpickling could run."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def set_numpy_rng_state(state: dict) -> None:
    np.random.set_state((state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
                         state["cached"]))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (weights initialisation); batch order has its own generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def class_val_columns(class_names: Sequence[str] | None = None) -> list[str]:
    """A multi-class run's per-class val columns (``val/iou_<class>``, ``val/dice_<class>``); [] when binary."""
    if not class_names:
        return []
    return [f"val/{m}_{c}" for c in class_keys(class_names, len(class_names)) for m in ("iou", "dice")]


def val_columns(class_names: Sequence[str] | None = None) -> list[str]:
    """The val columns of a history row: ``val/loss``, ``val/iou``, ``val/dice``, and per class for a
    multi-class run (:func:`class_val_columns`): what ``trainer.monitor`` can be."""
    return [*VAL_COLUMNS, *class_val_columns(class_names)]

@dataclass(frozen=True)
class FitSettings:
    """How the loop trains: what a run resolves from ``trainer.*`` and ``eval.threshold``.

    ``threshold`` binarises sigmoid outputs for the per-epoch IoU/Dice;
    ``precision`` is one of fp32/bf16/fp16 (already resolved for the device).
    """

    epochs: int
    batch_size: int
    eval_batch_size: int = 50
    threshold: float = 0.5
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    class_names: tuple[str, ...] | None = None  # multi-class: names for the per-class val columns
    val_every: int = 1  # validate after every n-th epoch and after the last; the others' val columns are NaN
    sync_batchnorm: bool = True  # with several ranks: BatchNorm statistics over the whole batch

    def validates(self, epoch: int) -> bool:
        """Whether ``epoch`` is validated (the best epoch, early stopping and a monitored scheduler see only those)."""
        return epoch % self.val_every == 0 or epoch == self.epochs

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, AUTOCAST_DTYPES)  # resolved already: no 'auto' here


class Trainer:
    """Fits a model on one split and evaluates on others.

    Args:
        model: maps normalised (B, 3, H, W) float to (B, C, H, W) logits.
        loss_fn: (logits, float target (B, 1, H, W)) -> scalar loss.
        optimizer: built for ``model``'s parameters.
        settings: epochs, batch sizes, precision, ... (:class:`FitSettings`).
        device: where the model and the data live.
        schedule: the learning-rate scheduler and when it steps (per batch or per epoch), or None.
        callbacks: called at fit, epoch and batch boundaries, in order.
        augment: (images (B, 3, H, W) float in [0, 1], masks (B, 1, H, W) float) -> the same, augmented;
            applied to training batches only (:mod:`segbench.augment`), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer | None,
        settings: FitSettings,
        device: torch.device,
        schedule: Schedule | None = None,
        callbacks: Sequence[Callback] = (),
        augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.settings, self.device = settings, device
        self.world = distributed.current()  # one process, or this rank of a data-parallel run
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
        if self.world.distributed and settings.sync_batchnorm:
            model = distributed.sync_batchnorm(model, device.type)
        self.module = model.to(device, memory_format=self.memory_format)  # the eager module: checkpoints
        runner = self.module
        if self.world.distributed:  # gradients averaged over the ranks (the weights start as rank 0's)
            from torch.nn.parallel import DistributedDataParallel

            runner = DistributedDataParallel(self.module, device_ids=[device] if device.type == "cuda" else None)
        self.model = maybe_compile(runner) if settings.compile else runner  # what runs the batches
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.loss_fn, self.optimizer, self.schedule, self.augment = loss_fn, optimizer, schedule, augment
        self.callbacks = list(callbacks)
        self.eval_batch_size = settings.eval_batch_size  # halved on out-of-memory
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        self.normalizer: Normalizer | None = None
        self.history: list[dict] = []
        self.train_time, self.train_images = 0.0, 0
        self.stop_requested = False  # a callback (early stopping) may end training after an epoch
        # weights that validation, testing and checkpoints use instead of the trained ones (EMA sets them)
        self.averaged: nn.Module | None = None
        self.val: SegArrays | None = None  # the val split on the device, while fitting
        self._call("setup")

    def run_end(self, metrics: dict, run_dir: Any) -> None:
        """Tell the callbacks the run is complete (metrics.json and plots written): ``on_run_end``."""
        self._call("on_run_end", metrics, run_dir)

    def callback(self, kind: type) -> Any:
        """The first callback of class ``kind``, or None."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # -- state -------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        """Everything needed to continue exactly after ``epoch``: weights, optimiser, scheduler, RNGs,
        history and the callbacks' own state."""
        averaged = {"train_model": self.module.state_dict()} if self.averaged is not None else {}
        return {
            "model": self.eval_module.state_dict(),  # the weights that were validated (EMA ones, with EMA)
            **averaged,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.schedule.state_dict() if self.schedule is not None else None,
            "epoch": epoch,
            "normalizer": {"mean": self.normalizer.mean, "std": self.normalizer.std},
            "history": self.history,
            "train_time": self.train_time,
            "train_images": self.train_images,
            "rng": {
                "batch_order": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": numpy_rng_state(),
                "python": random.getstate(),
            },
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks if cb.state_dict() is not None},
            # how the maths ran: a resume keeps it (trainer.precision=auto may resolve otherwise on another machine)
            "settings": {"precision": self.settings.precision, "channels_last": self.settings.channels_last},
        }

    def load_state(self, state: dict) -> int:
        """Restore a state saved by :meth:`state` (read with every tensor on the CPU); returns the epoch
        to continue from."""
        if "train_model" in state:  # "model" holds averaged weights
            self.module.load_state_dict(state["train_model"])
        self.eval_module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.schedule is not None and state["scheduler"] is not None:
            self.schedule.load_state_dict(state["scheduler"])
        self.normalizer = Normalizer(**state["normalizer"])
        self.history = state["history"]
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        rng = state["rng"]
        self.generator.set_state(rng["batch_order"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        set_numpy_rng_state(rng["numpy"])
        random.setstate(rng["python"])
        saved = state.get("callbacks", {})
        for cb in self.callbacks:
            if type(cb).__name__ in saved:
                cb.load_state_dict(saved[type(cb).__name__])
        return state["epoch"] + 1

    def load_weights(self, state: dict) -> None:
        """The evaluated weights of a checkpoint (e.g. best.pt), for testing or predicting."""
        self.eval_module.load_state_dict(state["model"])

    @property
    def eval_module(self) -> nn.Module:
        """The module that validation and testing run: the averaged one with EMA, else the trained one."""
        return self.averaged if self.averaged is not None else self.module

    # -- fitting -----------------------------------------------------------
    def forward(self, x: torch.Tensor, evaluating: bool = False) -> torch.Tensor:
        """The model's logits; a compiled model whose backend fails falls back to the eager module."""
        if evaluating and self.averaged is not None:
            return self.averaged(x)
        if self.model is self.module or isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return self.model(x)
        try:
            return self.model(x)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # inductor/dynamo errors surface at the first call
            compile_fallback_warning(exc)
            self.model = self.module
            return self.model(x)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) on the device -> normalised float in the model's memory format."""
        return self.normalizer(images).contiguous(memory_format=self.memory_format)

    def prepare_batch(self, images: torch.Tensor, masks: torch.Tensor,
                      idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch ``idx`` gathered from the split on the device, augmented (when the trainer
        has an augmentation) and normalised: float inputs in the model's memory format, float masks."""
        x, y = images[idx].float() / 255, masks[idx].float()  # (B, 3, H, W) in [0, 1], (B, 1, H, W)
        if self.augment is not None:
            x, y = self.augment(x, y)
        return self.normalizer.scaled(x).contiguous(memory_format=self.memory_format), y

    def fit(self, train: SegArrays, val: SegArrays, start_epoch: int = 1) -> list[dict]:
        """Train epochs ``start_epoch..epochs``, validating on ``val`` after each. After :meth:`load_state`,
        pass the epoch it returned."""
        if self.normalizer is None:
            self.normalizer = Normalizer.fit(train.images)
        images, masks = train.images.to(self.device), train.masks.to(self.device)
        # the whole split lives on the device; batches are indexed there
        val = SegArrays(val.images.to(self.device), val.masks.to(self.device), val.ids, val.groups)
        self.val = val  # callbacks may predict on it (a logger's figure of val predictions)
        try:
            self._call("on_fit_start", start_epoch)
            for epoch in range(start_epoch, self.settings.epochs + 1):
                if self._stopping():
                    break
                self._fit_epoch(images, masks, val, epoch)
            self._stopping()  # a signal during the last epoch stops the run before its test
        except BaseException as exc:
            self._call("on_exception", exc)  # the last good epoch is on disk before the error goes on
            raise
        self._call("on_fit_end")
        return self.history

    def _stopping(self) -> bool:
        """At an epoch boundary: whether a callback asked to stop (early stopping, a pruned trial). With
        several ranks the request of any rank stops all, and a signal that reached any rank (held until
        now) stops all of them here, after the same epoch."""
        if not self.world.distributed:
            return self.stop_requested
        signum = distributed.maximum(held_signal())
        if signum:
            raise Stopped(signum)
        self.stop_requested = bool(distributed.maximum(int(self.stop_requested)))
        return self.stop_requested

    def _fit_epoch(self, images: torch.Tensor, masks: torch.Tensor, val: SegArrays, epoch: int) -> None:
        """One epoch: train, validate, step an epoch-wise scheduler, then the callbacks (history, best, checkpoint)."""
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        try:
            train_stats = self.train_epoch(images, masks, epoch)
        except torch.cuda.OutOfMemoryError as exc:
            raise out_of_memory(exc, f"training epoch {epoch}", self.settings.batch_size,
                                "trainer.batch_size") from None
        self.train_time += time.perf_counter() - start
        self.train_images += images.shape[0]
        if self.settings.validates(epoch):
            val_stats = self.evaluate(val)  # with the averaged weights, when EMA keeps them
        else:  # not validated (trainer.val_every): the row's val columns are NaN
            val_stats = {k.split("/", 1)[1]: math.nan for k in val_columns(self.settings.class_names)}
        row = {
            "epoch": epoch,
            "lr": lr,
            "train/loss": train_stats["loss"],
            "train/iou": train_stats["iou"],
            "val/loss": val_stats["loss"],
            "val/iou": val_stats["iou"],
            "val/dice": val_stats["dice"],
            "time": time.perf_counter() - start,
            # multi-class: each foreground class's val IoU and Dice (after the columns every run has)
            **{key: val_stats[key.split("/", 1)[1]] for key in class_val_columns(self.settings.class_names)},
        }
        with deferred():  # a signal stops the run after the epoch's row, best epoch and checkpoint snapshot
            if self.schedule is not None:
                self.schedule.epoch_end(row)
            self.history.append(row)
            self._call("on_epoch_end", row)

    def train_epoch(self, images: torch.Tensor, masks: torch.Tensor, epoch: int) -> dict[str, float]:
        """One pass over the split in a seeded random order; returns its mean loss and IoU.

        images (N, 3, H, W) uint8 and masks (N, 1, H, W) uint8 already on the device.
        """
        self.model.train()
        n, batch_size = images.shape[0], self.settings.batch_size
        order = torch.randperm(n, generator=self.generator).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        iou_sum = torch.zeros((), device=self.device)
        first_bad = torch.zeros((), dtype=torch.long, device=self.device)  # 1-based batch of the first non-finite loss
        starts = range(0, n, batch_size)
        self._call("on_train_epoch_start", epoch, len(starts))
        for step, b in enumerate(starts, 1):
            idx = order[b : b + batch_size]
            x, y, share = self._rank_part(images, masks, idx)
            with autocast(self.device, self.settings.precision):
                logits = self.forward(x)
                loss = self.loss_fn(logits, y)  # losses compute in float32 from (possibly bf16/fp16) logits
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss * share).backward()
            self._call("on_before_optimizer_step")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.schedule is not None:
                self.schedule.batch_end()
            bad = (first_bad == 0) & ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad, torch.full_like(first_bad, step), first_bad)
            loss_sum += loss.detach() * y.shape[0]
            iou_sum += image_metrics(logits.detach(), y, self.settings.threshold)["iou"].sum()
            seen = min(b + batch_size, n) if not self.world.distributed else (step - 1) * batch_size + len(idx)
            # the running loss is read (a host sync) only by a callback that asks for it (this rank's, with ranks)
            self._call("on_train_batch_end", step, lambda: loss_sum.item() / max(1, y.shape[0] if
                                                                                   self.world.distributed else seen))
        if self.world.distributed:  # the epoch's sums over every rank's part; a bad batch on any rank
            loss_sum, iou_sum = distributed.sum_(torch.stack([loss_sum, iou_sum]).float().cpu())
            first_bad = torch.tensor(distributed.maximum(int(first_bad.item())))
        if first_bad.item():  # one host sync per epoch
            raise TrainingDiverged(
                f"the training loss became {loss_sum.item()} at epoch {epoch}, batch {first_bad.item()} of "
                f"{len(starts)}; likely causes: a learning rate too high for this model and loss "
                f"(try a smaller optimizer.lr), reduced precision (try trainer.precision=fp32; "
                f"this run used {self.settings.precision}), or a loss that is not stable from logits"
            )
        return {"loss": loss_sum.item() / n, "iou": iou_sum.item() / n}

    def _rank_part(self, images: torch.Tensor, masks: torch.Tensor,
                   idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The training batch ``idx`` prepared (:meth:`prepare_batch`), or with several ranks this rank's
        contiguous part of it and the factor on its loss (its share of the batch times the number of
        ranks: DDP's mean of the ranks' gradients is then the whole batch's). The batch is augmented
        whole, from the same RNG on every rank, then cut: each case gets the draw a one-process run
        gives it."""
        if not self.world.distributed:
            x, y = self.prepare_batch(images, masks, idx)
            return x, y, 1.0
        part = distributed.shard(len(idx))
        if self.augment is None:
            x, y = self.prepare_batch(images, masks, idx[part])
        else:
            x, y = self.prepare_batch(images, masks, idx)
            x, y = x[part], y[part]
        return x, y, self.world.size * y.shape[0] / len(idx)

    # -- evaluation --------------------------------------------------------
    def predict(self, data: SegArrays) -> torch.Tensor:
        """Logits (N, C, H, W) float32 on the CPU for every case of ``data``."""
        return self._with_fitting_batch(self._predict, data)

    def evaluate(self, data: SegArrays) -> dict[str, float]:
        """Loss and per-image-mean metrics of the current model on ``data``."""
        return self._with_fitting_batch(self._evaluate, data)

    def _with_fitting_batch(self, fn: Callable[[SegArrays], Any], data: SegArrays) -> Any:
        """Run ``fn`` with the largest evaluation batch that fits: halve it on out-of-memory."""
        while True:
            try:
                return fn(data)
            except torch.cuda.OutOfMemoryError as exc:
                if self.eval_batch_size == 1:
                    raise out_of_memory(exc, "evaluation", 1, "trainer.eval_batch_size") from None
                self.eval_batch_size = max(1, self.eval_batch_size // 2)
                torch.cuda.empty_cache()
                log.warning("out of memory in evaluation; trainer.eval_batch_size now %d", self.eval_batch_size)

    def _batches(self, data: SegArrays):
        for b in range(0, len(data), self.eval_batch_size):
            x = self.inputs(data.images[b : b + self.eval_batch_size].to(self.device, non_blocking=True))
            yield x, data.masks[b : b + self.eval_batch_size].to(self.device, non_blocking=True).float()

    @torch.inference_mode()
    def _predict(self, data: SegArrays) -> torch.Tensor:
        """Logits of every case; with several ranks each predicts its part of the cases and every rank
        gets all of them, in case order."""
        self.model.eval()
        self.eval_module.eval()
        part = data
        if self.world.distributed:
            where = distributed.shard(len(data))
            part = SegArrays(data.images[where], data.masks[where], data.ids[where],
                             None if data.groups is None else data.groups[where])
        out = []
        for x, _ in self._batches(part):
            with autocast(self.device, self.settings.precision):
                out.append(self.forward(x, evaluating=True).float().cpu())
        logits = torch.cat(out) if out else torch.empty(0)
        return distributed.gather_cat(logits, len(data)) if self.world.distributed else logits

    @torch.inference_mode()
    def _evaluate(self, data: SegArrays) -> dict[str, float]:
        totals: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), device=self.device)
        scored = self._scored_gathered(data) if self.world.distributed else self._scored(data)
        for logits, y, loss in scored:
            loss_sum += loss * y.shape[0]
            for k, v in image_metrics(logits, y, self.settings.threshold, self.settings.class_names).items():
                totals[k] = totals.get(k, 0) + v.sum()
        n = len(data)
        return {"loss": loss_sum.item() / n, **{k: v.item() / n for k, v in totals.items()}}

    def _scored(self, data: SegArrays):
        """(logits, masks, loss) of each evaluation batch."""
        self.model.eval()
        self.eval_module.eval()
        for x, y in self._batches(data):
            with autocast(self.device, self.settings.precision):
                logits = self.forward(x, evaluating=True)
                loss = self.loss_fn(logits, y)
            yield logits, y, loss

    def _scored_gathered(self, data: SegArrays):
        """:meth:`_scored` with several ranks: every rank scores every case's gathered logits, in the
        batches a one-process run scores them in (the same numbers on every rank)."""
        logits_all = self._predict(data)
        for b in range(0, len(data), self.eval_batch_size):
            logits = logits_all[b : b + self.eval_batch_size].to(self.device)
            y = data.masks[b : b + self.eval_batch_size].to(self.device).float()
            yield logits, y, self.loss_fn(logits, y)
