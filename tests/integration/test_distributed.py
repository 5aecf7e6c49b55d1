"""Data-parallel runs on torch.distributed with real processes (gloo on the CPU): trainer.devices=2 and
torchrun give one run dir with the test metrics of a one-process run of the same global batch; a signal to
one rank stops every rank after the same epoch and the same command continues (on another world size);
a killed rank ends the run with an error that names it."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench.runs import RunDir
from segbench.train import run
from tests.conftest import TINY, compose_cfg

# 24 training cases in batches of 8: every batch splits 4 + 4; fp32, one thread per rank
ARGS = [*(o for o in TINY if not o.startswith(("dataset.num_cases", "trainer.epochs", "trainer.batch_size"))),
        "dataset.num_cases=40", "split.sizes=[24,8,8]", "trainer.batch_size=8", "trainer.epochs=6",
        "trainer.threads=1"]
KEYS = ["test/iou", "test/dice", "test/iou_score", "test/hd95", "val/iou", "best_epoch"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    return run(compose_cfg([*ARGS, f"output_dir={out}"])), out


def _children(pid):
    """The spawned ranks of a process (its children that run torch's spawn_main)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def _same(got, want):
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-4), key


def test_two_ranks_in_a_sweep_job_equal_one_process_and_write_one_run_dir(tmp_path, one_process):
    """A job of a joblib multirun with trainer.devices=2 (its worker spawns the ranks): one job dir, the
    one-process metrics, and the sweep's report counts it done."""
    want, _ = one_process
    out = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "segbench", "-m", "hydra/launcher=joblib", *ARGS, "seed=0",
                             "trainer.devices=2", f"hydra.sweep.dir={out}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = [p.parent for p in out.glob("*/metrics.json")]  # no per-rank dirs
    got = RunDir(job).read_metrics()
    assert got["status"] == "done" and got["world_size"] == 2 and got["backend"] == "gloo"
    _same(got, want)
    assert json.loads((job / "run.json").read_text())["launches"][0]["world_size"] == 2
    log = (job / "train.log").read_text()
    assert log.count("wrote ") == 1 and "data-parallel: rank 0 of 2 (gloo), 4 cases of each batch of 8" in log
    assert "'done': 1, 'failed': 0" in result.stdout + result.stderr and (out / "summary.md").is_file()


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun is not installed beside this Python")
def test_torchrun_ranks_name_one_run_dir(tmp_path, one_process):
    want, _ = one_process
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "segbench", *ARGS],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (day,) = (tmp_path / "outputs").iterdir()
    (out,) = day.iterdir()  # one run dir, named by rank 0's start time
    got = RunDir(out).read_metrics()
    assert got["world_size"] == 2
    _same(got, want)


def test_the_tasks_of_a_slurm_job_are_the_ranks_of_one_run(tmp_path, one_process):
    """hydra/launcher=slurm_local hydra.launcher.tasks_per_node=2: submitit starts the job's two tasks, as
    srun does on SLURM, and they train one run in one job dir, equal to one process."""
    want, _ = one_process
    out = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "segbench", "-m", "hydra/launcher=slurm_local",
                             "hydra.launcher.tasks_per_node=2", *ARGS, "seed=0", f"hydra.sweep.dir={out}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = [p.parent for p in out.glob("*/metrics.json")]
    got = RunDir(job).read_metrics()
    assert got["status"] == "done" and got["world_size"] == 2
    _same(got, want)
    assert len(list(out.glob(".submitit/*/*_1_log.out"))) == 1  # the second task ran


def test_a_signal_to_one_rank_stops_all_and_the_run_continues_on_one_process(tmp_path, one_process):
    want, _ = one_process
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "segbench", *ARGS, "trainer.devices=2", f"hydra.run.dir={out}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "history.csv").is_file() and
                                          len((out / "history.csv").read_text().splitlines()) >= 3):
        time.sleep(0.02)
    ranks = _children(proc.pid)
    assert len(ranks) == 2, "the ranks were not found"
    os.kill(ranks[1], signal.SIGTERM)  # one rank only (a node's task preempted)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = RunDir(out).read_metrics()
    assert stopped == {"status": "interrupted", "error": "SIGTERM", "signal": "SIGTERM"}
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # no per-rank dirs
    assert "Traceback" not in err
    # the same command, on one process (another world size): it continues from last.pt
    result = subprocess.run([*command[:-2], f"hydra.run.dir={out}"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in (out / "train.log").read_text()
    got = RunDir(out).read_metrics()
    assert got["status"] == "done" and got["world_size"] == 1
    _same(got, want)


def test_a_killed_rank_ends_the_run_with_an_error_naming_it(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "segbench", *ARGS, "trainer.epochs=200", "trainer.devices=2",
               f"hydra.run.dir={out}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "history.csv").is_file():
        time.sleep(0.02)
    ranks = _children(proc.pid)
    assert len(ranks) == 2
    os.kill(ranks[1], signal.SIGKILL)
    started = time.time()
    _, err = proc.communicate(timeout=120)
    assert time.time() - started < 60
    assert proc.returncode == 2, err[-3000:]  # a segbench error's status
    assert "rank 1 failed: killed by SIGKILL" in err
    assert RunDir(out).read_metrics() == {"status": "failed", "error": "rank 1 failed: killed by SIGKILL"}
