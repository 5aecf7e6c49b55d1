"""Resume, interrupts, crash safety, divergence, out-of-memory, config validation, dataset integrity."""
import json
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from skimage import io as skio

from segbench import check_data
from segbench.errors import TrainingError, UserError
from segbench.runs import RunDir, sweep_records
from segbench.inference import load_trained
from segbench.train import resume_command, run
from tests.conftest import TINY, compose_cfg, interrupt_in_epoch, run_cli, write_case

FOUR = [*TINY, "trainer.epochs=4"]
TEST_KEYS = ["test/iou", "test/dice", "test/iou_score", "test/loss", "test/hd95", "val/iou", "best_epoch"]


def history_without_time(path):
    return [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("extra", [
    [],
    ["scheduler=cosine", "scheduler.warmup=3", "optimizer.lr=1e-3"],  # a per-step schedule
    ["augment=standard", "callbacks=[ema,grad_clip]", "callbacks.ema.decay=0.9"],  # RNG draws every batch; EMA state
], ids=["plain", "per_step_schedule", "augment_ema_clip"])
def test_interrupt_and_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, extra):
    args = [*FOUR, *extra]
    full = run(compose_cfg([*args, f"output_dir={tmp_path / 'full'}"]))

    restore = interrupt_in_epoch(monkeypatch, 3)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg([*args, f"output_dir={cut}"]))
    assert json.loads((cut / "metrics.json").read_text())["status"] == "interrupted"
    assert len((cut / "history.csv").read_text().splitlines()) == 1 + 2
    assert torch.load(cut / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 2
    assert "trainer.resume=auto" in (cut / "train.log").read_text()

    restore()
    resumed = run(compose_cfg([*args, f"output_dir={cut}", "trainer.resume=auto"]))
    assert {k: resumed[k] for k in TEST_KEYS} == {k: full[k] for k in TEST_KEYS}
    assert history_without_time(cut / "history.csv") == history_without_time(tmp_path / "full" / "history.csv")
    last = torch.load(cut / "checkpoints" / "last.pt", weights_only=False)
    reference = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    assert all(torch.equal(last["model"][k], reference["model"][k]) for k in reference["model"])


def test_resume_skips_a_finished_run(tmp_path):
    out = tmp_path / "run"
    first = run(compose_cfg([*TINY, f"output_dir={out}"]))
    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = run(compose_cfg([*TINY, f"output_dir={out}", "trainer.resume=auto"]))
    assert again == json.loads((out / "metrics.json").read_text()) and again["test/iou"] == first["test/iou"]
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    # a damaged metrics.json (derived from the checkpoint) is written again, not fatal
    (out / "metrics.json").write_bytes(b'{"status": "do\xff')
    assert RunDir(out).status() == "damaged"
    with pytest.raises(UserError, match=f"'{out / 'metrics.json'}' is damaged and cannot be read"):
        RunDir(out).read_metrics()
    rebuilt = run(compose_cfg([*TINY, f"output_dir={out}", "trainer.resume=auto"]))
    assert rebuilt["status"] == "done" and rebuilt["test/iou"] == first["test/iou"]
    assert json.loads((out / "metrics.json").read_text())["test/iou"] == first["test/iou"]


def test_a_damaged_checkpoint_is_named_before_resuming(tmp_path):
    out = tmp_path / "run"
    run(compose_cfg([*TINY, f"output_dir={out}"]))
    last = out / "checkpoints" / "last.pt"
    (out / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    best = out / "checkpoints" / "best.pt"
    best.unlink()  # a hard link to an earlier last.pt, or to this one
    last.write_bytes(last.read_bytes()[:1000])  # cut short
    best.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=rf"^the checkpoint '{last}' is damaged and cannot be read \(.*\); "
                                        "cannot resume from it: delete it to train this run again from epoch 1$"):
        run(compose_cfg([*TINY, f"output_dir={out}", "trainer.resume=auto"]))
    assert "Resume with" not in (out / "train.log").read_text()  # it would fail again
    with pytest.raises(UserError, match=f"^the checkpoint '{best}' is damaged"):
        load_trained(out)
    last.unlink()  # as the message says: the run trains again from epoch 1
    assert run(compose_cfg([*TINY, f"output_dir={out}", "trainer.resume=auto"]))["status"] == "done"


def test_resume_with_other_settings_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    restore = interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg([*FOUR, f"output_dir={out}"]))
    restore()
    with pytest.raises(UserError, match=r"holds a partial run with other settings \(.*model.base_width: 4 -> 8"):
        run(compose_cfg([*FOUR, f"output_dir={out}", "trainer.resume=auto", "model.base_width=8"]))
    with pytest.raises(UserError, match=r"holds a partial run with other settings \(.*trainer.epochs: 4 -> 5"):
        run(compose_cfg([*FOUR, f"output_dir={out}", "trainer.resume=auto", "trainer.epochs=5"]))
    # run settings (segbench.config.RUN_SETTINGS) may change: where and how it runs, not what it computes
    resumed = run(compose_cfg([*FOUR, f"output_dir={out}", "trainer.resume=auto", "trainer.eval_batch_size=2",
                               "trainer.log_every=3", "eval.num_predictions=1"]))
    assert resumed["status"] == "done" and resumed["epochs"] == 4


def resume_hint(job_dir):
    """What an interrupted sweep job logs to resume, computed under that job's own Hydra config."""
    hydra_cfg = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml")
    hydra_node = OmegaConf.structured(HydraConf)  # what a job's HydraConfig holds and the hint reads
    hydra_node.mode = hydra_cfg.hydra.mode
    hydra_node.sweep.dir = hydra_cfg.hydra.sweep.dir
    hydra_node.overrides.task = list(hydra_cfg.hydra.overrides.task)
    hydra_node.overrides.hydra = list(hydra_cfg.hydra.overrides.hydra)
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra_node}))
    try:
        hint = resume_command(RunDir(job_dir))
    finally:
        HydraConfig.instance().cfg = None
    commands = [line.strip() for line in hint.splitlines() if line.strip().startswith("python -m segbench")]
    return [shlex.split(c)[3:] for c in commands]  # the args after python -m segbench


def test_sweep_rerun_completes_only_what_is_missing(tmp_path):
    sweep = tmp_path / "sweep"
    # a launcher option (a Hydra group override) is part of the launch the hint repeats
    args = ["-m", *[o for o in TINY if not o.startswith("trainer.device")], "loss=bce,dice", "hydra/launcher=basic",
            f"hydra.sweep.dir={sweep}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    done = sweep / "loss=bce"
    unfinished = sweep / "loss=dice"
    stamp = (done / "checkpoints" / "last.pt").stat().st_mtime_ns
    (unfinished / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    whole, alone = resume_hint(unfinished)  # the hint names the sweep's overrides, not the job's single values
    assert whole == [*args, "trainer.resume=auto"]
    result = run_cli(whole, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (done / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp  # not trained again
    assert json.loads((unfinished / "metrics.json").read_text())["status"] == "done"
    assert "holds a finished run with these settings" in (done / "train.log").read_text()
    assert (sweep / "summary.md").read_text().count("| done |") == 2
    # one job alone, in its own dir (named "loss=bce": a Hydra value that must be quoted)
    (done / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    _, alone = resume_hint(done)
    assert f'hydra.run.dir="{done}"' in alone and "hydra/launcher=basic" in alone
    result = run_cli(alone, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((done / "metrics.json").read_text())["status"] == "done"
    assert "resuming from" in (done / "train.log").read_text()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["loss=bce", "loss=dice"]  # no new job dir
    # a narrower re-run (loss=dice alone: nothing swept, so its default name is every override) continues
    # the job of the same overrides instead of training it again in a new dir
    (unfinished / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    stamp = (unfinished / "checkpoints" / "last.pt").stat().st_mtime_ns
    narrower = ["-m", *[o for o in TINY if not o.startswith("trainer.device")], "loss=dice", f"hydra.sweep.dir={sweep}",
                "trainer.resume=auto", "trainer.progress=false"]
    result = run_cli(narrower, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["loss=bce", "loss=dice"]
    assert json.loads((unfinished / "metrics.json").read_text())["status"] == "done"
    assert "resuming from" in (unfinished / "train.log").read_text()
    assert (unfinished / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp  # resumed after its last epoch
    # every launch into the dir stays on record (Hydra's multirun.yaml is the latest only), and a later hint
    # repeats each distinct sweep: the narrower one alone would leave loss=bce unfinished
    assert [p.name for p in sweep_records(sweep)] == ["multirun.1.yaml", "multirun.2.yaml", "multirun.yaml"]
    (unfinished / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    *wholes, alone = resume_hint(unfinished)  # its last launch was the narrower one
    assert wholes == [[*args, "trainer.resume=auto"],
                      [*narrower[:-3], "trainer.progress=false", f"hydra.sweep.dir={sweep}", "trainer.resume=auto"]]
    assert alone[-2:] == [f'hydra.run.dir="{unfinished}"', "trainer.resume=auto"]  # (both launches ran above)


def test_sweep_job_subdir_reuses_the_one_run_of_the_same_overrides(tmp_path):
    from segbench.runs.naming import job_subdir as sweep_job_subdir

    def job(name, overrides):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("seed: 0\n")
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))

    job("model=unet,seed=2", ["experiment=quick", "seed=2", "model=unet", "trainer.progress=false"])
    job("model=segnet,seed=2", ["experiment=quick", "seed=2", "model=segnet"])
    job("model=segnet,seed=3", ["experiment=quick", "seed=3", "model=segnet"])
    job("model=segnet,seed=3,x", ["experiment=quick", "seed=3", "model=segnet"])  # two runs of one config
    job("broken", [])
    (tmp_path / "broken" / ".hydra" / "overrides.yaml").write_text("[unclosed")  # damaged: names no run
    narrower = ["experiment=quick", "seed=2", "model=unet", "trainer.resume=auto", "trainer.device=cpu"]
    # run settings aside, the same overrides: the existing dir
    assert sweep_job_subdir(str(tmp_path), "model=unet", narrower) == "model=unet,seed=2"
    # resuming is the default (trainer.resume=auto); with overwrite: the default name, as Hydra would
    assert sweep_job_subdir(str(tmp_path), "model=unet", narrower[:3]) == "model=unet,seed=2"
    assert sweep_job_subdir(str(tmp_path), "model=unet", [*narrower[:3], "trainer.resume=overwrite"]) == "model=unet"
    # the default exists: kept
    (tmp_path / "model=unet").mkdir()
    assert sweep_job_subdir(str(tmp_path), "model=unet", narrower) == "model=unet"
    # another value, no match, two matches, no sweep dir yet: the default
    other = ["experiment=quick", "seed=2", "model=unet", "loss=dice", "trainer.resume=auto"]
    assert sweep_job_subdir(str(tmp_path), "loss=dice", other) == "loss=dice"
    twice = ["experiment=quick", "seed=3", "model=segnet", "trainer.resume=auto"]
    assert sweep_job_subdir(str(tmp_path), "model=segnet", twice) == "model=segnet"
    assert sweep_job_subdir(str(tmp_path / "new"), "model=unet", narrower) == "model=unet"


def test_nan_loss_fails_with_epoch_batch_and_causes(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, batch \d+ of 2; likely causes: a learning rate"):
        run(compose_cfg([*TINY, "optimizer.lr=1e30", f"output_dir={out}"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "TrainingDiverged" in metrics["error"]


def test_nan_loss_from_the_cli_is_a_clear_error(tmp_path):
    result = run_cli([*TINY, "optimizer.lr=1e30", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "loss became nan at epoch 1" in result.stderr and "Traceback" not in result.stderr


def test_out_of_memory_names_the_batch_size(tmp_path, monkeypatch):
    from segbench.models import EncoderDecoder

    def oom(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(EncoderDecoder, "forward", oom)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"out of GPU memory during training epoch 1 at trainer.batch_size=4: "
                                            r"try trainer.batch_size=2"):
        run(compose_cfg([*TINY, f"output_dir={out}"]))
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"


def test_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A crash while writing leaves the previous complete file and no temp file."""
    from segbench.runs import atomic as io

    path = tmp_path / "metrics.json"
    io.write_json(path, {"status": "done"})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.json, "dumps", lambda *a, **k: '{"status": "half')
    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.write_json(path, {"status": "failed"})
    assert json.loads(path.read_text()) == {"status": "done"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_background_checkpoint_is_a_snapshot_and_best_is_the_same_file(tmp_path):
    from segbench.runs.checkpoint import CheckpointWriter

    weight = torch.ones(3)
    writer = CheckpointWriter()
    writer.save(tmp_path / "last.pt", {"w": weight, "history": [1]}, also=[tmp_path / "best.pt"])
    weight.add_(1)  # the next optimizer step, while the first write may still be running
    writer.wait()
    assert torch.equal(torch.load(tmp_path / "last.pt")["w"], torch.ones(3))
    assert (tmp_path / "best.pt").stat().st_ino == (tmp_path / "last.pt").stat().st_ino
    writer.save(tmp_path / "last.pt", {"w": weight, "history": [1, 2]})
    writer.wait()
    assert torch.load(tmp_path / "last.pt")["history"] == [1, 2]
    assert torch.equal(torch.load(tmp_path / "last.pt")["w"], torch.full((3,), 2.0))  # into the reused copy
    assert torch.equal(torch.load(tmp_path / "best.pt")["w"], torch.ones(3))  # best stays at its epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp files


def test_a_failed_checkpoint_write_names_the_file(tmp_path):
    from segbench.runs.checkpoint import CheckpointWriter

    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    writer = CheckpointWriter()
    writer.save(tmp_path / "checkpoints" / "last.pt", {"w": torch.ones(1)})
    with pytest.raises(TrainingError, match=f"could not write checkpoint {tmp_path / 'checkpoints' / 'last.pt'}"):
        writer.wait()
    writer.wait()  # the error is raised once


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epochs=0", "trainer.epochs=0 is invalid; expected an integer >= 1"),
        ("trainer.epochs=2.5", "trainer.epochs=2.5 is invalid; expected an integer >= 1"),
        ("trainer.epochs=true", "trainer.epochs=True is invalid; expected an integer >= 1"),
        ("trainer.batch_size=-2", "trainer.batch_size=-2 is invalid"),
        ("trainer.eval_batch_size=-1", "trainer.eval_batch_size=-1 is invalid"),
        ("trainer.resume=yes", r"trainer.resume='yes' is invalid; expected one of \['auto', 'overwrite'\]"),
        ("trainer.val_every=0", "trainer.val_every=0 is invalid; expected an integer >= 1"),
        ("trainer.threads=0", "trainer.threads=0 is invalid; expected an integer >= 1"),
        ("trainer.device=gpu7", "trainer.device='gpu7'"),
        ("trainer.device=tpu", "trainer.device='tpu'"),
        ("trainer.precision=half", r"trainer.precision='half' is invalid; expected one of \['auto', 'bf16', 'fp16', 'fp32'\]"),
        ("trainer.precision=bf61", "did you mean 'bf16'"),
        ("trainer.compile=maybe", "trainer.compile='maybe' is invalid; expected true, false or auto"),
        ("optimizer.lr=0", "optimizer.lr=0 is invalid; expected a number > 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr=-0.001 is invalid"),
        ("eval.threshold=1.5", "eval.threshold=1.5 is invalid; expected a number > 0 and < 1, or 'auto'"),
        ("eval.threshold=best", "eval.threshold='best' is invalid"),
        ("eval.resolution=orignal", "eval.resolution='orignal' is invalid; expected one of .*; did you mean 'original'"),
        ("eval.num_predictions=0", "eval.num_predictions=0 is invalid"),
        ("seed=abc", "seed='abc' is invalid; expected an integer"),
        ("loss=focal loss.gamma=-1", "loss.gamma=-1 is invalid; expected a number >= 0"),
        ("model.base_width=0", "model.base_width=0 is invalid; expected an integer >= 1"),
        ("+model.up=pixelshuffle", "model.up='pixelshuffle' is invalid; expected one of"),
        ("dataset.image_size=0", "dataset.image_size=0 is invalid; expected an integer >= 16"),
        ("dataset.num_cases=2", "dataset.num_cases=2 is invalid; expected an integer >= 3"),
        ("split.sizes=[6,0,3]", r"split.sizes=\[6, 0, 3\] is invalid; expected three integers >= 1"),
        ("split.sizes=[10,3,3]", r"train=10 \+ val=3 \+ test=3 = 16 exceed the 12 cases"),
        ("split.seed=1.5", "split.seed=1.5 is invalid; expected an integer"),
        ("split=kfold split.fold=5", "split.fold=5 is invalid; expected an integer >= 0 and <= 4"),
        ("split=kfold split.k=1", "split.k=1 is invalid; expected an integer >= 2"),
        ("augment=standard augment.strength=-1", "augment.strength=-1 is invalid; expected a number >= 0"),
        ("augment=standard augment.ops.0.p=2", r"augment.ops\[0\].p=2 is invalid; expected a number >= 0 and <= 1"),
        ("scheduler.interval=batch", "scheduler.interval='batch' is invalid; expected one of \\['epoch', 'step'\\]"),
        ("scheduler=plateau scheduler.monitor=val/iuo", "scheduler.monitor='val/iuo' is invalid; .*did you mean 'val/iou'"),
        ("scheduler=cosine scheduler.warmup=-1", "scheduler.warmup=-1 is invalid; expected an integer >= 0"),
        ("scheduler=onecycle scheduler.pct_start=1.5", r"scheduler \(torch.optim.lr_scheduler.OneCycleLR\): .*pct_start"),
    ],
)
def test_invalid_config_values_are_named(tmp_path, override, message):
    with pytest.raises(UserError, match=rf"(?<![\w.]){message}"):  # the key whole: no group prefixed twice
        run(compose_cfg([*TINY, *override.split(), f"output_dir={tmp_path}"]))
    assert not (tmp_path / "checkpoints").exists()  # no work was done
    if not override.startswith("split.sizes"):  # the split's sizes are checked against the cases it splits
        assert not (tmp_path / "split.json").exists()  # named before the data was read


# -- dataset integrity on a damaged copy of a small PH2-layout dataset ----------
def damage(root, kind):
    images = root / "PH2 Dataset images"
    if kind == "truncated":
        path = images / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.png"
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "corrupt":
        path = images / "IMD002" / "IMD002_Dermoscopic_Image" / "IMD002.png"
        path.write_bytes(b"this is not an image")
    elif kind == "mask_size":
        path = images / "IMD002" / "IMD002_lesion" / "IMD002_lesion.png"
        skio.imsave(path, np.zeros((20, 20), np.uint8), check_contrast=False)
    elif kind == "mask_levels":
        path = images / "IMD002" / "IMD002_lesion" / "IMD002_lesion.png"
        skio.imsave(path, (np.arange(40 * 48) % 3).reshape(40, 48).astype(np.uint8) * 100, check_contrast=False)
    elif kind == "duplicate":
        write_case(images, "imd002")
        path = images / "imd002"
    elif kind == "empty_case":
        path = images / "IMD099"
        path.mkdir()
    return path


DAMAGE = {
    "truncated": "cannot read image file",
    "corrupt": "cannot read image file",
    "mask_size": "must match",
    "mask_levels": "distinct values",
    "duplicate": "duplicate case id",
    "empty_case": "has no image",
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_dataset_errors_name_the_file(fake_ph2, kind):
    from segbench.data import PH2, DataError

    path = damage(fake_ph2, kind)
    with pytest.raises(DataError, match=DAMAGE[kind]) as err:
        PH2(fake_ph2, image_size=16, cache_dir=None).arrays
    assert str(path) in str(err.value)


def test_check_data_reports_every_problem_at_once(fake_ph2, capsys):
    for kind in ("truncated", "empty_case", "duplicate"):
        damage(fake_ph2, kind)
    mask = fake_ph2 / "PH2 Dataset images" / "IMD005" / "IMD005_lesion" / "IMD005_lesion.png"
    skio.imsave(mask, np.zeros((20, 20), np.uint8), check_contrast=False)
    code = check_data.main(["dataset=ph2", f"dataset.root={fake_ph2}", "split.sizes=[3,3,3]"])
    out = capsys.readouterr().out
    assert code == 1 and "5 problem(s)" in out
    for text in ("cannot read image file", "has no image", "duplicate case id", "IMD005_lesion.png",
                 "= 9 exceed the 7 readable cases"):
        assert text in out, text


def test_check_data_ok_and_bad_root(fake_ph2, tmp_path, capsys):
    assert check_data.main(["dataset=ph2", f"dataset.root={fake_ph2}", "split.sizes=[3,3,3]"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    assert check_data.main(["dataset=ph2", f"dataset.root={tmp_path / 'missing'}"]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert check_data.main(["dataset=synthetic"]) == 0


def test_check_data_on_real_ph2(ph2_root, capsys):
    assert check_data.main(["dataset=ph2", f"dataset.root={ph2_root}"]) == 0
    assert "OK: no problems found; 200 readable cases" in capsys.readouterr().out


def test_ctrl_c_prints_how_to_resume(tmp_path):
    args = [o for o in TINY if not o.startswith("trainer.epochs")] + ["trainer.epochs=200", "dataset.image_size=48"]
    run_dir = tmp_path / "run"
    # a shell's background job inherits SIGINT as ignored; give the child the default handler
    proc = subprocess.Popen([sys.executable, "-m", "segbench", *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints" / "last.pt").is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in out + err
    assert f"hydra.run.dir={run_dir} trainer.resume=auto" in out + err
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"


def test_rescore_reproduces_a_runs_test_metrics(tmp_path, capsys):
    """Scoring a finished run again gives its own numbers (same checkpoint, split, threshold rule, TTA)."""
    from segbench import rescore

    out = tmp_path / "run"
    first = run(compose_cfg([*TINY, f"output_dir={out}", "eval.threshold=auto", "eval.tta=flips",
                             "eval.postprocess=largest", "eval.resolution=original"]))
    per_image = (out / "test_per_image.csv").read_text()
    damaged = {**first, "test/iou": -1.0, "test/hd95": -1.0}
    (out / "metrics.json").write_text(json.dumps(damaged))
    (out / "test_per_image.csv").unlink()
    assert rescore.main([str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert {k: again[k] for k in TEST_KEYS + ["threshold", "val_final/iou"]} == \
        {k: first[k] for k in TEST_KEYS + ["threshold", "val_final/iou"]}
    assert again["rescored"]["before"]["test/iou"] == -1.0 and (out / "test_per_image.csv").read_text() == per_image
    assert "test/iou -1.0000 -> " in capsys.readouterr().out
    assert rescore.main([str(tmp_path / "nothing")]) == 2
