"""Training and evaluation loop over in-memory tensors; writes history and checkpoints.

The trainer never plots. Batches are indexed from the split's uint8 tensors,
normalised on the device, and per-batch statistics are accumulated on the
device and read once per epoch (no host synchronisation per batch).
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import SegArrays
from .errors import TrainingError
from .io import CheckpointWriter, load_checkpoint, write_csv
from .metrics import image_metrics

log = logging.getLogger(__name__)

class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


class OutOfMemory(TrainingError):
    """The device ran out of memory; the message names the batch size and what to try."""


def _out_of_memory(exc: BaseException, what: str, batch_size: int, key: str) -> OutOfMemory:
    smaller = max(1, batch_size // 2)
    return OutOfMemory(
        f"out of GPU memory during {what} at {key}={batch_size}: try {key}={smaller}, or a smaller "
        f"model.base_width or dataset.image_size ({str(exc).splitlines()[0]})"
    )


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of ``precision`` (fp32: disabled) on ``device``."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def maybe_compile(module: nn.Module) -> nn.Module:
    """torch.compile(module), or the module itself with a warning when torch.compile is unavailable.

    Compilation is lazy: a backend that fails on the first batch is caught by
    :meth:`Trainer._forward`, which falls back to eager mode the same way.
    """
    try:
        return torch.compile(module)
    except Exception as exc:  # backends fail in many ways (no compiler, unsupported platform)
        _compile_fallback_warning(exc)
        return module


def _compile_fallback_warning(exc: BaseException) -> None:
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    log.warning("trainer.compile=true: torch.compile is unavailable here (%s: %s); training in eager mode",
                type(exc).__name__, first_line)


HISTORY_COLUMNS = ["epoch", "lr", "train/loss", "train/iou", "val/loss", "val/iou", "val/dice", "time"]


class Normalizer:
    """uint8 (B, 3, H, W) -> float (x / 255 - mean) / std with per-channel train-split statistics."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = list(mean), list(std)
        self._tensors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # made once per device

    @classmethod
    def fit(cls, images: torch.Tensor) -> "Normalizer":
        x = images.float().div_(255).transpose(0, 1).flatten(1)  # (3, N*H*W)
        return cls(x.mean(1).tolist(), x.std(1).clamp(min=1e-6).tolist())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self._tensors:
            self._tensors[images.device] = tuple(
                torch.tensor(v, device=images.device).view(1, -1, 1, 1) for v in (self.mean, self.std))
        mean, std = self._tensors[images.device]
        return (images.float() / 255 - mean) / std


class Trainer:
    """Fits a model on one split and evaluates on others.

    Args:
        model: maps normalised (B, 3, H, W) float to (B, 1, H, W) logits.
        loss_fn: (logits, float target) -> scalar loss.
        optimizer, scheduler: built for ``model``; the scheduler steps once per epoch.
        device: where model and data live.
        out_dir: run directory; history.csv and checkpoints/ are written there.
        config: resolved config stored in every checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        device: torch.device,
        out_dir: Path,
        epochs: int,
        batch_size: int,
        eval_batch_size: int,
        threshold: float = 0.5,
        seed: int = 0,
        config: dict | None = None,
        progress: bool = True,
        log_every: int = 10,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision={precision!r} is not supported; expected one of {sorted(AUTOCAST_DTYPES)}")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = model.to(device, memory_format=self.memory_format)  # the eager module: checkpoints
        self.model = maybe_compile(self.module) if compile else self.module  # what runs the batches
        self.precision = precision
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.loss_fn, self.optimizer, self.scheduler = loss_fn, optimizer, scheduler
        self.device, self.out_dir = device, Path(out_dir)
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.threshold, self.config, self.progress, self.log_every = threshold, config or {}, progress, log_every
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.normalizer: Normalizer | None = None
        self.history: list[dict] = []
        self.best_epoch, self.best_iou = 0, -math.inf
        self.train_time, self.train_images = 0.0, 0
        self.checkpoints = CheckpointWriter()

    # -- checkpoints -------------------------------------------------------
    def state(self, epoch: int) -> dict:
        """Everything needed to continue exactly after ``epoch``: weights, optimiser, scheduler, RNGs, history."""
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch,
            "best_epoch": self.best_epoch,
            "best_val_iou": self.best_iou,
            "normalizer": {"mean": self.normalizer.mean, "std": self.normalizer.std},
            "history": self.history,
            "train_time": self.train_time,
            "train_images": self.train_images,
            "rng": {
                "batch_order": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "config": self.config,
        }

    def resume(self, state: dict) -> int:
        """Restore a state saved by :meth:`state` (as :func:`load_checkpoint` reads it); returns the epoch
        to continue from."""
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.best_epoch, self.best_iou = state["best_epoch"], state["best_val_iou"]
        self.normalizer = Normalizer(**state["normalizer"])
        self.history = state["history"]
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        rng = state["rng"]
        self.generator.set_state(rng["batch_order"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        return state["epoch"] + 1

    def _finish_checkpoint(self, quiet: bool = False) -> None:
        try:
            self.checkpoints.wait()
        except TrainingError as exc:
            if not quiet:
                raise
            log.error("%s", exc)

    def load_best(self) -> None:
        self._finish_checkpoint()
        self.module.load_state_dict(load_checkpoint(self.out_dir / "checkpoints" / "best.pt")["model"])

    # -- loops -------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits; a compiled model whose backend fails falls back to the eager module."""
        if self.model is self.module:
            return self.model(x)
        try:
            return self.model(x)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # inductor/dynamo errors surface at the first call
            _compile_fallback_warning(exc)
            self.model = self.module
            return self.model(x)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) on the device -> normalised float in the model's memory format."""
        return self.normalizer(images).contiguous(memory_format=self.memory_format)

    def _batch(self, images: torch.Tensor, masks: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch ``idx`` gathered from the split on the device: normalised inputs, float masks."""
        return self._inputs(images[idx]), masks[idx].float()

    def fit(self, train: SegArrays, val: SegArrays, start_epoch: int = 1) -> list[dict]:
        """Train epochs ``start_epoch..epochs``, evaluating on ``val`` after each; keeps best.pt (by val IoU)
        and last.pt. After :meth:`resume`, pass the epoch it returned."""
        if self.normalizer is None:
            self.normalizer = Normalizer.fit(train.images)
        images, masks = train.images.to(self.device), train.masks.to(self.device)
        # the whole split lives on the device; batches are indexed there
        val = SegArrays(val.images.to(self.device), val.masks.to(self.device), val.ids, val.diagnosis)
        epochs = tqdm(range(start_epoch, self.epochs + 1), desc="epochs", disable=not self.progress,
                      dynamic_ncols=True, initial=start_epoch - 1, total=self.epochs)
        try:
            for epoch in epochs:
                self._fit_epoch(images, masks, val, epoch)
                epochs.set_postfix({"val/iou": f"{self.history[-1]['val/iou']:.3f}",
                                    "best": f"{self.best_iou:.3f}@{self.best_epoch}"})
        except BaseException:
            self._finish_checkpoint(quiet=True)  # the last good epoch is on disk before the error goes on
            raise
        self._finish_checkpoint()
        return self.history

    def _fit_epoch(self, images: torch.Tensor, masks: torch.Tensor, val: SegArrays, epoch: int) -> None:
        """One epoch: train, step the scheduler, validate, append to history.csv, checkpoint."""
        start = time.perf_counter()
        try:
            train_stats = self._train_epoch(images, masks, epoch)
        except torch.cuda.OutOfMemoryError as exc:
            raise _out_of_memory(exc, f"training epoch {epoch}", self.batch_size, "trainer.batch_size") from None
        self.train_time += time.perf_counter() - start
        self.train_images += images.shape[0]
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        val_stats = self.evaluate(val)
        row = {
            "epoch": epoch,
            "lr": lr,
            "train/loss": train_stats["loss"],
            "train/iou": train_stats["iou"],
            "val/loss": val_stats["loss"],
            "val/iou": val_stats["iou"],
            "val/dice": val_stats["dice"],
            "time": time.perf_counter() - start,
        }
        self.history.append(row)
        write_csv(self.out_dir / "history.csv", self.history, HISTORY_COLUMNS)
        improved = val_stats["iou"] > self.best_iou
        if improved:
            self.best_iou, self.best_epoch = val_stats["iou"], epoch
        # last.pt is written in the background while the next epoch trains; best.pt is a link to the same file
        checkpoints = self.out_dir / "checkpoints"
        self.checkpoints.save(checkpoints / "last.pt", self.state(epoch), also=[checkpoints / "best.pt"] if improved else [])
        log.info(
            "epoch %d/%d  lr %.2e  train/loss %.4f  train/iou %.4f  val/loss %.4f  val/iou %.4f  val/dice %.4f  (%.1fs)",
            epoch, self.epochs, lr, row["train/loss"], row["train/iou"], row["val/loss"], row["val/iou"],
            row["val/dice"], row["time"],
        )

    def _train_epoch(self, images: torch.Tensor, masks: torch.Tensor, epoch: int) -> dict[str, float]:
        self.model.train()
        n = images.shape[0]
        order = torch.randperm(n, generator=self.generator).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        iou_sum = torch.zeros((), device=self.device)
        first_bad = torch.zeros((), dtype=torch.long, device=self.device)  # 1-based batch of the first non-finite loss
        starts = range(0, n, self.batch_size)
        bar = tqdm(starts, desc=f"epoch {epoch}", leave=False, disable=not self.progress, dynamic_ncols=True)
        for step, b in enumerate(bar, 1):
            idx = order[b : b + self.batch_size]
            x, y = self._batch(images, masks, idx)
            with autocast(self.device, self.precision):
                logits = self._forward(x)
                loss = self.loss_fn(logits, y)  # losses compute in float32 from (possibly bf16/fp16) logits
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            bad = (first_bad == 0) & ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad, torch.full_like(first_bad, step), first_bad)
            loss_sum += loss.detach() * len(idx)
            iou_sum += image_metrics(logits.detach(), y, self.threshold)["iou"].sum()
            if self.progress and (step % self.log_every == 0 or step == len(starts)):
                bar.set_postfix(loss=f"{loss_sum.item() / min(b + self.batch_size, n):.4f}")
        if first_bad.item():
            raise TrainingDiverged(
                f"the training loss became {loss_sum.item()} at epoch {epoch}, batch {first_bad.item()} of "
                f"{len(starts)}; likely causes: a learning rate too high for this model and loss "
                f"(try a smaller optimizer.lr), reduced precision (try trainer.precision=fp32; "
                f"this run used {self.precision}), or a loss that is not stable from logits"
                + (f"; the last good checkpoint is {self.out_dir / 'checkpoints' / 'last.pt'}" if self.history else "")
            )
        return {"loss": loss_sum.item() / n, "iou": iou_sum.item() / n}

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
                    raise _out_of_memory(exc, "evaluation", 1, "trainer.eval_batch_size") from None
                self.eval_batch_size = max(1, self.eval_batch_size // 2)
                torch.cuda.empty_cache()
                log.warning("out of memory in evaluation; trainer.eval_batch_size now %d", self.eval_batch_size)

    def _batches(self, data: SegArrays):
        for b in range(0, len(data), self.eval_batch_size):
            x = self._inputs(data.images[b : b + self.eval_batch_size].to(self.device, non_blocking=True))
            yield x, data.masks[b : b + self.eval_batch_size].to(self.device, non_blocking=True).float()

    @torch.inference_mode()
    def _predict(self, data: SegArrays) -> torch.Tensor:
        self.model.eval()
        out = []
        for x, _ in self._batches(data):
            with autocast(self.device, self.precision):
                out.append(self._forward(x).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def _evaluate(self, data: SegArrays) -> dict[str, float]:
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), device=self.device)
        for x, y in self._batches(data):
            with autocast(self.device, self.precision):
                logits = self._forward(x)
                loss_sum += self.loss_fn(logits, y) * y.shape[0]
            for k, v in image_metrics(logits, y, self.threshold).items():
                totals[k] = totals.get(k, 0) + v.sum()
        n = len(data)
        return {"loss": loss_sum.item() / n, **{k: v.item() / n for k, v in totals.items()}}
