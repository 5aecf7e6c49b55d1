"""Where and how the maths runs (engine/device.py, engine/loop.py): automatic precision, memory format, threads
and devices, compile's fallback, the fast paths against a reference loop."""

import copy

import numpy as np
import pytest
import torch

from segbench.data import SyntheticDermoscopy
from segbench.engine import (
    FitSettings,
    Normalizer,
    Trainer,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    resolve_threads,
)
from segbench.errors import UserError
from segbench.losses import BCELoss
from segbench.models import UNet
from segbench.runs.checkpoint import load_checkpoint
from segbench.train import run
from tests.conftest import TINY, compose_cfg, interrupt_in_epoch


@pytest.mark.parametrize("native", [True, False])
def test_auto_settings_follow_what_the_cpu_can_do(monkeypatch, native, caplog):
    from segbench.engine import device as dev

    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: native)
    monkeypatch.setattr(dev, "cpu_has_avx512", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_channels_last("auto", cpu) is native
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_channels_last(False, cpu) is False
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    caplog.clear()
    assert resolve_precision("bf16", cpu) == "bf16"  # an explicit choice is kept; where it is slow, said so
    assert ("about 8x slower than fp32" in caplog.text) is not native


def test_threads_are_divided_among_the_jobs_that_run_at_once(monkeypatch):
    from segbench.config import parallel_jobs
    from segbench.engine import device as dev

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(dev, "usable_cores", lambda: 8)
    assert [resolve_threads("auto", k) for k in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert resolve_threads(3, 2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # set by the user, or by joblib in its workers
    assert resolve_threads("auto", 1) == 2
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    assert parallel_jobs({**joblib, "n_jobs": 2}, 8) == 2
    assert parallel_jobs({**joblib, "n_jobs": -1}, 8) == 8 and parallel_jobs({**joblib, "n_jobs": -2}, 8) == 7
    assert parallel_jobs({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8) == 1
    assert parallel_jobs({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}, 8) == 1


def test_metrics_record_how_the_maths_ran(tmp_path):
    from segbench.engine.device import cpu_name, cpu_native_bf16

    metrics = run(compose_cfg([*TINY, "trainer.threads=1", f"output_dir={tmp_path}"]))
    assert (metrics["precision"], metrics["memory_format"], metrics["threads"]) == ("fp32", "contiguous", 1)
    assert metrics["cpu"] == cpu_name() and metrics["cpu_native_bf16"] == cpu_native_bf16()
    assert metrics["gpu"] is None and metrics["epoch_loop_s"] >= metrics["train_time_s"] > 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)


def test_a_resume_keeps_the_precision_it_started_with(tmp_path, monkeypatch, caplog):
    from segbench.engine import device as dev

    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: True)  # where the run starts: auto is bf16
    args = [*TINY, "trainer.epochs=3", "trainer.precision=auto", f"output_dir={tmp_path}"]
    restore = interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(compose_cfg(args))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["settings"]["precision"] == "bf16"
    restore()
    monkeypatch.setattr(dev, "cpu_native_bf16", lambda: False)  # resumed on a CPU without native bf16
    metrics = run(compose_cfg(args))
    assert metrics["status"] == "done" and metrics["precision"] == "bf16"
    assert "resuming in bf16, the precision this run started with (trainer.precision=auto would be fp32" in caplog.text
    assert "about 8x slower than fp32" in caplog.text


def test_precision_choices_are_checked():
    with pytest.raises(UserError, match="trainer.precision=fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(
        UserError, match=r"trainer.precision='half' is invalid; expected one of \['auto', 'bf16', 'fp16', 'fp32'\]"
    ):
        resolve_precision("half", torch.device("cpu"))


def test_bf16_autocast_runs_on_cpu(tmp_path):
    metrics = run(compose_cfg([*TINY, "trainer.precision=bf16", f"output_dir={tmp_path}"]))
    assert metrics["status"] == "done" and metrics["precision"] == "bf16"
    assert np.isfinite(metrics["test/loss"])


def test_compile_falls_back_with_a_clear_message(tmp_path, monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compile)
    metrics = run(compose_cfg([*TINY, "trainer.compile=true", f"output_dir={tmp_path}"]))
    assert metrics["status"] == "done"
    assert (
        "torch.compile is unavailable here (RuntimeError: no C++ compiler found); training in eager mode" in caplog.text
    )


def test_compile_backend_failing_at_first_batch_falls_back(tmp_path, monkeypatch, caplog):
    class FailingCompiled(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("inductor: C++ compile error")

    monkeypatch.setattr(torch, "compile", lambda module: FailingCompiled())
    eager = run(compose_cfg([*TINY, f"output_dir={tmp_path / 'eager'}"]))
    metrics = run(compose_cfg([*TINY, "trainer.compile=true", f"output_dir={tmp_path / 'compiled'}"]))
    assert "torch.compile is unavailable here (RuntimeError: inductor: C++ compile error)" in caplog.text
    assert metrics["test/iou"] == eager["test/iou"]  # the same eager maths after the fallback


def test_fast_path_equals_the_reference_loop_on_one_batch(tmp_path):
    """segbench's step (uint8 on device, normalised there) vs the notebook step (numpy float arrays)."""
    data = SyntheticDermoscopy(num_cases=8, image_size=32).arrays
    torch.manual_seed(0)
    fast_model = UNet(base_width=4)
    ref_model = copy.deepcopy(fast_model)
    normalizer = Normalizer.fit(data.images)

    # reference: numpy normalisation, float32 tensors, plain step
    mean, std = np.array(normalizer.mean).reshape(3, 1, 1), np.array(normalizer.std).reshape(3, 1, 1)
    x = torch.from_numpy(np.stack([(img.numpy() / 255.0 - mean) / std for img in data.images]).astype(np.float32))
    y = data.masks.float()
    ref_loss = BCELoss()(ref_model(x), y)
    ref_loss.backward()
    ref_grads = [p.grad.clone() for p in ref_model.parameters()]

    # segbench: one epoch = one batch of all 8 images
    fast_opt = torch.optim.Adam(fast_model.parameters(), lr=1e-3)
    trainer = Trainer(fast_model, BCELoss(), fast_opt, FitSettings(epochs=1, batch_size=8), torch.device("cpu"))
    trainer.normalizer = normalizer
    stats = trainer.train_epoch(data.images, data.masks, epoch=1)
    assert stats["loss"] == pytest.approx(ref_loss.item(), rel=1e-5)
    # the gradients the optimiser stepped with (compared before any Adam step: Adam divides near-zero
    # gradients by their own size, so float rounding there moves a weight by up to lr)
    for g, p in zip(ref_grads, fast_model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


CPU = torch.device("cpu")


def _tiny_data():
    data = SyntheticDermoscopy(num_cases=12, image_size=32).arrays
    return data.subset(data.ids[:6]), data.subset(data.ids[6:9])


def _trainer(out, **kwargs):
    """A trainer that keeps its checkpoints in ``out`` (as a run does)."""
    from segbench.engine import BestTracker, Checkpointer
    from segbench.runs import RunDir

    torch.manual_seed(0)
    model = UNet(base_width=4)
    settings = FitSettings(**{"epochs": 2, "batch_size": 3, "eval_batch_size": 3, **kwargs})
    best = BestTracker()
    return Trainer(
        model,
        BCELoss(),
        torch.optim.Adam(model.parameters(), lr=1e-3),
        settings,
        CPU,
        callbacks=[best, Checkpointer(RunDir(out), best)],
    )


def test_channels_last_step_equals_the_contiguous_step(tmp_path):
    train, _ = _tiny_data()
    results = []
    for channels_last in (False, True):
        trainer = _trainer(tmp_path, batch_size=6, channels_last=channels_last)
        trainer.normalizer = Normalizer.fit(train.images)
        stats = trainer.train_epoch(train.images, train.masks, epoch=1)
        conv = next(p for p in trainer.module.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        results.append((stats["loss"], [p.grad.clone() for p in trainer.module.parameters()]))
    (loss, grads), (loss_cl, grads_cl) = results
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    for g, g_cl in zip(grads, grads_cl):
        torch.testing.assert_close(g_cl, g, rtol=1e-4, atol=1e-6)


def test_fp16_grad_scaler_state_is_checkpointed_and_resumed(tmp_path):
    """The fp16 path (GPUs without bf16), run under CPU autocast: the GradScaler scales the loss, its state
    goes into the checkpoint, and resuming restores it."""
    train, val = _tiny_data()
    reference = _trainer(tmp_path / "fp32").fit(train, val)
    trainer = _trainer(tmp_path / "fp16", precision="fp16")
    history = trainer.fit(train, val)
    assert history[0]["train/loss"] == pytest.approx(reference[0]["train/loss"], rel=1e-2)  # fp16 rounding only
    saved = torch.load(tmp_path / "fp16" / "checkpoints" / "last.pt", weights_only=False)["scaler"]
    assert saved == trainer.scaler.state_dict() and saved["scale"] > 0  # a disabled scaler saves {}
    resumed = _trainer(tmp_path / "other", precision="fp16")
    assert resumed.load_state(load_checkpoint(tmp_path / "fp16" / "checkpoints" / "last.pt")) == 3
    assert resumed.scaler.state_dict() == saved


def test_fused_adam_is_chosen_on_cuda_only():
    from functools import partial

    from omegaconf import OmegaConf

    from segbench.build import optimizer_options

    adam = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    assert optimizer_options(partial(torch.optim.Adam, lr=1e-3), adam, torch.device("cuda:1")) == {"fused": True}
    assert optimizer_options(partial(torch.optim.Adam, lr=1e-3), adam, CPU) == {}
    chosen = OmegaConf.merge(adam, {"fused": False})  # the user's setting wins
    assert optimizer_options(partial(torch.optim.Adam, lr=1e-3, fused=False), chosen, torch.device("cuda")) == {}
    rmsprop = OmegaConf.create({"_target_": "torch.optim.RMSprop", "_partial_": True})  # no fused kernel
    assert optimizer_options(partial(torch.optim.RMSprop), rmsprop, torch.device("cuda")) == {}


def test_auto_device_spreads_multirun_jobs_over_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [resolve_device("auto", job_num=j) for j in range(4)] == [torch.device(f"cuda:{i}") for i in (0, 1, 2, 0)]
    assert resolve_device("auto") == torch.device("cuda")  # a single run uses the current GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", job_num=5) == torch.device("cuda")
