"""Training callbacks (engine/callbacks.py, conf/callbacks/): EMA, early stopping, gradient clipping, and the
monitor that picks the best epoch."""

from types import SimpleNamespace

import pytest
import torch

from segbench.engine import EMA, Callback, EarlyStopping, FitSettings, GradClip, Normalizer, Trainer
from segbench.errors import UserError
from segbench.train import run
from tests.conftest import TINY, compose_cfg, tiny_data


# -- engine callbacks --------------------------------------------------------
def tiny_trainer(callbacks=(), **settings):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return Trainer(
        model,
        torch.nn.functional.binary_cross_entropy_with_logits,
        optimizer,
        FitSettings(**{"epochs": 1, "batch_size": 2, **settings}),
        torch.device("cpu"),
        callbacks=callbacks,
    )


def test_ema_weights_are_the_hand_computed_average():
    class Recorder(Callback):
        """Copies the trained weights after each optimizer step (it runs before EMA's update)."""

        def __init__(self):
            self.snapshots = []

        def on_train_batch_end(self, trainer, batch, running_loss):
            self.snapshots.append({k: v.detach().clone() for k, v in trainer.module.state_dict().items()})

    recorder = Recorder()
    trainer = tiny_trainer([recorder, EMA(0.75)])
    data = tiny_data()
    trainer.normalizer = Normalizer.fit(data.images)
    trainer.train_epoch(data.images, data.masks, 1)  # two optimizer steps: batch 2 of 4 images
    first, second = recorder.snapshots
    averaged = trainer.averaged.state_dict()
    for key, value in averaged.items():
        if value.is_floating_point():  # weights and BatchNorm statistics; the first step copies
            torch.testing.assert_close(value, 0.75 * first[key] + 0.25 * second[key])
    state = trainer.state(1)
    assert state["model"].keys() == averaged.keys() and "train_model" in state


def test_ema_agrees_with_torch_averaged_model_exactly():
    """The EMA callback against the reference, torch's AveragedModel with its EMA function, fed the same
    trained weights (and BatchNorm statistics) after each of six optimizer steps: equal to the bit."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    class Reference(Callback):
        def setup(self, trainer):
            self.model = AveragedModel(trainer.module, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)

        def on_train_batch_end(self, trainer, batch, running_loss):
            self.model.update_parameters(trainer.module)

    reference = Reference()
    trainer = tiny_trainer([reference, EMA(0.9)])
    data = tiny_data(n=12)
    trainer.normalizer = Normalizer.fit(data.images)
    trainer.train_epoch(data.images, data.masks, 1)
    expected = reference.model.module.state_dict()
    assert int(reference.model.n_averaged) == trainer.callback(EMA).steps == 6
    for key, value in trainer.averaged.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_early_stopping_stops_at_the_expected_epoch():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    fake = SimpleNamespace(stop_requested=False)
    for epoch, value in enumerate([0.5, 0.6, 0.605, 0.61, 0.7], 1):  # +0.005, +0.01 are not > 0.01
        stop.on_epoch_end(fake, {"epoch": epoch, "val/iou": value})
        if fake.stop_requested:
            break
    assert stop.stopped_epoch == 4 and epoch == 4


def test_early_stopping_ends_a_run_and_says_when(tmp_path):
    metrics = run(
        compose_cfg(
            [
                *TINY,
                "trainer.epochs=30",
                "callbacks=early_stop",
                "callbacks.early_stop.patience=1",
                "callbacks.early_stop.min_delta=0.5",
                f"output_dir={tmp_path}",
            ]
        )
    )
    assert metrics["stopped_epoch"] == 2  # no epoch can beat the first by 0.5 IoU
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 1 + 2


def test_grad_clip_bounds_the_gradient_norm():
    model = torch.nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 10.0)
    fake = SimpleNamespace(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
    )
    GradClip(1.5).on_before_optimizer_step(fake)
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert norm.item() == pytest.approx(1.5, rel=1e-5)


def test_the_monitor_chooses_the_best_epoch_and_is_recorded(tmp_path):
    """trainer.monitor=val/loss: the best checkpoint is the epoch with the lowest val loss (mode auto = min)."""
    metrics = run(
        compose_cfg(
            [*TINY, "trainer.epochs=4", "optimizer.lr=3e-3", "trainer.monitor=val/loss", f"output_dir={tmp_path}"]
        )
    )
    lines = (tmp_path / "history.csv").read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]
    best = min(rows, key=lambda r: r["val/loss"])
    assert metrics["monitor"] == {
        "key": "val/loss",
        "mode": "min",
        "value": best["val/loss"],
        "epoch": int(best["epoch"]),
    }
    assert metrics["best_epoch"] == int(best["epoch"]) and metrics["val/iou"] == best["val/iou"]
    assert metrics["definitions"]["checkpoint"] == f"best val/loss (epoch {int(best['epoch'])})"


def test_early_stopping_follows_a_minimised_monitor():
    stop = EarlyStopping(patience=2, monitor="val/loss")
    fake = SimpleNamespace(stop_requested=False)
    for epoch, value in enumerate([0.5, 0.4, 0.45, 0.41, 0.3], 1):  # epoch 2 is the best; 3 and 4 are not
        stop.on_epoch_end(fake, {"epoch": epoch, "val/loss": value})
        if fake.stop_requested:
            break
    assert stop.monitor.mode == "min" and stop.stopped_epoch == 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["trainer.monitor=val/ioo"],
            r"trainer.monitor='val/ioo' is invalid; expected one of .*did you mean 'val/iou'",
        ),
        (["trainer.monitor=val/iou_lesion"], r"trainer.monitor='val/iou_lesion' is invalid"),  # binary: no classes
        (["trainer.monitor_mode=up"], r"trainer.monitor_mode='up' is invalid; expected one of"),
    ],
)
def test_a_bad_monitor_is_named_before_training(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(compose_cfg([*TINY, *overrides, f"output_dir={tmp_path}"]))
    assert not (tmp_path / "history.csv").exists()


def test_a_class_column_is_a_monitor_of_a_multi_class_run():
    from segbench.build import build_monitor

    cfg = compose_cfg(["trainer.monitor=val/dice_ring"])
    with pytest.raises(UserError, match="did you mean 'val/dice'"):
        build_monitor(cfg.trainer)  # a binary run has no class columns
    assert build_monitor(cfg.trainer, classes_known=False).key == "val/dice_ring"  # checked with the data
    monitor = build_monitor(cfg.trainer, ["background", "lesion", "ring"])
    assert (monitor.key, monitor.mode) == ("val/dice_ring", "max")
