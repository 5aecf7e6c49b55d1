"""The Optuna study behind ``hparams_search=optuna``: where it is stored, which trials count towards
``n_trials``, and trials whose process died (the search's part of the report: :mod:`.report`).

A study lives in a journal file (the default: ``<sweep dir>/optuna.journal``; no database server,
no SQLAlchemy) or in a database URL (``sqlite:///search.db``). The same command continues it, and
several processes (or SLURM array tasks) that name one storage and study cooperate on it.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError, describe

log = logging.getLogger(__name__)

# trial user attributes: which process runs a trial and the dir it trains in; a study user attribute:
# the trials whose process died (failed, and run again)
HOST, PID, DIR, DIED = "segbench_host", "segbench_pid", "trial_dir", "segbench_died"
JOURNAL = "optuna.journal"


def describe_storage(setting: str | None, sweep_dir: str | Path) -> str:
    """Where ``hydra.sweeper.storage`` keeps the study: a database URL as it is; a path (``*.journal``, or
    any other file name) of a journal file; null: ``<sweep dir>/optuna.journal``."""
    if setting is not None and "://" in str(setting):
        return str(setting)
    return str(Path(str(setting)).expanduser() if setting else Path(sweep_dir) / JOURNAL)


def storage_of(setting: str | None, sweep_dir: str | Path) -> BaseStorage | str:
    """``hydra.sweeper.storage`` as Optuna takes it: a database URL, or the journal file of
    :func:`describe_storage` (its folder made)."""
    where = describe_storage(setting, sweep_dir)
    if "://" in where:
        return where
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(where))


def open_study(name: str, storage: BaseStorage | str, direction: str, sampler: Any = None,
               pruner: Any = None) -> optuna.Study:
    """The study ``name`` in ``storage``, created on first use."""
    try:
        return optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler,
                                   pruner=pruner, load_if_exists=True)
    except ValueError as exc:  # another direction than the stored study's
        raise UserError(f"hydra.sweeper: the study '{name}' cannot be opened: {describe(exc)}") from exc
    except Exception as exc:  # a storage URL that cannot be reached or read
        raise UserError(f"hydra.sweeper.storage: the study '{name}' cannot be opened: {describe(exc)}") from exc


def counted(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count towards ``n_trials``: finished (complete, pruned, or failed by their own
    error) or running. A trial whose process died is run again and does not count."""
    died = set(study.user_attrs.get(DIED, []))
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.number not in died]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Trials left ``RUNNING`` by a search process of this host that no longer exists (killed, crashed):
    each is marked failed and queued again with its parameters, to continue in its own trial dir
    (from its ``last.pt``). Returns their numbers. Running trials of live processes, or of other hosts,
    are left alone (they may belong to a cooperating worker)."""
    host = socket.gethostname()
    dead = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get(HOST) != host or attrs.get(PID) is None or _alive(int(attrs[PID])):
            continue
        study.set_user_attr(DIED, [*study.user_attrs.get(DIED, []), trial.number])
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, DIR: attrs.get(DIR)})
        dead.append(trial.number)
    return dead


def claim(trial: optuna.Trial, trial_dir: str) -> None:
    """Record which process runs ``trial`` and where (for :func:`recover_dead_trials` and the report)."""
    trial.set_user_attr(HOST, socket.gethostname())
    trial.set_user_attr(PID, os.getpid())
    trial.set_user_attr(DIR, trial_dir)
