import pytest
import torch
from hydra.utils import instantiate

from segbench import summary
from segbench.models import BasicUNet, EncoderDecoder, SegNet, UNet, UNetClassic
from tests.conftest import CONF, compose_cfg, needs

# MONAI's networks (model=monai_*) need the extra "monai"; without it their tests are skipped, naming it
NEEDS_MONAI = needs("monai", "einops", extra="monai")
MODEL_CONFIGS = [pytest.param(p.stem, marks=[NEEDS_MONAI] if p.stem.startswith("monai_") else [])
                 for p in sorted((CONF / "model").glob("*.yaml"))]


def build(name, *overrides):
    return instantiate(compose_cfg([f"model={name}", "model.base_width=4", *overrides]).model)


def test_every_seed_architecture_has_a_config():
    expected = {"segnet", "segnet_unpool", "unet", "unet_strided", "unet_unpool", "unet_classic", "basic_unet",
                "monai_flexible_unet", "monai_attention_unet", "monai_unetplusplus", "monai_swin_unetr"}
    assert expected <= {p.values[0] for p in MODEL_CONFIGS}


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize("size", [(64, 64), (96, 80), (37, 101)])
def test_model_forward_backward_any_size(name, size):
    model = build(name)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_num_classes(name):
    assert build(name, "model.num_classes=3")(torch.randn(1, 3, 32, 27)).shape == (1, 3, 32, 27)


@pytest.mark.parametrize("size", [(64, 64), (96, 80), (100, 100), (37, 101)])
def test_unet_classic_valid_mode_matches_input_size(size):
    model = build("unet_classic", "model.padding=valid", "model.batch_norm=true")
    assert model(torch.randn(2, 3, *size)).shape == (2, 1, *size)


def test_valid_mode_sizes_are_the_papers():
    # Ronneberger et al.: a 572x572 input tile gives a 388x388 output map
    assert UNetClassic(padding="valid").valid_sizes(388) == (572, 388)


@pytest.mark.parametrize("size, pixel", [(300, (150, 150)), (301, (120, 181))])
def test_valid_mode_output_is_aligned_with_input(size, pixel):
    """Output pixel (i, j) sees a receptive field centred on input pixel (i, j), up to pooling parity."""
    torch.manual_seed(0)
    model = UNetClassic(1, 1, 2, padding="valid").eval()
    x = torch.randn(1, 1, size, size, requires_grad=True)
    model(x)[0, 0, pixel[0], pixel[1]].backward()
    seen = x.grad[0, 0].abs() > 0
    rows, cols = seen.any(1).nonzero().flatten(), seen.any(0).nonzero().flatten()
    assert abs((rows.min() + rows.max()).item() / 2 - pixel[0]) <= 2
    assert abs((cols.min() + cols.max()).item() / 2 - pixel[1]) <= 2
    assert rows.max() - rows.min() > 150  # the deep receptive field, not a shallow path


@pytest.mark.parametrize("up_mode", ["transpose", "bilinear", "nearest"])
def test_unet_classic_up_modes(up_mode):
    model = build("unet_classic", f"model.up_mode={up_mode}", "model.depth=3")
    assert model(torch.randn(1, 3, 40, 40)).shape == (1, 1, 40, 40)


def test_classic_unet_parameter_count():
    # the count the original-architecture notebook prints
    model = build("unet_classic", "model.in_channels=3", "model.num_classes=10", "model.base_width=64",
                  "model.padding=same", "model.batch_norm=false", "model.up_mode=transpose")
    assert sum(p.numel() for p in model.parameters()) == 31_032_330


def test_basic_unet_parameter_count():
    # the diffusion-course notebook's BasicUNet(in_channels=1, out_channels=1)
    assert sum(p.numel() for p in BasicUNet(1, 1, 32).parameters()) == 309_057


@pytest.mark.parametrize("cls", [UNet, SegNet, UNetClassic])
def test_named_models_are_classes(cls):
    """UNet, SegNet and UNetClassic are classes (isinstance works), assembled from the shared encoder-decoder."""
    model = cls(base_width=2)
    assert isinstance(model, cls) and isinstance(model, EncoderDecoder)
    assert isinstance(
        build({"unet": "unet", "segnet": "segnet", "unetclassic": "unet_classic"}[cls.__name__.lower()]), cls
    )


def test_variants_differ_where_they_should():
    unpool = build("segnet_unpool")
    strided = build("unet_strided")
    assert any(isinstance(m, torch.nn.MaxUnpool2d) for m in unpool.modules())
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in strided.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in strided.modules())


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (UNet, {"base_width": 0}, "base_width=0 is invalid; expected an integer >= 1"),
        (UNet, {"base_width": True}, "base_width=True is invalid; expected an integer >= 1"),
        (UNet, {"up": "pixelshuffle"}, "up='pixelshuffle' is invalid; expected one of"),
        (UNet, {"skip": "sum"}, "skip='sum' is invalid; expected one of"),
        (UNet, {"skip": "concta"}, "did you mean 'concat'"),
        (EncoderDecoder, {"down": "strided", "up": "unpool"}, "needs the max-pool indices"),
        (EncoderDecoder, {"up": "unpool", "padding": "valid"}, "needs padding='same'"),
        (UNetClassic, {"padding": "full"}, "padding='full' is invalid"),
        (UNetClassic, {"up_mode": "unpool"}, "up_mode='unpool' is invalid"),
        (BasicUNet, {"num_classes": 0}, "num_classes=0 is invalid; expected an integer >= 1"),
    ],
)
def test_model_bad_arguments(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**kwargs)


def test_summary_table(capsys):
    summary.main(["--size", "32", "--base-width", "4", "--models", "unet", "basic_unet"])
    out = capsys.readouterr().out
    params = sum(p.numel() for p in UNet(base_width=4).parameters())
    assert f"| `unet` | 4 | {params:,} |" in out and "| 1x1x32x32 |" in out and "`basic_unet`" in out


def test_summary_rejects_unknown_model():
    with pytest.raises(SystemExit):
        summary.main(["--models", "resnet"])


def test_max_unpool_matches_torch():
    """The scatter form of max-unpooling (traceable for export) gives MaxUnpool2d's values and gradients."""
    from segbench.models.blocks import max_unpool

    x = torch.randn(2, 3, 6, 10, requires_grad=True)
    pooled, idx = torch.nn.functional.max_pool2d(x, 2, 2, return_indices=True)
    a = pooled.detach().clone().requires_grad_(True)
    b = pooled.detach().clone().requires_grad_(True)
    ours, ref = max_unpool(a, idx, (6, 10)), torch.nn.MaxUnpool2d(2, 2)(b, idx, output_size=(6, 10))
    assert torch.equal(ours, ref)
    weights = torch.randn_like(ref)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(a.grad, b.grad)
