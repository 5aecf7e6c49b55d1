"""Training that cannot go on: a NaN loss and out-of-memory are named with where and what to try (engine/loop.py)."""
import json

import pytest
import torch

from segbench.errors import TrainingError
from segbench.train import run
from tests.conftest import TINY, compose_cfg


def test_nan_loss_fails_with_epoch_batch_and_causes(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(
        TrainingError, match=r"loss became nan at epoch 1, batch \d+ of 2; likely causes: a learning rate"
    ):
        run(compose_cfg([*TINY, "optimizer.lr=1e30", f"output_dir={out}"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "TrainingDiverged" in metrics["error"]


def test_out_of_memory_names_the_batch_size(tmp_path, monkeypatch):
    from segbench.models import EncoderDecoder

    def oom(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(EncoderDecoder, "forward", oom)
    out = tmp_path / "run"
    with pytest.raises(
        TrainingError,
        match=r"out of GPU memory during training epoch 1 at trainer.batch_size=4: "
        r"try trainer.batch_size=2",
    ):
        run(compose_cfg([*TINY, f"output_dir={out}"]))
    assert json.loads((out / "metrics.json").read_text())["status"] == "failed"
