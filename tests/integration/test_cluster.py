"""Runs that survive a cluster and can be shared: signals, a used run dir, safe checkpoints, provenance, a full disk."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from segbench.engine import signals
from segbench.errors import CheckpointError, TrainingError, UserError
from segbench.evaluation.trained import load_trained
from segbench.report import build_report
from segbench.runs import RunDir
from segbench.runs.atomic import write_json
from segbench.runs.checkpoint import CheckpointWriter, load_checkpoint
from segbench.train import run
from segbench.upgrade_checkpoints import main as upgrade_main
from tests.conftest import ROOT, TINY, compose_cfg, interrupt_in_epoch, run_cli

TEST_KEYS = ["test/iou", "test/dice", "test/iou_score", "test/loss", "test/hd95", "val/iou", "best_epoch"]


def _wait_for_epochs(proc, run_dir, epochs, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        history = run_dir / "history.csv"
        if history.is_file() and len(history.read_text().splitlines()) >= 1 + epochs:
            return True
        time.sleep(0.01)
    return False


def test_sigterm_and_sigkill_then_the_same_command_ends_as_an_uninterrupted_run(tmp_path):
    """What a cluster does: SIGTERM (preemption, time limit) at an epoch, then the same command again (a
    requeue); SIGKILL there; the same command once more. The test metrics equal an uninterrupted run's."""
    args = [o for o in TINY if not o.startswith(("dataset.num_cases", "trainer.epochs"))]
    args += ["dataset.num_cases=40", "split.sizes=[24,8,8]", "trainer.epochs=6", "dataset.image_size=40"]
    want = run(compose_cfg([*args, f"output_dir={tmp_path / 'full'}"]))  # uninterrupted, in this process

    run_dir = tmp_path / "job"
    command = [sys.executable, "-m", "segbench", *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for_epochs(proc, run_dir, 2), "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGUSR1)  # a second signal at once: whichever Python handles first stops the run,
    out, err = proc.communicate(timeout=120)  # the other is ignored during the shutdown
    stopped = json.loads((run_dir / "metrics.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["signal"] in ("SIGTERM", "SIGUSR1")
    assert proc.returncode == 128 + signal.Signals[stopped["signal"]], err[-2000:]
    assert "Traceback" not in out + err and f"stopped by {stopped['signal']}" in err
    assert f"hydra.run.dir={run_dir}" in (run_dir / "train.log").read_text()  # the resume hint
    epoch = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert epoch == len((run_dir / "history.csv").read_text().splitlines()) - 1  # the last finished epoch
    assert not list(run_dir.rglob("*.tmp"))
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()

    # the same command again (a requeued job): it continues; SIGKILL it after more epochs
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for_epochs(proc, run_dir, epoch + 2), "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    again = run_cli(command[3:], cwd=tmp_path)  # and once more, to the end
    assert again.returncode == 0, again.stderr[-2000:]
    assert (run_dir / "train.log").read_text().count("resuming from") == 2
    got = json.loads((run_dir / "metrics.json").read_text())
    assert {k: got[k] for k in TEST_KEYS} == {k: want[k] for k in TEST_KEYS}
    assert len(json.loads((run_dir / "run.json").read_text())["launches"]) == 3

    # a finished run: the same command returns it; other settings are refused, and Hydra's record stays
    stamp = (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    refused = run_cli([*command[3:], "model.base_width=8"], cwd=tmp_path)
    assert refused.returncode == 2
    assert "holds a finished run with other settings (model.base_width: 4 -> 8)" in refused.stderr
    assert "trainer.resume=overwrite" in refused.stderr
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == overrides  # put back after Hydra wrote it
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    assert json.loads((run_dir / "metrics.json").read_text()) == got


def test_signals_stop_like_ctrl_c_and_reach_the_handler_before(monkeypatch):
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(signals.Stopped) as stopped, signals.stop_on_signals():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)  # the handler raises at the next instruction
        assert stopped.value.name == "SIGUSR1" and stopped.value.exit_status == 128 + signal.SIGUSR1
        assert isinstance(stopped.value, KeyboardInterrupt)  # everything that handles Ctrl-C handles it
        assert calls == []  # not yet: the run saves first, then forwards
        with signals.stop_on_signals():
            signals.forward(signals.Stopped(signal.SIGUSR1))
        assert calls == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is not None and not isinstance(signal.getsignal(signal.SIGUSR1),
                                                                                signals._Handlers)
        # a second signal while stopping is ignored
        with pytest.raises(signals.Stopped), signals.stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # during the shutdown
                time.sleep(0.1)
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])  # SIGHUP: an ssh session or a login node dropping
def test_a_signal_in_run_records_it_and_the_same_run_continues(tmp_path, monkeypatch, name):
    from segbench.engine import Trainer

    signum = getattr(signal, name)
    train_epoch = Trainer.train_epoch

    def terminated(self, images, masks, epoch):
        if epoch == 2:
            os.kill(os.getpid(), signum)
            time.sleep(1)
        return train_epoch(self, images, masks, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", terminated)
    out = tmp_path / "run"
    cfg = compose_cfg([*TINY, "trainer.epochs=3", f"output_dir={out}"])
    with pytest.raises(signals.Stopped) as stopped:
        run(cfg)
    assert stopped.value.exit_status == 128 + signum
    assert json.loads((out / "metrics.json").read_text()) == {"status": "interrupted", "error": name, "signal": name}
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert signal.getsignal(signum) is signal.SIG_DFL  # restored
    rows = build_report([RunDir(out)], tmp_path / "report")
    assert rows["runs"] == 1 and "| interrupted |" in (tmp_path / "report" / "summary.md").read_text()
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    assert run(cfg)["status"] == "done"  # the same command continues from last.pt
    assert "resuming from" in (out / "train.log").read_text()


def test_a_used_run_dir_is_never_trained_twice(tmp_path, caplog):
    out = tmp_path / "run"
    first = run(compose_cfg([*TINY, f"output_dir={out}"]))
    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = run(compose_cfg([*TINY, f"output_dir={out}", "trainer.progress=true"]))  # a run setting may differ
    assert again == first and (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    assert "holds a finished run with these settings" in caplog.text
    with pytest.raises(UserError, match=r"holds a finished run with other settings \(trainer.epochs: 2 -> 3\)"):
        run(compose_cfg([*TINY, f"output_dir={out}", "trainer.epochs=3"]))
    replaced = run(compose_cfg([*TINY, f"output_dir={out}", "trainer.epochs=3", "trainer.resume=overwrite"]))
    assert replaced["epochs"] == 3 and len(json.loads((out / "run.json").read_text())["launches"]) == 1
    assert "trainer.resume=overwrite: removed the earlier run's metrics.json" in caplog.text
    with pytest.raises(UserError, match=r"trainer.resume=None is invalid; expected 'auto' .* or 'overwrite'"):
        run(compose_cfg([*TINY, f"output_dir={out}", "trainer.resume=null"]))
    with pytest.raises(UserError, match=r"trainer.resume='yes' is invalid; expected one of \['auto', 'overwrite'\]"):
        run(compose_cfg([*TINY, f"output_dir={out}", "trainer.resume=yes"]))


def test_two_identical_commands_at_once_train_the_run_dir_once(tmp_path):
    """A job array with a duplicate task: the second process waits on the run dir's lock, naming the
    holder, then finds the run finished and does not train it again."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "segbench", *TINY, "trainer.epochs=25", f"hydra.run.dir={run_dir}"]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    trained = [out for out in outs if "wrote " in out]
    assert len(trained) == 1, outs
    other = next(out for out in outs if out is not trained[0])
    assert "holds a finished run with these settings" in other
    assert len((run_dir / "history.csv").read_text().splitlines()) == 1 + 25
    assert len(json.loads((run_dir / "run.json").read_text())["launches"]) == 1
    if "waiting for it to end" in other:  # it came while the first trained (not after it had finished)
        holder_pid = next(p.pid for p, out in zip(procs, outs) if out is trained[0])
        assert f"is being trained by host {socket.gethostname()} pid {holder_pid}" in other


def test_ctrl_c_records_sigint_and_a_second_one_leaves_no_traceback(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "segbench", *TINY, "trainer.epochs=200", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _wait_for_epochs(proc, run_dir, 2), "the run ended before it could be stopped"
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # a second Ctrl-C at once: during the stop
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text()) == {"status": "interrupted", "error": "SIGINT",
                                                                   "signal": "SIGINT"}
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    epoch = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert epoch == len((run_dir / "history.csv").read_text().splitlines()) - 1


AT_EXIT = """
import atexit, os, signal, sys, time
from segbench.engine import signals
atexit.register(lambda: (print("at exit", flush=True), time.sleep(60)))  # a slow flush at exit
try:
    with signals.stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except signals.Stopped:  # the run saves its state here
            if sys.argv[1] == "during":
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal while it saves
                time.sleep(0.5)
            raise
except signals.Stopped as exc:
    print("hurried" if exc.hurried else "saved", flush=True)
    signals.exit_after_stop(exc)
    raise SystemExit(exc.exit_status)
"""


@pytest.mark.parametrize("when", ["during", "after"])
def test_a_second_signal_hurries_the_exit_and_raises_nothing_in_exit_handlers(when):
    """A second signal while the state is saved ends the process once it is saved (no exit handlers run);
    one during the exit handlers ends it there; never a KeyboardInterrupt traceback."""
    proc = subprocess.Popen([sys.executable, "-c", AT_EXIT, when], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == ("hurried" if when == "during" else "saved")
    if when == "after":
        assert proc.stdout.readline().strip() == "at exit"
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "at exit" not in out
    if when == "during":
        assert "SIGTERM while stopping: hurrying" in err


class Payload:
    """What an attacker pickles into a checkpoint: unpickling it runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_load_safely_and_a_payload_runs_no_code(tmp_path):
    from segbench import export, predict, rescore

    out = tmp_path / "run"
    run(compose_cfg([*TINY, f"output_dir={out}", "callbacks=ema", "callbacks.ema.decay=0.9", "scheduler=cosine",
                     "augment=flips"]))
    for name in ("last.pt", "best.pt"):  # everything a checkpoint holds is what a safe load reads
        state = torch.load(out / "checkpoints" / name, weights_only=True)
        assert state["rng"]["numpy"]["name"] == "MT19937" and isinstance(state["config"], dict)
    marker = tmp_path / "pwned"
    state = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    (out / "checkpoints" / "best.pt").unlink()
    torch.save({**state, "extra": Payload(marker)}, out / "checkpoints" / "best.pt")
    images = tmp_path / "images"
    images.mkdir()
    from skimage import io as skio

    skio.imsave(images / "a.png", np.zeros((20, 20, 3), np.uint8), check_contrast=False)
    assert predict.main([str(out), str(images), "--output", str(tmp_path / "pred")]) == 2
    assert export.main([str(out), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 2
    assert rescore.main([str(out)]) == 1  # not rescored
    with pytest.raises(CheckpointError, match=r"holds objects that a safe load .* refuses.*it needs posix.system"):
        load_trained(out)
    assert not marker.exists()


def test_old_checkpoints_need_an_explicit_conversion(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    restore = interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg([*TINY, "trainer.epochs=3", f"output_dir={out}"]))
    restore()
    last = out / "checkpoints" / "last.pt"
    # as segbench before 0.2 wrote it: numpy's RNG state as a tuple holding an array
    state = torch.load(last, weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()
    last.unlink()
    (out / "checkpoints" / "best.pt").unlink()
    torch.save(state, last)
    os.link(last, out / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match="segbench upgrade-checkpoints " + str(out)):
        run(compose_cfg([*TINY, "trainer.epochs=3", f"output_dir={out}"]))
    assert upgrade_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best.pt: converted" in printed and "last.pt: the same file as best.pt" in printed
    assert (out / "checkpoints" / "best.pt").stat().st_ino == last.stat().st_ino
    assert upgrade_main([str(out)]) == 0 and "already safe" in capsys.readouterr().out
    assert run(compose_cfg([*TINY, "trainer.epochs=3", f"output_dir={out}"]))["status"] == "done"
    assert upgrade_main([str(tmp_path / "nothing")]) == 2


def test_a_saved_config_cannot_name_an_executable_target(tmp_path):
    out = tmp_path / "run"
    run(compose_cfg([*TINY, f"output_dir={out}"]))
    marker = tmp_path / "pwned"
    for name in ("best.pt", "last.pt"):
        path = out / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        state["config"]["model"] = {"_target_": "os.system", "command": f"touch {marker}"}
        path.unlink()
        torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"names the model target 'os.system', which is not a class"):
        load_trained(out)
    assert not marker.exists()
    # a callable Hydra's blocklist lets through (builtins.open would truncate the file) is refused too
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("best.pt", "last.pt"):
        path = out / "checkpoints" / name
        state = torch.load(path, weights_only=True)
        state["config"]["model"] = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
        path.unlink()
        torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"'builtins.open', which is not a class"):
        load_trained(out)
    assert victim.read_text() == "keep me"


def test_a_saved_config_builds_only_classes_of_its_kind(tmp_path):
    """build_saved: every _target_ (nested ones too) must be a class of the expected base before anything is
    called; the config's own classes build as usual."""
    from torch import nn

    from segbench.build import build_saved
    from segbench.data import SegDataset
    from segbench.errors import DataError

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    opener = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    combo = {"_target_": "segbench.losses.ComboLoss", "losses": {"bce": opener}, "weights": {"bce": 1.0}}
    for node, base, why in (
        (opener, SegDataset, "not a class"),
        (combo, nn.Module, "'builtins.open'"),
        ({"_target_": "segbench.losses.BCELoss"}, SegDataset, "not a SegDataset class"),
        ({"_target_": "no_such_module.Thing"}, nn.Module, "not a class segbench can import"),
    ):
        with pytest.raises(DataError, match=why):
            build_saved(node, "x", base, "a file")
    assert victim.read_text() == "keep me"
    loss = build_saved(
        {
            "_target_": "segbench.losses.ComboLoss",
            "losses": {"bce": {"_target_": "segbench.losses.BCELoss"}},
            "weights": {"bce": 1.0},
        },
        "loss",
        nn.Module,
        "a file",
    )
    assert isinstance(loss, nn.Module)


def test_provenance_is_recorded_and_the_report_warns_on_mixed_setups(tmp_path):
    out = tmp_path / "a"
    metrics = run(compose_cfg([*TINY, f"output_dir={out}"]))
    launch = metrics["provenance"]
    for key in (
        "segbench",
        "python",
        "torch",
        "cuda",
        "cudnn",
        "packages",
        "host",
        "cpu",
        "cpu_native_bf16",
        "gpu",
        "device",
        "device_kind",
        "argv",
        "git",
    ):
        assert key in launch
    assert launch["torch"] == torch.__version__ and launch["device_kind"] == "cpu"
    assert launch["packages"]["hydra-core"].startswith("1.3")
    assert json.loads((out / "run.json").read_text())["launches"] == [launch]
    if launch["git"] is not None:
        assert len(launch["git"]["commit"]) == 40 and isinstance(launch["git"]["dirty"], bool)
    # a second run "from another machine": the report says so
    other = tmp_path / "b"
    run(compose_cfg([*TINY, f"output_dir={other}", "seed=1"]))
    record = json.loads((other / "metrics.json").read_text())
    record["provenance"] = {**record["provenance"], "torch": "2.99.0", "device_kind": "cuda"}
    write_json(other / "metrics.json", record)
    build_report([RunDir(out), RunDir(other)], tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"different torch versions** ({torch.__version__}, 2.99.0)" in summary
    assert "different kinds of device** (cpu, cuda)" in summary


def test_a_full_disk_names_itself_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from segbench.runs import atomic, checkpoint

    writer = CheckpointWriter()
    path = tmp_path / "checkpoints" / "last.pt"
    writer.save(path, {"w": torch.ones(2), "epoch": 1})
    writer.wait()

    def full_disk(state, f):  # torch's zip writer on a full disk, after writing part of the file
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 628416 vs 628312")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    writer.save(path, {"w": torch.zeros(2), "epoch": 2})
    with pytest.raises(TrainingError, match=rf"could not write checkpoint {path}: no space left on device \(ENOSPC\)"):
        writer.wait()
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    # a JSON record: Python's own ENOSPC
    import errno

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_json(tmp_path / "metrics.json", {"status": "done"})
    monkeypatch.setattr(atomic.json, "dumps", lambda *a, **k: "{}")
    monkeypatch.setattr(atomic.os, "replace", no_space)
    with pytest.raises(TrainingError, match=r"could not write .*metrics.json: no space left on device"):
        write_json(tmp_path / "metrics.json", {"status": "failed"})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"status": "done"}


def test_slurm_preset_requeues_and_pins_hold():
    from hydra import compose, initialize_config_dir

    from segbench.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        launcher = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert launcher.max_num_timeout >= 1 and launcher.signal_delay_s >= 60
    assert launcher.additional_parameters.requeue is True
    text = (CONF_DIR.parent / "pyproject.toml").read_text() if (CONF_DIR.parent / "pyproject.toml").is_file() else ""
    if text:  # a checkout (the wheel has no pyproject.toml)
        assert '"hydra-core>=1.3,<1.4"' in text
    assert yaml.safe_load((CONF_DIR / "config.yaml").read_text())["trainer"]["resume"] == "auto"


def test_slurm_local_signals_requeues_and_continues_to_the_uninterrupted_metrics(tmp_path):
    """hydra/launcher=slurm_local under real submitit: a 1-minute limit with the warning signal_delay_s before
    it. A job cut by it is requeued and continued from last.pt to the metrics of an uninterrupted run; a job
    cut more than max_num_timeout times ends interrupted, and its sweep exits 1 after the report, naming it
    and the command that continues it. The two sweeps run at once."""
    args = [o for o in TINY if not o.startswith(("dataset.num_cases", "trainer.epochs", "dataset.image_size"))]
    args += ["dataset.num_cases=40", "split.sizes=[24,8,8]", "dataset.image_size=48", "trainer.threads=1"]
    started = time.perf_counter()
    want = run(compose_cfg([*args, "trainer.epochs=40", f"output_dir={tmp_path / 'full'}"]))
    took = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import segbench.train, submitit"], check=True)
    startup = 1.5 * (time.perf_counter() - started) + 1
    window = min(55, max(5, round(startup + 0.5 * took)))  # limit - signal_delay_s: cuts the 40-epoch run
    limit = ["hydra.launcher.timeout_min=1", f"hydra.launcher.signal_delay_s={60 - window}"]
    cut, requeued = tmp_path / "cut", tmp_path / "requeued"
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    sweeps = [  # a sweep as the user types it, and docs' SLURM recipe through its stand-in (narrowed to a job)
        subprocess.Popen([sys.executable, "-m", "segbench", "-m", "hydra/launcher=slurm_local", *limit, *args,
                          "hydra.launcher.max_num_timeout=0", "trainer.epochs=3000", f"hydra.sweep.dir={cut}"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(["bash", str(ROOT / "scripts" / "slurm" / "sweep.sh"), *limit,
                          "hydra.launcher.max_num_timeout=5", *args, "model=unet", "loss=bce", "seed=0",
                          "trainer.epochs=40"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**env, "LAUNCHER": "slurm_local", "SWEEP_DIR": str(requeued)}),
    ]
    (cut_out, cut_err), (out, err) = (sweep.communicate(timeout=600) for sweep in sweeps)

    def only_job(sweep):
        (path,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]  # .submitit: its logs
        return RunDir(path)

    job = only_job(requeued)
    log = job.train_log.read_text()
    assert sweeps[1].returncode == 0, err[-3000:]
    # every cut after an epoch is continued from last.pt (a job cut before its first epoch, on a loaded machine,
    # starts again from epoch 1); each requeued job is one more launch on record
    assert log.count("interrupted by SIGUSR2") >= 1
    assert log.count("resuming from") == log.count("the last finished epoch is in")
    got = job.read_metrics()
    assert got["status"] == "done" and {k: got[k] for k in TEST_KEYS} == {k: want[k] for k in TEST_KEYS}
    assert len(json.loads(job.run_json.read_text())["launches"]) == 1 + log.count("interrupted by")
    assert "ignoring the SLURM keys partition" in out + err and "Traceback" not in err

    job = only_job(cut)
    assert job.read_metrics() == {"status": "interrupted", "error": "SIGUSR2", "signal": "SIGUSR2"}
    assert "resuming from" not in job.train_log.read_text()  # max_num_timeout=0: not requeued
    assert sweeps[0].returncode == 1, cut_err[-3000:]
    line = next(line for line in cut_err.splitlines() if line.startswith("segbench: "))
    assert line.startswith(f"segbench: 1 of 1 jobs did not finish: {job.path.name} (interrupted); see "
                           f"{cut / 'summary.md'}; continue them with: python -m segbench -m ")
    assert line.endswith(f"trainer.epochs=3000 hydra/launcher=slurm_local hydra.launcher.timeout_min=1 "
                         f"hydra.launcher.signal_delay_s={60 - window} hydra.launcher.max_num_timeout=0 "
                         f"hydra.sweep.dir={cut} trainer.resume=auto")
    assert "Traceback" not in cut_err and "| interrupted |" in (cut / "summary.md").read_text()
