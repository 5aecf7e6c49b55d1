"""Hydra callback of a multirun: checks the sweeper's settings, names job dirs by what varies, estimates the
sweep's time after each job, and writes the comparison report at the end."""
from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import RUN_SETTINGS, parallel_jobs
from ..engine.callbacks import duration
from ..engine.device import usable_cores
from ..runs import find_runs, keep_sweep_record
from ..runs.atomic import write_json
from ..runs.launch import continue_command
from .render import build_report

log = logging.getLogger(__name__)


SWEEP_CLOCK = ".segbench-sweep.json"   # this launch: when it started, how many jobs, how many at once
JOBS_ENDED = ".segbench-jobs-ended"     # one line per job that ended: "<launch> <job num> <time>"


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs this launch runs: the product of the sweep's value lists (Hydra's basic sweeper), or
    the sweeper's ``n_trials``; None when neither says."""
    sweeper = config.hydra.get("sweeper") or {}
    if sweeper.get("n_trials") is not None:
        return int(sweeper.n_trials)
    if "BasicSweeper" not in str(sweeper.get("_target_", "")):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
    except Exception:  # noqa: BLE001 - only the estimate is lost
        return None


def estimate_line(jobs: int, ended: int, elapsed: float, parallel: int) -> str:
    """The log line of a sweep's estimate after ``ended`` of ``jobs`` jobs, ``elapsed`` seconds into it,
    with ``parallel`` jobs at a time (the first ones to end stand for a wave of that many)."""
    left = max(0, jobs - ended)
    rate = max(ended, min(parallel, jobs)) / max(elapsed, 1e-9)  # jobs per second
    finish = datetime.datetime.now() + datetime.timedelta(seconds=left / rate)
    return (f"sweep: {ended} of {jobs} jobs ended in {duration(elapsed)}; estimated {duration(left / rate)} for the "
            f"other {left} (about {finish.strftime('%H:%M')}" + (f", {parallel} at a time)" if parallel > 1 else ")"))


class ReportCallback(Callback):
    """Names job dirs by the swept overrides; builds the report in ``hydra.sweep.dir`` at the end.

    The report is written after every job of the sweep, failed ones included
    (the entry point records a failed job instead of stopping the sweep); the
    process then exits with status 1 unless every job finished, so that a CI
    pipeline or a SLURM dependency notices.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Keep an earlier launch's record (see
        :func:`segbench.runs.keep_sweep_record`); leave the run settings (segbench.config.RUN_SETTINGS)
        and, in a sweep, the overrides every job shares out of the job dir names (``loss=dice,model=unet``).

        Hydra composes each job from ``hydra.overrides.hydra`` plus the job's own
        overrides, so one more Hydra override extends ``exclude_keys`` for all jobs.
        A swept key always stays in the names, run setting or not, so that no two jobs share a dir.
        """
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
        fixed = [o.key_or_group for o in parsed if not o.is_sweep_override()] if swept else []
        keys = list(config.hydra.job.config.override_dirname.exclude_keys)
        keys += [k for k in (*RUN_SETTINGS, *fixed) if k not in swept and k not in keys]
        read_only = OmegaConf.is_readonly(config)
        OmegaConf.set_readonly(config, False)
        with open_dict(config):
            config.hydra.overrides.hydra.append(
                f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"
            )
        OmegaConf.set_readonly(config, read_only)
        self._start_clock(config)
        try:  # Hydra is about to write this launch's multirun.yaml over an earlier launch's
            kept = keep_sweep_record(config.hydra.sweep.dir)
        except OSError as exc:
            log.warning("could not keep the earlier launch's record in %s: %s", config.hydra.sweep.dir, exc)
        else:
            if kept is not None:
                log.info("an earlier launch into %s: its multirun.yaml is kept as %s", kept.parent, kept.name)

    def _start_clock(self, config: DictConfig) -> None:
        """Record this launch's start, size and parallelism in the sweep dir, where the jobs (in this
        process or a launcher's workers) read it to estimate the sweep's time."""
        jobs = sweep_size(config)
        if jobs is None:
            return
        clock = {"launch": f"{time.time():.6f}", "started": time.time(), "jobs": jobs,
                 "parallel": parallel_jobs(config.hydra.get("launcher"), usable_cores())}
        try:
            write_json(Path(config.hydra.sweep.dir) / SWEEP_CLOCK, clock)
        except OSError as exc:
            log.warning("no estimate of the sweep's time: %s", exc)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """After each job: the estimated time of the rest of the sweep, from the jobs that ended so far."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            clock = json.loads((sweep_dir / SWEEP_CLOCK).read_text())
            with open(sweep_dir / JOBS_ENDED, "a") as f:  # one short line per write: appends do not interleave
                f.write(f"{clock['launch']} {config.hydra.job.num} {time.time():.3f}\n")
            lines = (sweep_dir / JOBS_ENDED).read_text().splitlines()
            ended = sum(line.split(" ", 1)[0] == clock["launch"] for line in lines)
        except (OSError, ValueError, KeyError):
            return  # no clock: a launch this callback did not start, or a sweeper of unknown size
        if ended < clock["jobs"]:
            log.info("%s", estimate_line(clock["jobs"], ended, time.time() - clock["started"], clock["parallel"]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The report; then the sweep's exit status: 0 only when every job finished (done, or pruned by a
        search), else 1 with one line naming the other jobs and the command that continues them."""
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = find_runs([sweep_dir], required=False)
        if not runs:
            log.warning("no run directories under %s; no report written", sweep_dir)
            return
        counts = build_report(runs, sweep_dir)
        log.info("comparison report: %s (%d runs, %d failed)", sweep_dir / "summary.md", counts["runs"],
                 counts["failed"])
        unfinished = [(run, status) for run in runs if (status := _status(run)) not in FINISHED]
        if unfinished:
            command = continue_command(config.hydra.overrides, sweep_dir)
            raise SystemExit(
                f"segbench: {len(unfinished)} of {len(runs)} jobs did not finish: "
                + ", ".join(f"{_job_name(run.path, sweep_dir)} ({status})" for run, status in unfinished)
                + f"; see {sweep_dir / 'summary.md'}; continue them with: {command}"
            )


FINISHED = ("done", "pruned")  # a search's pruned trial ended as its pruner asked


def _status(run: Any) -> str:
    """A run's metrics.json status; ``no metrics.json`` (the job ended before writing one, or is still
    running elsewhere) or ``damaged``."""
    from ..errors import DataError

    try:
        return str(run.read_metrics().get("status") or "no metrics.json")
    except (DataError, OSError):
        return "damaged"


def _job_name(path: Path, sweep_dir: Path) -> str:
    try:
        return str(path.relative_to(sweep_dir))
    except ValueError:
        return str(path)
