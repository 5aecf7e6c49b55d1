"""Stopping a run on a signal: SIGINT (Ctrl-C), SIGTERM (what SLURM and ``kill`` send), SIGHUP (an ssh
session or a login node dropping), SIGUSR1 and SIGUSR2 (the advance warnings a cluster sends before a time
limit, with ``sbatch --signal``; submitit asks for SIGUSR2 by default).

Inside :func:`stop_on_signals` the first of these signals raises :class:`Stopped` (a KeyboardInterrupt)
in the main thread, which unwinds the run: the last finished epoch's ``last.pt`` is already on disk (the
background write is waited for), ``metrics.json`` says ``interrupted`` and names the signal, and the
resume command is logged. A second signal during that shutdown cannot cut a file short: it is logged
and only hurries the stop (:func:`exit_after_stop`: once the state is saved the process ends at once,
skipping what a normal exit runs, such as the loggers' final flush). Afterwards the handler that was
there before gets the signal (:func:`forward`): a launcher's own handler (submitit's requeue) still
runs, and the process exits with ``128 + signal number`` as a killed process would (130 for Ctrl-C).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """A run stopped by ``signum``; raised at the next Python instruction of the main thread."""

    def __init__(self, signum: int, handlers: "_Handlers | None" = None) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.handlers = handlers
        super().__init__(self.name)

    @property
    def hurried(self) -> bool:
        """Whether a second signal came while the run was stopping."""
        return self.handlers is not None and self.handlers.count > 1

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process killed by the signal."""
        return 128 + self.signum


class _Handlers:
    def __init__(self) -> None:
        self.received: int | None = None
        self.raised = self.deferring = False
        self.count = 0
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
            if not self.deferring:  # within a safe point's block: raised when it ends (see deferred())
                self.raised = True
                raise Stopped(signum, self)
            return
        log.warning("%s while stopping: hurrying; the run saves its state, then the process ends at once",
                    signal.Signals(signum).name)


_active: _Handlers | None = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A safe point: a signal that arrives within is raised when the block ends, not inside it (the end of
    an epoch: its history row, best epoch and checkpoint snapshot are taken together or not at all)."""
    handlers = _active
    if handlers is None or handlers.deferring:
        yield
        return
    handlers.deferring = True
    try:
        yield
    finally:
        handlers.deferring = False
    if handlers.received is not None and not handlers.raised:
        handlers.raised = True
        raise Stopped(handlers.received, handlers)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: :data:`STOP_SIGNALS` raise :class:`Stopped` (the first one) or are ignored (later ones).
    The handlers in place before are restored on leaving. Outside the main thread (where Python
    delivers no signals) nothing is installed."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers, outer = _Handlers(), _active
    for signum in STOP_SIGNALS:
        handlers.previous[signum] = signal.signal(signum, handlers)
    _active = handlers
    try:
        yield
    finally:
        for signum, previous in handlers.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        _active = outer


def previous_handler(signum: int) -> Callable | None:
    """The Python handler that :func:`stop_on_signals` replaced for ``signum`` (None: the default,
    ignored, or not installed from Python)."""
    if _active is None:
        return None
    previous = _active.previous.get(signum)
    return previous if callable(previous) else None


def forward(stopped: Stopped) -> None:
    """Hand the signal to the handler that was installed before (a launcher's: submitit checkpoints and
    requeues the job there, then exits). Call it once the run has saved its state."""
    previous = previous_handler(stopped.signum)
    if previous is not None and previous is not signal.default_int_handler:  # Python's Ctrl-C: the stop itself
        log.info("%s: passing it on to the handler installed before segbench's (%s)", stopped.name,
                 getattr(previous, "__qualname__", previous))
        previous(stopped.signum, None)


def exit_after_stop(stopped: Stopped) -> None:
    """Call once a run stopped by a signal has saved its state and the process is about to exit: from now
    on a further stop signal ends the process at once with ``stopped``'s exit status (no KeyboardInterrupt
    inside an exit handler), and if one came during the stop already, it ends now."""
    def end_now(signum: int | None = None, frame: Any = None) -> None:
        logging.shutdown()  # flush the log files
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(stopped.exit_status)

    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, end_now)
    if stopped.hurried:
        log.warning("a second signal came while stopping: the state is saved; exiting now")
        end_now()


def hold() -> None:
    """With several ranks (a data-parallel run): from now on, within :func:`stop_on_signals`, a stop signal
    raises nowhere by itself; the trainer reads it with :func:`held_signal` at the next epoch boundary,
    where every rank stops together (a rank that stopped alone would leave the others waiting)."""
    if _active is not None:
        _active.deferring = True


def held_signal() -> int:
    """The signal that came since :func:`hold` (once), or 0."""
    handlers = _active
    if handlers is None or handlers.received is None or handlers.raised:
        return 0
    handlers.raised = True
    return handlers.received
