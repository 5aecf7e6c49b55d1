"""One trainer per run dir: a process that trains a run dir holds an exclusive ``flock`` on its
``.segbench.lock`` for the whole run. A second process into the same dir (a job array with a duplicate
task, a requeue racing a job that still runs, the same command typed twice) waits for the holder,
naming its host and pid, and then finds the run finished (not trained again) or interrupted (continued
from ``last.pt``). The OS releases the lock when its process ends, however it ends: a lock left by a
dead process never blocks, and the file itself is never removed (removing a lock file races).

On NFS, ``flock`` is a lock across clients on Linux NFSv4 (and NFSv3 with the lock manager); a mount
with ``nolock`` or ``local_lock=flock`` locks on one node only.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_FILE = ".segbench.lock"


def holder(path: str | Path) -> str:
    """Who holds (or last held) the lock at ``path``: ``host <name> pid <n>`` as the holder wrote it."""
    try:
        text = Path(path).read_text(errors="replace")[:200].strip()
    except OSError:
        text = ""
    host, _, pid = text.partition(" ")
    return f"host {host} pid {pid}" if host and pid.isdigit() else "a process that has not said who it is yet"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run dir's lock within; waits while another live process holds it (logging who)."""
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            started = time.monotonic()
            log.warning("%s is being trained by %s: waiting for it to end (then this process continues the "
                        "run only if it did not finish)", run_dir, holder(path))
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder ends; a signal still stops this process
            log.info("the lock on %s was released after %.0fs", run_dir, time.monotonic() - started)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
