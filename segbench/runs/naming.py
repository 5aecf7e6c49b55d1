"""How sweep jobs' run dirs are named: Hydra's ``override_dirname`` (what the sweep varies), except for a
job that continues a run of the same overrides launched under another name (the resolver
``segbench_job_subdir`` behind ``hydra.sweep.subdir``, registered by :func:`register_resolvers`).

A leaf of the package: it reads run dirs through :class:`~segbench.runs.rundir.RunDir` only, so that
resolving a job's dir (in every launcher's worker) imports nothing of the report or the engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from ..config import defining_overrides
from ..errors import DataError
from .rundir import find_runs


def job_subdir(sweep_dir: str, default: str, overrides: Sequence[Any]) -> str:
    """The directory of a sweep job below ``hydra.sweep.dir`` (the resolver ``segbench_job_subdir``).

    ``default`` is the job's ``hydra.job.override_dirname``: what the sweep varies
    (``loss=dice,model=unet``). A narrower re-run of a sweep varies less, so its
    jobs' default names differ from the first sweep's. A job that resumes
    (``trainer.resume=auto``, the default: not ``overwrite``) and whose default directory does
    not exist therefore continues the one run of the sweep dir that was launched
    with the same overrides (its ``.hydra/overrides.yaml``; run settings aside),
    instead of training again in a new directory. No such run, or more than one:
    the default.
    """
    overrides = [str(o) for o in overrides]
    root = Path(str(sweep_dir))
    if "trainer.resume=overwrite" in overrides or (root / default).exists() or not root.is_dir():
        return default
    wanted = set(defining_overrides(overrides))
    matches = []
    for run in find_runs([root], required=False):
        try:
            theirs = run.read_overrides()
        except (OSError, DataError, TypeError):
            continue  # a damaged record names no run
        if set(defining_overrides(theirs)) == wanted:
            matches.append(run.path.relative_to(root).as_posix())
    return matches[0] if len(matches) == 1 else default


STARTED_ENV = "SEGBENCH_STARTED"  # ISO time: the launch's start, the same on every rank of a torchrun launch


def started(pattern: str) -> str:
    """The resolver ``segbench_now`` of the default run and sweep dirs: Hydra's ``now`` (the time, as
    ``pattern`` formats it), except that every rank of a data-parallel launch reads rank 0's start time
    (``SEGBENCH_STARTED``), so that they all name one run dir."""
    import datetime
    import os

    when = os.environ.get(STARTED_ENV)
    return (datetime.datetime.fromisoformat(when) if when else datetime.datetime.now()).strftime(pattern)


def register_resolvers() -> None:
    """The resolvers conf/config.yaml uses; done on import of :mod:`segbench.config`, so also in a
    launcher's worker processes."""
    if not OmegaConf.has_resolver("segbench_job_subdir"):
        OmegaConf.register_new_resolver("segbench_job_subdir", job_subdir)
    if not OmegaConf.has_resolver("segbench_now"):
        OmegaConf.register_new_resolver("segbench_now", started, use_cache=True)
