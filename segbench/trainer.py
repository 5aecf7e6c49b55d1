"""Training and evaluation loop over in-memory tensors; writes history and checkpoints.

The trainer never plots. Batches are indexed from the split's uint8 tensors,
normalised on the device, and per-batch statistics are accumulated on the
device and read once per epoch (no host synchronisation per batch).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import SegArrays
from .io import save_checkpoint, write_csv
from .metrics import image_metrics

log = logging.getLogger(__name__)

class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and batch."""


HISTORY_COLUMNS = ["epoch", "lr", "train/loss", "train/iou", "val/loss", "val/iou", "val/dice", "time"]


class Normalizer:
    """uint8 (B, 3, H, W) -> float (x / 255 - mean) / std with per-channel train-split statistics."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = list(mean), list(std)

    @classmethod
    def fit(cls, images: torch.Tensor) -> "Normalizer":
        x = images.float().div_(255).transpose(0, 1).flatten(1)  # (3, N*H*W)
        return cls(x.mean(1).tolist(), x.std(1).clamp(min=1e-6).tolist())

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
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
    ) -> None:
        self.model = model.to(device)
        self.loss_fn, self.optimizer, self.scheduler = loss_fn, optimizer, scheduler
        self.device, self.out_dir = device, Path(out_dir)
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.threshold, self.config, self.progress, self.log_every = threshold, config or {}, progress, log_every
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.normalizer: Normalizer | None = None
        self.history: list[dict] = []
        self.best_epoch, self.best_iou = 0, -math.inf
        self.train_time, self.train_images = 0.0, 0

    # -- checkpoints -------------------------------------------------------
    def state(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": epoch,
            "best_epoch": self.best_epoch,
            "best_val_iou": self.best_iou,
            "normalizer": {"mean": self.normalizer.mean, "std": self.normalizer.std},
            "history": self.history,
            "config": self.config,
        }

    def load_best(self) -> None:
        state = torch.load(self.out_dir / "checkpoints" / "best.pt", map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])

    # -- loops -------------------------------------------------------------
    def fit(self, train: SegArrays, val: SegArrays) -> list[dict]:
        """Train for ``epochs``, evaluating on ``val`` after each; keeps best.pt (by val IoU) and last.pt."""
        self.normalizer = Normalizer.fit(train.images)
        images, masks = train.images.to(self.device), train.masks.to(self.device)
        epochs = tqdm(range(1, self.epochs + 1), desc="epochs", disable=not self.progress, dynamic_ncols=True)
        for epoch in epochs:
            start = time.perf_counter()
            train_stats = self._train_epoch(images, masks, epoch)
            self.train_time += time.perf_counter() - start
            self.train_images += len(train)
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
            if val_stats["iou"] > self.best_iou:
                self.best_iou, self.best_epoch = val_stats["iou"], epoch
                save_checkpoint(self.out_dir / "checkpoints" / "best.pt", self.state(epoch))
            save_checkpoint(self.out_dir / "checkpoints" / "last.pt", self.state(epoch))
            log.info(
                "epoch %d/%d  lr %.2e  train/loss %.4f  train/iou %.4f  val/loss %.4f  val/iou %.4f  val/dice %.4f  (%.1fs)",
                epoch, self.epochs, lr, row["train/loss"], row["train/iou"], row["val/loss"], row["val/iou"],
                row["val/dice"], row["time"],
            )
            epochs.set_postfix({"val/iou": f"{val_stats['iou']:.3f}", "best": f"{self.best_iou:.3f}@{self.best_epoch}"})
        return self.history

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
            x, y = self.normalizer(images[idx]), masks[idx].float()
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
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
                f"(try a smaller optimizer.lr), or a loss that is not stable from logits"
                + (f"; the last good checkpoint is {self.out_dir / 'checkpoints' / 'last.pt'}" if self.history else "")
            )
        return {"loss": loss_sum.item() / n, "iou": iou_sum.item() / n}

    @torch.inference_mode()
    def predict(self, data: SegArrays) -> torch.Tensor:
        """Logits (N, 1, H, W) float32 on the CPU for every case of ``data``."""
        self.model.eval()
        out = []
        for b in range(0, len(data), self.eval_batch_size):
            x = self.normalizer(data.images[b : b + self.eval_batch_size].to(self.device))
            out.append(self.model(x).float().cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def evaluate(self, data: SegArrays) -> dict[str, float]:
        """Loss and per-image-mean metrics of the current model on ``data``."""
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        loss_sum = torch.zeros((), device=self.device)
        for b in range(0, len(data), self.eval_batch_size):
            x = self.normalizer(data.images[b : b + self.eval_batch_size].to(self.device))
            y = data.masks[b : b + self.eval_batch_size].to(self.device).float()
            logits = self.model(x)
            loss_sum += self.loss_fn(logits, y) * y.shape[0]
            for k, v in image_metrics(logits, y, self.threshold).items():
                totals[k] = totals.get(k, 0) + v.sum()
        n = len(data)
        return {"loss": loss_sum.item() / n, **{k: v.item() / n for k, v in totals.items()}}
