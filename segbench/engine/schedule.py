"""Learning-rate schedules and when they step.

A scheduler config names a torch scheduler (any ``_target_``) plus two keys that
segbench reads itself and does not pass on:

    interval: epoch | step     step after every epoch, or after every optimizer step
    monitor: val/iou           (optional) a history column passed to ``step()``, as ReduceLROnPlateau needs

At build time a scheduler whose signature has ``total_steps`` (and no value in
its YAML) is given the number of times it will step: epochs, or epochs x
batches per epoch for ``interval: step``. The schedules segbench adds
(:class:`WarmupCosine`, :class:`Poly`) are ``LambdaLR`` s over that count.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..validation import check_choice, check_int, check_number

INTERVALS = ("epoch", "step")


class Schedule:
    """A scheduler with its interval (``epoch`` or ``step``) and optional monitored history column."""

    def __init__(self, scheduler: Any, interval: str = "epoch", monitor: str | None = None) -> None:
        check_choice("interval", interval, INTERVALS)
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor

    def batch_end(self) -> None:
        """After every optimizer step."""
        if self.interval == "step":
            self.scheduler.step()

    def epoch_end(self, row: dict[str, float]) -> None:
        """After validation; ``row`` is the epoch's history row (``val/iou``, ...)."""
        if self.interval != "epoch":
            return
        if self.monitor is None:
            self.scheduler.step()
        elif not math.isnan(row[self.monitor]):  # a monitored scheduler steps on validated epochs only
            self.scheduler.step(row[self.monitor])

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


class WarmupCosine(LambdaLR):
    """Linear warm-up from ``warmup_start`` x lr to lr over ``warmup`` steps (at most ``total_steps``),
    then cosine decay to ``min_lr_ratio`` x lr at ``total_steps``.

    lr(t) = lr * (s + (1 - s) t / W)                               for t < W (s = warmup_start)
    lr(t) = lr * (m + (1 - m) (1 + cos(pi (t - W) / (T - W))) / 2)   for W <= t <= T (m = min_lr_ratio)

    ``t`` counts the scheduler's steps (epochs or optimizer steps, by its ``interval``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup: int = 0,
                 warmup_start: float = 0.0, min_lr_ratio: float = 0.0, last_epoch: int = -1) -> None:
        self.total_steps = check_int("total_steps", total_steps, low=1)
        self.warmup = min(check_int("warmup", warmup, low=0), self.total_steps)
        self.warmup_start = check_number("warmup_start", warmup_start, 0, 1)
        self.min_lr_ratio = check_number("min_lr_ratio", min_lr_ratio, 0, 1)
        super().__init__(optimizer, lambda t: self.factor(t), last_epoch)

    def factor(self, t: int) -> float:
        if t < self.warmup:
            return self.warmup_start + (1 - self.warmup_start) * t / self.warmup
        span = max(1, self.total_steps - self.warmup)
        progress = min(1.0, (t - self.warmup) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Poly(LambdaLR):
    """nnU-Net's polynomial decay: lr(t) = lr * (1 - t / total_steps) ** power (0 from ``total_steps`` on)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9,
                 last_epoch: int = -1) -> None:
        self.total_steps = check_int("total_steps", total_steps, low=1)
        self.power = check_number("power", power, 0, low_open=True)
        super().__init__(optimizer, lambda t: self.factor(t), last_epoch)

    def factor(self, t: int) -> float:
        return max(0.0, 1 - t / self.total_steps) ** self.power
