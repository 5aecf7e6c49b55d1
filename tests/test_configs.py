"""Every conf/<group>/*.yaml composes and instantiates (a new file is tested automatically)."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import CONF, compose_cfg

GROUP_FILES = sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml"))


@pytest.mark.parametrize("group, name", GROUP_FILES, ids=[f"{g}={n}" for g, n in GROUP_FILES])
def test_config_file_instantiates(group, name, tmp_path):
    cfg = compose_cfg([f"{group}={name}", "model.base_width=4", f"cache_dir={tmp_path}"])
    model = instantiate(cfg.model)
    obj = instantiate(cfg[group])
    if group == "optimizer":
        obj = obj(params=model.parameters())
        assert isinstance(obj, torch.optim.Optimizer)
    elif group == "scheduler":
        optimizer = instantiate(cfg.optimizer)(params=model.parameters())
        obj = obj(optimizer=optimizer)
        assert hasattr(obj, "step")
    elif group == "loss":
        value = obj(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
        assert value.ndim == 0 and torch.isfinite(value)
    assert obj is not None


def test_defaults_follow_seed_study():
    cfg = compose_cfg()
    choices = [Path(cfg[g]._target_).suffix for g in ("model", "loss")]
    assert choices == [".UNet", ".BCELoss"]
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert cfg.trainer.batch_size == 25 and cfg.dataset.image_size == 256
    assert list(cfg.dataset.split_sizes) == [100, 50, 50]
