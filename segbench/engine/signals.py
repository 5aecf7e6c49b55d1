"""Stopping a run on a signal as on Ctrl-C: SIGTERM (what SLURM and ``kill`` send), SIGHUP (an ssh session
or a login node dropping), SIGUSR1 and SIGUSR2 (the advance warnings a cluster sends before a time limit,
with ``sbatch --signal``; submitit asks for SIGUSR2 by default).

Inside :func:`stop_on_signals` the first of these signals raises :class:`Stopped` in the main thread,
which unwinds the run like a KeyboardInterrupt: the last finished epoch's ``last.pt`` is already on
disk (the background write is waited for), ``metrics.json`` says ``interrupted`` and names the
signal, and the resume command is logged. A second signal during that shutdown is logged and
ignored, so it cannot cut a file short (every write is atomic besides). Afterwards the handler that
was there before gets the signal (:func:`forward`): a launcher's own handler (submitit's requeue)
still runs, and the process exits with ``128 + signal number`` as a killed process would.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """A run stopped by ``signum``; raised at the next Python instruction of the main thread."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process killed by the signal."""
        return 128 + self.signum


class _Handlers:
    def __init__(self) -> None:
        self.received: int | None = None
        self.raised = self.deferring = False
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            if not self.deferring:  # within a safe point's block: raised when it ends (see deferred())
                self.raised = True
                raise Stopped(signum)
            return
        log.warning("%s while stopping: ignored; the run is saving its state", signal.Signals(signum).name)


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
        raise Stopped(handlers.received)


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
    if previous is not None:
        log.info("%s: passing it on to the handler installed before segbench's (%s)", stopped.name,
                 getattr(previous, "__qualname__", previous))
        previous(stopped.signum, None)
