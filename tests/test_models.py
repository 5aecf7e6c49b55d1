from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from segbench.models import EncoderDecoder, UNet
from tests.conftest import compose_cfg

MODEL_CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize("size", [(64, 64), (96, 80), (100, 100), (48, 32)])
def test_model_forward_backward_any_size(name, size):
    cfg = compose_cfg([f"model={name}", "model.base_width=4"])
    model = instantiate(cfg.model)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 1, *size)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_num_classes(name):
    model = instantiate(compose_cfg([f"model={name}", "model.base_width=4", "model.num_classes=3"]).model)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_classic_unet_parameter_count():
    # Ronneberger's U-Net (64..1024 channels, transposed-conv up, no BatchNorm), 3 -> 10 classes
    model = EncoderDecoder(3, 10, 64, up="transpose", batch_norm=False, bottleneck_mult=2)
    assert sum(p.numel() for p in model.parameters()) == 31_032_330


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"base_width": 0}, "base_width must be a positive integer"),
        ({"up": "pixelshuffle"}, "up='pixelshuffle' is not supported"),
        ({"skip": "sum"}, "skip='sum' is not supported"),
        ({"down": "strided", "up": "unpool"}, "needs the max-pool indices"),
    ],
)
def test_model_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)
