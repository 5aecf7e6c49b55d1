"""The Optuna study behind ``hparams_search=optuna``: where it is stored, which trials count towards
``n_trials``, and trials whose process died (the search's part of the report: :mod:`.report`).

A study lives in a journal file (the default: ``<sweep dir>/optuna.journal``; no database server,
no SQLAlchemy) or in a database (``sqlite:///search.db``, ``postgresql+psycopg://user@host/db``). The
same command continues it, and several processes (or SLURM array tasks) that name one storage and study
cooperate on it.

A trial whose process died (killed, out of memory, its node lost) is failed and run again in its own
dir, from its ``last.pt``:

- in a database, by Optuna's heartbeat: the worker running a trial records a heartbeat every
  ``heartbeat_interval`` seconds; any worker, on any host, fails a running trial whose heartbeat is older
  than ``grace_period`` and queues it again (Optuna's retry callback, up to ``max_retry`` times);
- in a journal file (no heartbeat), by a process check on the host that ran it (:func:`recover_dead_trials`).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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


@dataclass(frozen=True)
class Heartbeat:
    """``hydra.sweeper.heartbeat_interval``, ``grace_period`` (None: twice the interval) and ``max_retry``."""

    interval: int = 60
    grace_period: int | None = None
    max_retry: int | None = 3


def storage_of(setting: str | None, sweep_dir: str | Path, heartbeat: Heartbeat | None = None) -> BaseStorage | str:
    """``hydra.sweeper.storage`` as Optuna takes it: a database URL (with ``heartbeat``: a database
    storage that fails and retries trials whose heartbeat stopped), or the journal file of
    :func:`describe_storage` (checked, its folder made)."""
    where = describe_storage(setting, sweep_dir)
    if "://" in where:
        return where if heartbeat is None else database(where, heartbeat)
    check_journal(Path(where))
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(where))


def hide_password(url: str) -> str:
    """A database URL as it may be logged: its password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: say nothing of it but its scheme
        return url.split("://", 1)[0] + "://..."


def database(url: str, heartbeat: Heartbeat) -> BaseStorage:
    """Optuna's database storage at ``url``, with the heartbeat and the retry of stale trials."""
    from optuna.storages import RDBStorage

    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    retry = retry or optuna.storages.RetryFailedTrialCallback  # optuna < 4.9 names it so
    name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in \
        inspect.signature(RDBStorage).parameters else "failed_trial_callback"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace_period,
                              **{name: retry(max_retry=heartbeat.max_retry)})
    except Exception as exc:  # a server that cannot be reached, a driver that is missing, a bad URL
        hint = ""
        if isinstance(exc, ModuleNotFoundError) or "psycopg" in str(exc):
            hint = ' (PostgreSQL needs a driver: pip install "segbench[cluster]", which installs psycopg)'
        raise UserError(f"hydra.sweeper.storage={hide_password(url)} cannot be opened: {describe(exc)}{hint}") from exc


def heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between a running trial's heartbeats in the study's storage; None: no heartbeat (a journal)."""
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval() if interval is not None else None


def has_heartbeat(study: optuna.Study) -> bool:
    return heartbeat_interval(study) is not None


def fail_stale(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat stopped (whoever ran them, wherever); the retry callback
    queues each again. Nothing for a journal file."""
    if has_heartbeat(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: list[optuna.Trial]) -> Iterator[None]:
    """Within: a heartbeat for each of ``trials`` every ``heartbeat_interval`` seconds, from this process
    (which runs them, or waits for the launcher that does); none for a journal file."""
    if not has_heartbeat(study) or not trials:
        yield
        return
    storage, interval, stop = study._storage, heartbeat_interval(study), threading.Event()

    def beat() -> None:
        while True:
            for trial in trials:
                try:
                    storage.record_heartbeat(trial._trial_id)
                except Exception as exc:  # noqa: BLE001 - the server away for a moment: the next beat retries
                    log.warning("no heartbeat for trial %d: %s", trial.number, describe(exc))
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def check_journal(path: Path) -> None:
    """A journal file given by path is new, empty, or an Optuna journal (its first line a journal record:
    a JSON object with an ``op_code``); anything else is refused before Optuna appends to it."""
    expected = "expected an Optuna journal file (*.journal, made by a search), a new file name, or a database URL"
    if path.is_dir():
        raise UserError(f"hydra.sweeper.storage={path} is a directory; {expected}")
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise UserError(f"hydra.sweeper.storage={path}: {path.parent} is not a directory; {expected}")
        return
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
    except OSError as exc:
        raise UserError(f"hydra.sweeper.storage={path} cannot be read: {describe(exc)}") from exc
    if not first.strip():
        return  # empty: a journal that has no record yet
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise UserError(f"hydra.sweeper.storage={path} is a file that is not an Optuna journal (its first line is "
                        f"not a journal record); {expected}. It was left unchanged")


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
    error) or running. A trial whose process died is run again and does not count (in a journal: listed in
    the study's ``segbench_died``; in a database: in a retry's ``retry_history``)."""
    trials = study.get_trials(deepcopy=False)
    died = set(study.user_attrs.get(DIED, [])) | {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
    return [t for t in trials if t.state in states and t.number not in died]


def running_elsewhere(study: optuna.Study) -> list[int]:
    """The numbers of the trials running now (in other workers, when this one runs none)."""
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Trials left ``RUNNING`` by a search process of this host that no longer exists (killed, crashed), in a
    study without a heartbeat (a journal file; a database's heartbeat finds them from any host instead):
    each is marked failed and queued again with its parameters, to continue in its own trial dir
    (from its ``last.pt``). Returns their numbers. Running trials of live processes, or of other hosts,
    are left alone (they may belong to a cooperating worker)."""
    if has_heartbeat(study):
        return []
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
