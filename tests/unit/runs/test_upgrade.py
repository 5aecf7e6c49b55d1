"""Runs and command lines from before segbench 0.2 (the callbacks group, trainer.monitor).

tests/fixtures/run_d2ca122 holds what segbench at commit d2ca122 wrote for a tiny run (1 epoch, base
width 2, ``trainer.ema=0.9 trainer.early_stop.patience=5``): its Hydra record (.hydra/), the keys of its
metrics.json, and checkpoint.json, the form of its checkpoints without their tensors (a checkpoint pickled
numpy's RNG state, and its config had the old trainer.* keys). Checkpoints do not belong in the
repository, so the ``old_run`` fixture trains the same settings now and writes its run dir in that form.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io as skio

from segbench import predict, rescore
from segbench.cli.main import main
from segbench.compat import upgrade_config
from segbench.errors import CheckpointError
from segbench.train import run
from segbench.upgrade_checkpoints import main as upgrade_main
from tests.conftest import compose_cfg

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "run_d2ca122"
# its command line, with the keys that moved written as they are now
OLD_COMMAND = [line[2:] for line in (FIXTURE / ".hydra" / "overrides.yaml").read_text().splitlines()]
NEW_COMMAND = [o for o in OLD_COMMAND if not o.startswith(("trainer.ema", "trainer.early_stop"))] + [
    "callbacks=[ema,early_stop]", "callbacks.ema.decay=0.9", "callbacks.early_stop.patience=5"]


@pytest.fixture
def old_run(tmp_path):
    """A run dir as segbench wrote it at d2ca122: the settings trained now (fp32, as that version's auto
    was on a CPU), then its files written in the old form."""
    fresh, path = tmp_path / "fresh", tmp_path / "old"
    run(compose_cfg([*NEW_COMMAND, "trainer.precision=fp32", "trainer.channels_last=false", f"output_dir={fresh}"]))
    shutil.copytree(FIXTURE / ".hydra", path / ".hydra")
    for name in ("history.csv", "split.json", "test_per_image.csv"):
        shutil.copy(fresh / name, path / name)
    old_keys = json.loads((FIXTURE / "metrics.json").read_text())
    metrics = json.loads((fresh / "metrics.json").read_text())
    (path / "metrics.json").write_text(json.dumps({k: metrics[k] for k in old_keys if k in metrics}, indent=2))
    form = json.loads((FIXTURE / "checkpoint.json").read_text())
    (path / "checkpoints").mkdir()
    for name in ("last.pt", "best.pt"):  # two files then (best.pt is a hard link to last.pt now)
        state = torch.load(fresh / "checkpoints" / name, weights_only=True)
        old = {key: state[key] for key in form["keys"]}
        old["config"], old["rng"]["numpy"] = form["config"], np.random.get_state()
        torch.save(old, path / "checkpoints" / name)
    return path


def test_a_run_from_before_0_2_is_upgraded_once_then_used_as_it_is(old_run, tmp_path):
    before = json.loads((old_run / "metrics.json").read_text())
    with pytest.raises(CheckpointError, match="segbench upgrade-checkpoints"):
        run(compose_cfg([*NEW_COMMAND, f"output_dir={old_run}"]))
    assert upgrade_main([str(old_run)]) == 0
    # the same command with today's keys: its settings are the same, it is finished, so nothing trains
    history = (old_run / "history.csv").read_text()
    metrics = run(compose_cfg([*NEW_COMMAND, f"output_dir={old_run}"]))
    assert metrics == before and (old_run / "history.csv").read_text() == history
    # other settings are still told apart
    with pytest.raises(Exception, match=r"callbacks.ema.decay: 0.9 -> 0.5"):
        run(compose_cfg([*NEW_COMMAND, "callbacks.ema.decay=0.5", f"output_dir={old_run}"]))
    assert rescore.main([str(old_run)]) == 0
    rescored = json.loads((old_run / "metrics.json").read_text())
    assert rescored["test/iou"] == pytest.approx(before["test/iou"], abs=1e-6) and "rescored" in rescored
    images = tmp_path / "images"
    images.mkdir()
    skio.imsave(images / "a.png", np.full((20, 24, 3), 90, np.uint8), check_contrast=False)
    assert predict.main([str(old_run), str(images), "--output", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "a.png").is_file()


def test_upgrade_config_maps_the_old_keys_to_the_callbacks_group():
    old = json.loads(json.dumps({"trainer": {"epochs": 3, "grad_clip": 1.0, "ema": None,
                                             "early_stop": {"patience": 4, "min_delta": 0.01}},
                                 "scheduler": {"monitor": "val/iou", "mode": "max", "factor": 0.5}}))
    new = upgrade_config(old)
    assert new["callbacks"] == {
        "grad_clip": {"_target_": "segbench.engine.GradClip", "max_norm": 1.0},
        "early_stop": {"_target_": "segbench.engine.EarlyStopping", "patience": 4, "min_delta": 0.01}}
    assert new["trainer"] == {"epochs": 3, "val_every": 1, "monitor": "val/iou", "monitor_mode": "auto",
                              "sync_batchnorm": "auto"}
    assert new["scheduler"] == {"monitor": "val/iou", "factor": 0.5}
    assert "grad_clip" in old["trainer"]  # the argument is not modified
    assert upgrade_config(new) is new  # a current config: unchanged
    nothing = upgrade_config({"trainer": {"ema": None, "grad_clip": None, "early_stop": {"patience": None}}})
    assert nothing["callbacks"] is None
    # the YAMLs of the callbacks group build what the upgrade writes
    cfg = compose_cfg(["experiment=none", "callbacks=[grad_clip,early_stop]", "callbacks.grad_clip.max_norm=1.0",
                       "callbacks.early_stop.patience=4", "callbacks.early_stop.min_delta=0.01"])
    from omegaconf import OmegaConf
    assert OmegaConf.to_container(cfg.callbacks) == new["callbacks"]


@pytest.mark.parametrize("arg, says", [
    ("trainer.ema=0.99", "write callbacks=ema callbacks.ema.decay=0.99"),
    ("+trainer.grad_clip=1", "write callbacks=grad_clip callbacks.grad_clip.max_norm=1"),
    ("trainer.early_stop.patience=20", "write callbacks=early_stop callbacks.early_stop.patience=20"),
    ("trainer.ema=null", "leave out callbacks=..."),
])
def test_a_key_that_moved_is_named_with_its_new_override(arg, says, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["segbench", arg])
    assert main() == 2
    err = capsys.readouterr().err
    assert f"'{arg}'" in err and "moved to the callbacks config group" in err and says in err


