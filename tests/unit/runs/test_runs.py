"""The run directory's storage: atomic files, background checkpoint snapshots, write errors (runs/)."""
import json

import pytest
import torch

from segbench.errors import TrainingError


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
