"""Schedulers step when their YAML says (per epoch or per optimizer step), with a monitored value if
they need one; the learning rate at chosen steps matches each schedule's formula."""
import math

import pytest
import torch

from segbench.build import build_monitor, build_schedule
from segbench.train import run
from tests.conftest import TINY, compose_cfg

LR = 1e-2


def schedule_of(name, *overrides, epochs=4, batches=5):
    cfg = compose_cfg([f"scheduler={name}", f"optimizer.lr={LR}", *overrides])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    return build_schedule(cfg.scheduler, optimizer, epochs, batches), optimizer


def lrs_per_step(schedule, optimizer, epochs, batches, val_iou=lambda epoch: 0.5):
    """The learning rate used by every optimizer step, stepping the schedule as the trainer does."""
    seen = []
    for epoch in range(1, epochs + 1):
        for _ in range(batches):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.batch_end()
        schedule.epoch_end({"epoch": epoch, "val/iou": val_iou(epoch)})
    return seen


def test_step_lr_steps_per_epoch():
    schedule, opt = schedule_of("step", "scheduler.step_size=2", "scheduler.gamma=0.1")
    lrs = lrs_per_step(schedule, opt, epochs=4, batches=5)
    assert lrs[::5] == pytest.approx([LR, LR, LR * 0.1, LR * 0.1])
    assert len(set(lrs[:5])) == 1  # constant within an epoch


def test_cosine_with_warmup_per_step():
    schedule, opt = schedule_of("cosine", "scheduler.warmup=4", "scheduler.min_lr_ratio=0.1")
    assert schedule.scheduler.total_steps == 4 * 5  # filled in: epochs x batches per epoch
    lrs = lrs_per_step(schedule, opt, epochs=4, batches=5)
    assert lrs[:5] == pytest.approx([0, LR / 4, LR / 2, 3 * LR / 4, LR])  # linear warm-up from 0, then the peak
    for t in (4, 9, 12, 19):
        want = LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 16)))
        assert lrs[t] == pytest.approx(want), t


def test_cosine_warmup_in_epochs():
    schedule, opt = schedule_of("cosine", "scheduler.interval=epoch", "scheduler.warmup=2")
    assert schedule.scheduler.total_steps == 4  # epochs
    lrs = lrs_per_step(schedule, opt, epochs=4, batches=3)
    assert lrs[::3] == pytest.approx([0, LR / 2, LR, LR * 0.5 * (1 + math.cos(math.pi / 2))])


def test_poly_per_step():
    schedule, opt = schedule_of("poly")
    lrs = lrs_per_step(schedule, opt, epochs=4, batches=5)
    assert [lrs[t] for t in (0, 7, 19)] == pytest.approx([LR * (1 - t / 20) ** 0.9 for t in (0, 7, 19)])


def test_onecycle_steps_per_batch_over_the_whole_run():
    schedule, opt = schedule_of("onecycle")
    lrs = lrs_per_step(schedule, opt, epochs=4, batches=5)
    reference_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_opt, max_lr=LR, total_steps=20, pct_start=0.3)
    want = []
    for _ in range(20):
        want.append(reference_opt.param_groups[0]["lr"])
        reference_opt.step()
        reference.step()
    assert lrs == pytest.approx(want)
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == 5  # the peak at 30 % of 20 steps


def test_plateau_monitors_val_iou():
    schedule, opt = schedule_of("plateau", "scheduler.patience=1", "scheduler.factor=0.5")
    # val IoU improves in epochs 1-2, then stays flat; the lr halves once the flat epochs exceed the
    # patience (epochs 3 and 4), so epoch 5 trains at lr / 2. Rising val IoU (mode max) never reduces it.
    lrs = lrs_per_step(schedule, opt, epochs=5, batches=1, val_iou=lambda e: [0.5, 0.6, 0.6, 0.6, 0.6][e - 1])
    assert lrs == pytest.approx([LR, LR, LR, LR, LR / 2])
    schedule, opt = schedule_of("plateau", "scheduler.patience=1")
    assert lrs_per_step(schedule, opt, epochs=5, batches=1, val_iou=lambda e: 0.1 * e) == pytest.approx([LR] * 5)


def test_plateau_and_onecycle_train_from_yaml(tmp_path):
    """The run logs the lr each epoch started with: plateau (monitor) and onecycle (per step) both run."""
    for name in ("plateau", "onecycle"):
        metrics = run(compose_cfg([*TINY, f"scheduler={name}", f"output_dir={tmp_path / name}"]))
        assert metrics["status"] == "done"
    history = (tmp_path / "onecycle" / "history.csv").read_text().splitlines()
    assert float(history[1].split(",")[1]) == pytest.approx(1e-4 / 25)  # OneCycle starts at max_lr / div_factor


def test_plateau_follows_the_monitor_direction():
    """With trainer.monitor=val/loss the plateau scheduler monitors the loss and lower is better."""
    cfg = compose_cfg(["scheduler=plateau", f"optimizer.lr={LR}", "scheduler.patience=1", "trainer.monitor=val/loss"])
    monitor = build_monitor(cfg.trainer)
    assert (monitor.key, monitor.mode) == ("val/loss", "min")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = build_schedule(cfg.scheduler, optimizer, 5, 1, monitor)
    assert schedule.monitor == "val/loss" and schedule.scheduler.mode == "min"
    seen = []
    for epoch, loss in enumerate([0.5, 0.4, 0.3, 0.2, 0.1], 1):  # a falling loss never reduces the lr
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.epoch_end({"epoch": epoch, "val/loss": loss})
    assert seen == pytest.approx([LR] * 5)
    default, _ = schedule_of("plateau")
    assert default.monitor == "val/iou" and default.scheduler.mode == "max"
