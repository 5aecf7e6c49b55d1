"""Careless and hostile input to the commands: ``error: ...`` and exit status 2, never a traceback, and nothing
written where it should not be (a file for a folder, a training run's dir, another evaluation's dir; crafted
run dirs whose configs hold interpolations or lack keys, records nested or sized to exhaust the reader)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from segbench import evaluate, predict
from segbench.train import run
from tests.conftest import TINY, compose_cfg


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch dir with a finished run runA, a copy of it as a training run dir runV, an interrupted copy
    runI (stopped after epoch 1 of 2), two images and a file."""
    root = tmp_path_factory.mktemp("bad_input")
    run(compose_cfg([*TINY, f"output_dir={root / 'runA'}"]))
    shutil.copytree(root / "runA", root / "runV")
    shutil.copytree(root / "runA", root / "runI")
    metrics = root / "runI" / "metrics.json"
    metrics.write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    history = (root / "runI" / "history.csv").read_text().splitlines()
    (root / "runI" / "history.csv").write_text("\n".join(history[:2]) + "\n")
    (root / "imgs").mkdir()
    for i in range(2):
        Image.new("RGB", (20, 24), (40 * i, 90, 120)).save(root / "imgs" / f"im{i}.png")
    (root / "afile.txt").write_text("mine")
    return root


def failed(main, args, capsys) -> str:
    """Run a command that must refuse: exit status 2 and a one-line error, no traceback; returns stderr."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    return err


def crafted(scratch: Path, name: str, edit) -> Path:
    """A copy of runA whose checkpoint's saved config is changed by ``edit(config)``."""
    path = scratch / name
    if path.exists():
        shutil.rmtree(path)
    shutil.copytree(scratch / "runA", path)
    for ckpt in ("best.pt", "last.pt"):
        file = path / "checkpoints" / ckpt
        state = torch.load(file, weights_only=True)
        edit(state["config"])
        file.unlink()  # best.pt may be a hard link of last.pt
        torch.save(state, file)
    return path


def test_an_output_that_is_a_file_is_refused(scratch, capsys):
    err = failed(evaluate.main, [scratch / "runA", "--output", scratch / "afile.txt"], capsys)
    assert "--output" in err and "afile.txt' is a file" in err
    err = failed(predict.main, [scratch / "runA", scratch / "imgs", "--output", scratch / "afile.txt"], capsys)
    assert "afile.txt' is a file" in err and (scratch / "afile.txt").read_text() == "mine"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys, a place even root cannot create files")
def test_an_output_that_cannot_be_written_is_named(scratch, capsys):
    err = failed(predict.main, [scratch / "runA", scratch / "imgs", "--output", "/sys/segbench_out"], capsys)
    assert "'/sys/segbench_out'" in err


def test_an_output_into_a_training_run_dir_is_refused(scratch, capsys):
    before = sorted(p.name for p in (scratch / "runV").iterdir())
    err = failed(evaluate.main, [scratch / "runA", "--output", scratch / "runV"], capsys)
    assert "is a run directory" in err and sorted(p.name for p in (scratch / "runV").iterdir()) == before
    err = failed(predict.main, [scratch / "runA", scratch / "imgs", "--output", scratch / "runV"], capsys)
    assert "is a run directory" in err


def test_an_output_holding_another_evaluation_is_not_mixed(scratch, tmp_path, capsys):
    out = tmp_path / "evx"
    assert evaluate.main([str(scratch / "runA"), "--output", str(out)]) == 0
    report = (out / "summary.md").read_text()
    assert evaluate.main([str(scratch / "runA"), "--output", str(out)]) == 0  # the same command again
    other = crafted(scratch, "runB", lambda config: None)
    err = failed(evaluate.main, [other, "--output", out], capsys)
    assert "holds the evaluation of other runs (runA)" in err
    assert (out / "summary.md").read_text() == report and not (out / "runB").exists()


def test_predict_warns_about_an_unfinished_run(scratch, tmp_path, capsys):
    assert predict.main([str(scratch / "runI"), str(scratch / "imgs"), "--output", str(tmp_path / "p"),
                         "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {scratch / 'runI'} is not a finished run (status interrupted, epoch 1 of 2)" in err


@pytest.mark.parametrize("edit, says", [
    (lambda c: c["dataset"].pop("image_size"), "holds a config without 'dataset.image_size'"),
    (lambda c: c["dataset"].update(root="${oc.env:SEGBENCH_SECRET}"),
     "'dataset.root' holds an interpolation (${...}; not resolved)"),
    (lambda c: c["model"].update(base_width="${oops"), "'model.base_width' holds an interpolation"),
])
def test_a_crafted_checkpoint_config_is_refused_unresolved(scratch, tmp_path, capsys, monkeypatch, edit, says):
    monkeypatch.setenv("SEGBENCH_SECRET", "hunter2")
    path = crafted(scratch, "runX", edit)
    err = failed(predict.main, [path, scratch / "imgs", "--output", tmp_path / "p"], capsys)
    assert says in err and "hunter2" not in err and f"the checkpoint '{path / 'checkpoints' / 'best.pt'}'" in err


@pytest.mark.parametrize("content, says", [
    ("[" * 200_000 + "]" * 200_000, "nested deeper than Python can parse"),
    ('{"status": "done", "pad": "' + "x" * (17 * 2**20) + '"}', "17 MB, more than the 16 MB"),
])
def test_a_hostile_metrics_json_is_refused(scratch, tmp_path, capsys, content, says):
    path = crafted(scratch, "runM", lambda config: None)
    (path / "metrics.json").write_text(content)
    err = failed(evaluate.main, [path, "--output", tmp_path / "ev"], capsys)
    assert says in err and "metrics.json' is damaged" in err and not (tmp_path / "ev").exists()


def test_a_damaged_checkpoint_never_advises_an_unsafe_load(scratch, tmp_path, capsys):
    path = crafted(scratch, "runD", lambda config: None)
    best = path / "checkpoints" / "best.pt"
    data = bytearray(best.read_bytes())
    start = data.find(b"\x80\x02")
    data[start:start + 8] = b"\x95" * 8  # the pickle inside the zip: an opcode torch's safe unpickler lacks
    best.write_bytes(bytes(data))
    err = failed(predict.main, [path, scratch / "imgs", "--output", tmp_path / "p"], capsys)
    assert "is damaged and cannot be read (UnpicklingError: Unsupported operand" in err
    assert "weights_only" not in err
