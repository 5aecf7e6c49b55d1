"""The trial side of a search: a training run that reports its monitored val metric to its Optuna
trial after every validated epoch, and stops when the study's pruner says so.

The sweeper starts each trial with ``SEGBENCH_OPTUNA_TRIAL=<trial number>`` in its environment
(``hydra.job.env_set``); the run finds the study through its own Hydra config (``hydra.sweeper``).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import optuna

from ..engine.callbacks import Callback, Monitor, TrainerView
from ..errors import UserError
from . import TRIAL_ENV
from .study import describe_storage, storage_of

log = logging.getLogger("segbench.train")
PRUNERS = ("none", "median", "hyperband")


def make_pruner(name: str | None, epochs: int) -> optuna.pruners.BasePruner:
    """``hydra.sweeper.pruner``: ``none``; ``median`` (stop a trial whose monitored value is below the
    median of earlier trials at the same epoch, after 5 trials and the first tenth of the epochs);
    ``hyperband`` (successive halving over 1..epochs epochs)."""
    name = "none" if name in (None, "null") else str(name)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 10))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    raise UserError(f"hydra.sweeper.pruner={name!r} is invalid; expected one of {list(PRUNERS)}")


class TrialReporter(Callback):
    """Reports the monitored value of every validated epoch to the trial (step = epoch) and asks its
    pruner; a pruned trial stops after that epoch (its checkpoint and history written as usual)."""

    def __init__(self, trial: optuna.Trial, monitor: Monitor) -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, trainer: TrainerView, row: dict[str, float]) -> None:
        value = row[self.monitor.key]
        if math.isnan(value):
            return  # not validated (trainer.val_every)
        epoch = int(row["epoch"])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_epoch = epoch
            trainer.stop_requested = True
            log.info("trial %d pruned after epoch %d (%s %.4f)", self.trial.number, epoch, self.monitor.key, value)

    def state_dict(self) -> dict | None:
        return {"pruned_epoch": self.pruned_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.pruned_epoch = state.get("pruned_epoch")


def trial_reporter(sweeper: Any, sweep_dir: str, epochs: int, monitor: Monitor) -> TrialReporter | None:
    """The reporter of this run's trial when a segbench search started it (``SEGBENCH_OPTUNA_TRIAL``
    set, and ``sweeper`` is its ``hydra.sweeper`` config), else None."""
    number = os.environ.get(TRIAL_ENV)
    if number is None or sweeper is None or "study_name" not in sweeper:
        return None
    storage = storage_of(sweeper.get("storage"), sweep_dir)
    storage = optuna.storages.get_storage(storage) if isinstance(storage, str) else storage
    name = str(sweeper.get("study_name"))
    try:
        study = optuna.load_study(study_name=name, storage=storage,
                                  pruner=make_pruner(sweeper.get("pruner"), epochs))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), int(number))
    except Exception as exc:
        raise UserError(f"trial {number} of the study '{name}' is not in "
                        f"{describe_storage(sweeper.get('storage'), sweep_dir)}: {exc}") from exc
    return TrialReporter(optuna.trial.Trial(study, trial_id), monitor)
