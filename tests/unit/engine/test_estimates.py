"""Time estimates (engine/callbacks.py TimeEstimate, report/callback.py): per run, for a slow preset on a CPU,
per sweep."""

from segbench.engine import FitSettings
from segbench.train import run
from tests.conftest import TINY, compose_cfg


def test_time_estimates_are_logged_after_the_first_epoch_and_every_few(tmp_path, caplog):
    run(compose_cfg([*TINY, "trainer.epochs=5", f"output_dir={tmp_path}"]))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimated ")]
    assert [line.split("(")[1].split(" of")[0] for line in lines] == ["4", "3", "2", "1"]  # every epoch of 5
    assert all(" to finish training (" in line and "epochs left at" in line for line in lines)


def test_a_long_run_on_the_cpu_names_the_cpu_preset_early(monkeypatch, caplog):
    """A GPU preset on a CPU: the estimate from the first batches (before the first epoch ends) names the CPU preset."""
    from segbench.engine import TimeEstimate
    from segbench.engine.callbacks import duration

    clock = iter([0.0, 10.0, 20.0, 30.0])
    monkeypatch.setattr("segbench.engine.callbacks.time.perf_counter", lambda: next(clock))
    trainer = type("T", (), {"settings": FitSettings(epochs=100, batch_size=10)})()
    estimate = TimeEstimate(slow_hint="use experiment=ph2_recipe_cpu")
    estimate.on_fit_start(trainer, 1)  # t = 0
    estimate.on_train_epoch_start(trainer, 1, 10)
    estimate.on_train_batch_end(trainer, 1, lambda: 0.0)  # t = 10: after the warm-up batch
    assert not caplog.records
    estimate.on_train_batch_end(trainer, 2, lambda: 0.0)  # t = 20: 10 s a batch, 10 batches, 100 epochs
    assert caplog.records[-1].getMessage() == (
        "this run is estimated at 2 h 46 min of training here: use experiment=ph2_recipe_cpu"
    )
    assert duration(10000) == "2 h 46 min" and duration(750) == "12 min 30 s" and duration(42.4) == "42 s"
    estimate.on_train_batch_end(trainer, 2, lambda: 0.0)
    assert len(caplog.records) == 1  # once


def test_a_sweep_estimate_counts_jobs_at_a_time():
    from segbench.report.callback import estimate_line

    # 1 of 20 jobs in 60 s, one at a time: 19 x 60 s left
    assert estimate_line(20, 1, 60.0, 1).startswith(
        "sweep: 1 of 20 jobs ended in 1 min 00 s; estimated 19 min 00 s for the other 19 (about "
    )
    # 2 at a time: the first job to end stands for a wave of 2 (19 left at 2 per 60 s)
    line = estimate_line(20, 1, 60.0, 2)
    assert "estimated 9 min 30 s for the other 19" in line and line.endswith(", 2 at a time)")
    assert "estimated 8 min 00 s for the other 16" in estimate_line(20, 4, 120.0, 2)
