"""One trainer per run dir (runs/lock.py): a second process waits for the holder, named by host and pid; a
lock left by a dead process never blocks. The holders are real processes."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from segbench.runs.lock import LOCK_FILE, holder, run_lock

HOLD = """
import sys, time
from segbench.runs.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(run_dir, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_waits_for_the_holder_and_names_it(tmp_path, caplog):
    proc = _holder(tmp_path, 60)
    assert holder(tmp_path / LOCK_FILE) == f"host {socket.gethostname()} pid {proc.pid}"
    threading.Timer(1.0, proc.terminate).start()  # the holder ends after a second
    started = time.monotonic()
    with caplog.at_level("INFO", logger="segbench.runs.lock"), run_lock(tmp_path):
        waited = time.monotonic() - started
        assert holder(tmp_path / LOCK_FILE) == f"host {socket.gethostname()} pid {os.getpid()}"
    proc.wait()
    assert waited >= 0.9
    assert f"is being trained by host {socket.gethostname()} pid {proc.pid}: waiting for it to end" in caplog.text


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    proc = _holder(tmp_path, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_FILE).is_file()  # the file stays; the OS released the lock
    started = time.monotonic()
    with run_lock(tmp_path):
        assert time.monotonic() - started < 0.5
    with run_lock(tmp_path):  # and again in this process
        pass
