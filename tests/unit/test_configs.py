"""Every conf/<group>/*.yaml composes and instantiates (a new file is tested automatically)."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from segbench.build import build_schedule
from segbench.splits import Split
from tests.conftest import CONF, TINY, compose_cfg, needs

COMPONENT_GROUPS = ("model", "loss", "optimizer", "scheduler", "dataset", "split", "logger")
GROUP_FILES = sorted((g, p.stem) for g in COMPONENT_GROUPS for p in (CONF / g).glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


# every option on the base config; under the default recipe, the options of the groups it sets keys
# in or picks an option of (a recipe must not set a key that another option of the group lacks)
RECIPE_GROUPS = ("model", "loss", "optimizer", "scheduler")
CASES = [("none", g, n) for g, n in GROUP_FILES] + [("ph2_recipe", g, n) for g, n in GROUP_FILES if g in RECIPE_GROUPS]


# options with a mandatory key (???): a value for it (nothing is read before the data is loaded)
MANDATORY = {("dataset", "folder"): ["dataset.root=data/mine"], ("split", "file"): ["split.path=split.csv"]}


# options whose classes import an optional extra's package: skipped, naming it, without that extra
EXTRAS = {("logger", "mlflow"): needs("mlflow", extra="tracking"),
          ("logger", "tensorboard"): needs("tensorboard", extra="tracking"),
          **{("model", n): needs("monai", "einops", extra="monai") for g, n in GROUP_FILES if n.startswith("monai_")}}


@pytest.mark.parametrize("experiment, group, name", [
    pytest.param(e, g, n, id=f"{e}:{g}={n}", marks=[EXTRAS[(g, n)]] if (g, n) in EXTRAS else []) for e, g, n in CASES])
def test_config_file_instantiates(group, name, experiment, tmp_path):
    """Every option of every group builds."""
    cfg = compose_cfg([f"experiment={experiment}", f"{group}={name}", "model.base_width=4", f"cache_dir={tmp_path}",
                       *MANDATORY.get((group, name), [])])
    model = instantiate(cfg.model)
    if group == "scheduler":  # scheduler=none builds nothing
        optimizer = instantiate(cfg.optimizer)(params=model.parameters())
        schedule = build_schedule(cfg.scheduler, optimizer, epochs=3, batches_per_epoch=2)
        assert (schedule is None) == (name == "none")
        if schedule is not None:
            for _ in range(2):
                optimizer.step()
                schedule.batch_end()
            schedule.epoch_end({"val/iou": 0.5})
            assert optimizer.param_groups[0]["lr"] >= 0
        return
    obj = instantiate(cfg[group])
    if group == "optimizer":
        obj = obj(params=model.parameters())
        assert isinstance(obj, torch.optim.Optimizer)
    elif group == "split":
        assert isinstance(obj, Split)
    elif group == "loss":
        value = obj(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
        assert value.ndim == 0 and torch.isfinite(value)
    assert obj is not None


def test_default_is_the_gpu_recipe():
    cfg = compose_cfg()
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.scheduler._target_.endswith("WarmupCosine")
    assert cfg.loss._target_.endswith("ComboLoss") and cfg.augment.ops and cfg.callbacks.ema.decay == 0.99
    assert cfg.dataset.image_size == 256 and cfg.model.base_width == 64
    assert (cfg.eval.threshold, cfg.eval.resolution, cfg.eval.tta, cfg.eval.postprocess) == \
        ("auto", "original", "d4", "largest")
    assert compose_cfg(["loss=dice"]).loss._target_.endswith("DiceLoss")  # the command line still wins


def test_cpu_recipe_runs_on_tiny_data(tmp_path):
    """The CPU recipe's every part together (augmentation, EMA, cosine per step, TTA, post-processing,
    auto threshold, original resolution), shrunk to seconds."""
    from segbench.train import run

    cfg = compose_cfg(["experiment=ph2_recipe_cpu", *[o for o in TINY if o != "experiment=none"],
                       "dataset.image_size=32", "model.base_width=4", "scheduler.warmup=2", f"output_dir={tmp_path}"])
    metrics = run(cfg)
    assert metrics["status"] == "done" and metrics["definitions"]["tta"].startswith("mean logits of the 8")
    assert (tmp_path / "augmentations.png").is_file() and "train_model" in torch.load(
        tmp_path / "checkpoints" / "last.pt", weights_only=False)


def test_base_follows_seed_study():
    cfg = compose_cfg(["experiment=none"])
    choices = [Path(cfg[g]._target_).suffix for g in ("model", "loss")]
    assert choices == [".UNet", ".BCELoss"]
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert cfg.trainer.batch_size == 25 and cfg.dataset.image_size == 256
    assert cfg.split._target_ == "segbench.splits.Holdout" and cfg.split.sizes is None  # PH2: 100/50/50


def resolved(overrides):
    """The job config as ``python -m segbench ... --cfg job --resolve`` prints it, composed in this process
    (with Hydra's runtime config set, which the experiments' ${hydra:runtime.choices...} read)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True)
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_resolves(name):
    cfg = resolved([f"experiment={name}", "model=unet"])
    assert cfg["optimizer"]["lr"] > 0 and cfg["trainer"]["epochs"] >= 1




@pytest.mark.parametrize(
    "model, lr, step, epochs",
    [("segnet", 1e-3, 10, 35), ("segnet_unpool", 1e-3, 5, 20), ("unet", 1e-5, 10, 40),
     ("unet_strided", 1e-4, 10, 20), ("unet_unpool", 1e-3, 7, 25)],
)
def test_seed_study_per_model_settings(model, lr, step, epochs):
    cfg = resolved(["experiment=seed_study", f"model={model}"])
    assert (cfg["optimizer"]["lr"], cfg["scheduler"]["step_size"], cfg["trainer"]["epochs"]) == (lr, step, epochs)
    assert cfg["scheduler"]["gamma"] == 0.1 and cfg["trainer"]["batch_size"] == 25
    assert cfg["optimizer"]["_target_"] == "torch.optim.Adam"


def test_quick_experiment():
    cfg = compose_cfg(["experiment=quick"])
    assert cfg.dataset.image_size == 128 and cfg.model.base_width == 16


