"""Resume: interrupted, finished and damaged runs, other settings refused, sweeps run again (train.run, runs/)."""
import json
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from segbench.errors import UserError
from segbench.evaluation.trained import load_trained
from segbench.runs import RunDir, sweep_records
from segbench.train import resume_command, run
from tests.conftest import TINY, compose_cfg, interrupt_in_epoch, run_cli

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
