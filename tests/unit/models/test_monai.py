"""MONAI's networks as model presets (models/monai_nets.py, conf/model/monai_*.yaml; the extra "monai").

Every preset's forward/backward at odd sizes and its class count are in test_models.py (which enumerates
conf/model); here each completes a 1-epoch run, and the wrapper's own rules are checked."""
import json

import pytest
import torch

from segbench.train import run
from tests.conftest import CONF, TINY, compose_cfg, needs

pytestmark = needs("monai", "einops", extra="monai")
PRESETS = sorted(p.stem for p in (CONF / "model").glob("monai_*.yaml"))


def test_the_issue_presets_exist():
    assert {"monai_flexible_unet", "monai_attention_unet", "monai_unetplusplus", "monai_swin_unetr"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_monai_preset_completes_a_run(name, tmp_path):
    """1 epoch on the tiny synthetic data through run(cfg): trained, tested, written like any model."""
    out = tmp_path / name
    metrics = run(compose_cfg([*TINY, f"model={name}", "trainer.epochs=1", f"output_dir={out}"]))
    assert metrics["status"] == "done" and metrics["params"] > 0
    assert 0 <= metrics["test/iou"] <= 1
    assert json.loads((out / "metrics.json").read_text())["status"] == "done"
    assert (out / "checkpoints" / "best.pt").is_file()


def test_the_wrapper_pads_to_the_stride_and_crops_back():
    """MonaiNet hands the network a multiple of its stride (at least 2 cells) and returns the input's size."""
    from segbench.models.monai_nets import MonaiNet

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x[:, :1]

    net = MonaiNet(Probe(), 16)
    x = torch.arange(2 * 3 * 37 * 50, dtype=torch.float32).reshape(2, 3, 37, 50)
    out = net(x)
    assert seen == [(48, 64)] and out.shape == (2, 1, 37, 50)
    assert torch.equal(out, x[:, :1])  # centred padding, cropped back exactly
    net(torch.zeros(1, 3, 5, 7))
    assert seen[-1] == (32, 32)  # 2 x stride at least


@pytest.mark.parametrize("backbone", ["efficientnet-b0", "resnet18"])
def test_flexible_unet_has_no_unused_weights(backbone):
    """The backbone's classifier head is dropped: every parameter gets a gradient (nothing stored for nothing)."""
    from segbench.models import FlexibleUNet

    model = FlexibleUNet(base_width=4, backbone=backbone)
    model(torch.randn(2, 3, 40, 40)).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone": "efficientnet-b9"}, "backbone='efficientnet-b9' is invalid; expected one of"),
    ({"backbone": "resnet181"}, "did you mean 'resnet18'"),
    ({"pretrained": "yes"}, "pretrained='yes' is invalid; expected true or false"),
    ({"base_width": 0}, "base_width=0 is invalid; expected an integer >= 1"),
    ({"bn_momentum": 0}, "bn_momentum=0 is invalid; expected a number > 0 and <= 1"),
])
def test_flexible_unet_bad_arguments(kwargs, message):
    from segbench.models import FlexibleUNet

    with pytest.raises(ValueError, match=message):
        FlexibleUNet(**kwargs)


def test_swin_feature_size_is_a_multiple_of_12():
    from segbench.models import SwinUNETR

    assert SwinUNETR(base_width=16).network.swinViT.embed_dim == 24
    assert SwinUNETR(base_width=24).network.swinViT.embed_dim == 24


def test_without_monai_the_error_names_the_extra(monkeypatch):
    import sys

    from segbench.errors import UserError
    from segbench.models import AttentionUNet

    monkeypatch.setitem(sys.modules, "monai.networks.nets", None)  # what an install without it raises: ImportError
    with pytest.raises(UserError, match=r'model=monai_attention_unet needs the package \'monai\'.*segbench\[monai\]'):
        AttentionUNet()


def test_flexible_unet_batch_norm_momentum():
    """PyTorch's default momentum on every batch norm (MONAI's EfficientNet has TensorFlow's 0.01), or MONAI's."""
    from segbench.models import FlexibleUNet

    def momenta(model):
        return {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert momenta(FlexibleUNet(base_width=4)) == {0.1}
    assert momenta(FlexibleUNet(base_width=4, bn_momentum=None)) == {0.01, 0.1}  # encoder 0.01, decoder 0.1
