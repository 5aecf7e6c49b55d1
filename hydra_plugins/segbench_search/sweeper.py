"""``hparams_search=optuna``: a Hydra sweeper on Optuna >= 4, set with hydra-optuna-sweeper's keys.

- ``n_trials`` is the study's total: the same command continues a study (after a crash, the trials
  that are missing; a trial whose process died runs again in its own dir, from its ``last.pt``), and
  a larger ``n_trials`` extends it. Trial dirs are ``trial_<Optuna trial number>``.
- ``storage``: a journal file (default ``<sweep dir>/optuna.journal``) or a database URL; several
  processes naming one storage and ``study_name`` cooperate on one study. In a database, each running
  trial has a heartbeat (``heartbeat_interval``); a trial whose heartbeat stopped for ``grace_period``
  is failed by any worker and run again (``max_retry`` times), and a worker with no trial left to ask
  waits for the running ones before it writes the report.
- ``n_jobs > 1`` runs that many trials at once on this machine (Hydra's joblib launcher, unless
  another launcher is configured), each with its share of the cores.
- ``pruner``: ``none``, ``median`` or ``hyperband``; the trials report the monitored val metric
  after every validated epoch (:mod:`segbench.search.trial`).

Hydra finds plugins in the ``hydra_plugins`` package only, so the class lives here; the search logic
is in :mod:`segbench.search`.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from segbench.names import DEFAULT_MONITOR

log = logging.getLogger("segbench.search")

JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "backend": None,
          "prefer": "processes", "require": None, "verbose": 0, "timeout": None, "pre_dispatch": "2*n_jobs",
          "batch_size": "auto", "temp_folder": None, "max_nbytes": None, "mmap_mode": "r"}


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any = None, direction: str = "auto", storage: str | None = None,
                 study_name: str = "segbench", n_trials: int = 20, n_jobs: int = 1, max_failure_rate: float = 0.5,
                 params: Any = None, pruner: str | None = "none", heartbeat_interval: int = 60,
                 grace_period: int | None = None, max_retry: int | None = 3) -> None:
        from segbench.search.trial import PRUNERS
        from segbench.validation import check_choice, check_int, check_number

        self.sampler_config = sampler
        self.direction = check_choice("hydra.sweeper.direction", str(direction), ("auto", "maximize", "minimize"))
        self.storage = None if storage in (None, "null") else str(storage)
        self.study_name = str(study_name)
        self.n_trials = check_int("hydra.sweeper.n_trials", n_trials, low=1)
        self.n_jobs = check_int("hydra.sweeper.n_jobs", n_jobs, low=1)
        self.max_failure_rate = check_number("hydra.sweeper.max_failure_rate", max_failure_rate, 0, 1)
        self.params = params
        self.pruner = "none" if pruner in (None, "null") else check_choice("hydra.sweeper.pruner", str(pruner), PRUNERS)
        self.heartbeat = (check_int("hydra.sweeper.heartbeat_interval", heartbeat_interval, low=1),
                          None if grace_period in (None, "null") else check_int("hydra.sweeper.grace_period",
                                                                                 grace_period, low=1),
                          None if max_retry in (None, "null") else check_int("hydra.sweeper.max_retry", max_retry,
                                                                              low=0))
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        launcher_cfg = config.hydra.launcher
        self.parallel_launcher = self.n_jobs > 1 and "BasicLauncher" in str(launcher_cfg.get("_target_", ""))
        if self.parallel_launcher:  # n_jobs trials at once on this machine
            launcher_cfg = OmegaConf.create({**JOBLIB, "n_jobs": self.n_jobs})
            with open_dict(config):
                config.hydra.launcher = launcher_cfg
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -- the search -------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        """The search; bad settings (the space, the direction) end it as ``segbench`` ends on bad input: the
        message and exit status 2, no traceback (Hydra would print one)."""
        from segbench.errors import SegbenchError, report

        try:
            self._sweep(arguments)
        except SegbenchError as exc:
            raise SystemExit(report("segbench", exc)) from None

    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        from segbench.engine.device import usable_cores
        from segbench.search.report import write_search_report
        from segbench.search.space import search_space
        from segbench.search.study import (
            DIR,
            Heartbeat,
            claim,
            counted,
            describe_storage,
            fail_stale,
            heartbeats,
            hide_password,
            open_study,
            recover_dead_trials,
            storage_of,
        )
        from segbench.search.trial import TRIAL_ENV, make_pruner

        params = [f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        space, fixed = search_space(params)
        epochs = int(self.config.trainer.epochs) if "trainer" in self.config else 1
        direction = self._direction(fixed)
        study = open_study(self.study_name, storage_of(self.storage, self.sweep_dir, Heartbeat(*self.heartbeat)),
                           direction, pruner=make_pruner(self.pruner, epochs))
        retried = recover_dead_trials(study)
        if retried:
            log.info("trials %s were running when their process ended: failed, and queued to run again",
                     ", ".join(map(str, retried)))
        study.sampler = self._sampler(len(study.trials))
        log.info("study '%s' in %s: %d of %d trials so far; searching %s", self.study_name,
                 hide_password(describe_storage(self.storage, self.sweep_dir)), len(counted(study)), self.n_trials,
                 ", ".join(space) or "nothing (every value fixed)")
        threads = [] if (not self.parallel_launcher or any(k.endswith("trainer.threads") for k in fixed)) else \
            [f"trainer.threads={max(1, usable_cores() // self.n_jobs)}"]
        failures = 0
        while True:
            fail_stale(study)  # trials whose worker died, on any host: failed, and queued again
            left = self.n_trials - len(counted(study))
            if left <= 0:
                if self._wait_for_others(study):
                    continue
                break
            with warnings.catch_warnings():  # that a heartbeat "is supposed to be used with Study.optimize": it
                warnings.filterwarnings("ignore", message="Heartbeat of storage")  # is sent here (heartbeats())
                trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            # a retried trial continues the dir of the one whose process died; a new one gets its number's
            subdirs = [trial.user_attrs.get(DIR) or f"trial_{trial.number}" for trial in trials]
            batch = []
            for trial, subdir in zip(trials, subdirs):
                claim(trial, subdir)
                batch.append([*(f"{k}={v}" for k, v in fixed.items()),
                              *(f"{k}={v}" for k, v in trial.params.items()), *threads,
                              f"hydra.sweep.subdir={subdir}", f"+hydra.job.env_set.{TRIAL_ENV}={trial.number}"])
            with heartbeats(study, trials):  # while they run: from this process, which runs or waits for them
                returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, subdir, ret in zip(trials, subdirs, returns):
                state, value = self._outcome(ret, self.sweep_dir / subdir)
                study.tell(trial, state=state, values=None if value is None else [value])
                failures += state == optuna.trial.TrialState.FAIL
            if failures > self.max_failure_rate * self.n_trials:
                log.error("%d trials failed in this launch, more than hydra.sweeper.max_failure_rate=%s of "
                          "n_trials=%d: the search stops; see the failed trials' metrics.json and train.log",
                          failures, self.max_failure_rate, self.n_trials)
                break
        write_search_report(study, self.sweep_dir, fixed, self.config)

    def _wait_for_others(self, study: Any) -> bool:
        """With a heartbeat (a database storage) and no trial left to ask: wait while other workers run the
        study's last trials, so that one whose worker dies is retried here and this report is the whole
        study's. Returns whether to look again (after one heartbeat interval); False: none is running."""
        import time

        from segbench.search.study import has_heartbeat, heartbeat_interval, running_elsewhere

        running = running_elsewhere(study) if has_heartbeat(study) else []
        if not running:
            return False
        if running != getattr(self, "_waited_for", None):
            log.info("waiting for trials %s, running in other workers (a trial whose heartbeat stops for "
                     "grace_period is failed and run again here)", ", ".join(map(str, running)))
            self._waited_for = running
        time.sleep(heartbeat_interval(study))
        return True

    def _direction(self, fixed: dict[str, Any]) -> str:
        """The study's direction: the monitored metric's (``trainer.monitor`` and ``trainer.monitor_mode``,
        what each trial returns) for ``auto``; a direction that contradicts it is an error before any trial."""
        from segbench.engine.callbacks import Monitor
        from segbench.errors import UserError

        trainer = self.config.get("trainer") or {}
        key = str(fixed.get("trainer.monitor", trainer.get("monitor", DEFAULT_MONITOR)))
        mode = str(fixed.get("trainer.monitor_mode", trainer.get("monitor_mode", "auto")))
        monitor = Monitor(key, mode)
        wanted = "maximize" if monitor.mode == "max" else "minimize"
        if self.direction not in ("auto", wanted):
            raise UserError(f"hydra.sweeper.direction={self.direction}, but each trial returns trainer.monitor={key}, "
                            f"which is {wanted[:-1]}ed (trainer.monitor_mode={monitor.mode}); leave "
                            "hydra.sweeper.direction=auto (the monitor's direction), or change the monitor")
        return wanted

    def _sampler(self, existing: int) -> Any:
        """The configured sampler, its seed offset by the trials the study has (a second launch draws new
        trials instead of replaying the first launch's)."""
        if not self.sampler_config:
            return None
        sampler = OmegaConf.to_container(self.sampler_config, resolve=True) \
            if isinstance(self.sampler_config, DictConfig) else dict(self.sampler_config)
        if sampler.get("seed") is not None:
            sampler["seed"] = int(sampler["seed"]) + existing
        return instantiate(sampler)

    @staticmethod
    def _outcome(ret: Any, trial_dir: Path) -> tuple[Any, float | None]:
        """A trial's state and value from its job: pruned (its metrics.json says so), complete with a
        finite value, or failed."""
        from optuna.trial import TrialState

        from segbench.errors import DataError
        from segbench.runs import RunDir

        try:
            status = RunDir(trial_dir).read_metrics().get("status")  # {} when the job wrote none
        except (DataError, OSError):  # a damaged or unreadable metrics.json: no outcome to read
            status = None
        if status == "pruned":
            return TrialState.PRUNED, None
        if ret.status == JobStatus.COMPLETED and status == "done":
            try:
                value = float(ret.return_value)
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):
                return TrialState.COMPLETE, value
        return TrialState.FAIL, None
