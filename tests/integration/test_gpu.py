"""GPU paths end to end; skipped (with the reason) where there is no CUDA device. CI has none."""
import numpy as np
import pytest
import torch

from segbench.engine import resolve_precision
from segbench.losses import BCELoss
from segbench.train import run
from tests.conftest import TINY, compose_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ON_GPU = [o for o in TINY if not o.startswith("trainer.device=")] + ["trainer.device=cuda"]


@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16", "fp16"])
def test_a_run_trains_on_the_gpu_in_each_precision(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    metrics = run(compose_cfg([*ON_GPU, f"trainer.precision={precision}", f"output_dir={tmp_path}"]))
    assert metrics["status"] == "done" and metrics["device"].startswith("cuda")
    assert metrics["precision"] == resolve_precision(precision, torch.device("cuda"))
    assert np.isfinite(metrics["test/loss"])
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert all(t.device.type == "cpu" for t in last["model"].values())  # checkpoints load on any machine


def test_channels_last_compiled_fused_run_on_the_gpu(tmp_path):
    metrics = run(
        compose_cfg([*ON_GPU, "trainer.channels_last=true", "trainer.compile=true", f"output_dir={tmp_path}"])
    )
    assert metrics["status"] == "done" and np.isfinite(metrics["test/loss"])


def test_gpu_loss_matches_the_cpu_loss(tmp_path):
    """The same fp32 forward on GPU (TF32 convolutions allowed) and CPU: the same loss to TF32 precision."""
    from segbench.data import SyntheticDermoscopy
    from segbench.engine import Normalizer
    from segbench.models import UNet

    data = SyntheticDermoscopy(num_cases=8, image_size=32).arrays
    torch.manual_seed(0)
    model = UNet(base_width=4)
    x = Normalizer.fit(data.images)(data.images)
    y = data.masks.float()
    cpu = BCELoss()(model(x), y).item()
    gpu = BCELoss()(model.cuda()(x.cuda()), y.cuda()).item()
    assert gpu == pytest.approx(cpu, rel=1e-2)


def test_a_gpu_trainer_resumes_from_its_checkpoint(tmp_path):
    """RNG states in a checkpoint are CPU tensors; resuming on the GPU must keep them there."""
    from segbench.data import SyntheticDermoscopy
    from segbench.engine import BestTracker, Checkpointer, FitSettings, Trainer
    from segbench.models import UNet
    from segbench.runs import RunDir

    data = SyntheticDermoscopy(num_cases=12, image_size=32).arrays
    train, val = data.subset(data.ids[:6]), data.subset(data.ids[6:9])

    def trainer(out):
        torch.manual_seed(0)
        model = UNet(base_width=4)
        best = BestTracker()
        return Trainer(
            model,
            BCELoss(),
            torch.optim.Adam(model.parameters()),
            FitSettings(epochs=1, batch_size=3, eval_batch_size=3),
            torch.device("cuda"),
            callbacks=[best, Checkpointer(RunDir(out), best)],
        )

    trainer(tmp_path).fit(train, val)
    assert trainer(tmp_path / "resumed").load_state(RunDir(tmp_path).load_checkpoint("last")) == 2


def test_the_ema_update_does_not_wait_for_the_gpu():
    """An EMA update only queues kernels: no host synchronisation, which would stall every batch."""
    from segbench.engine import EMA, FitSettings, Trainer
    from segbench.models import UNet

    model = UNet(base_width=4)
    trainer = Trainer(
        model,
        BCELoss(),
        torch.optim.Adam(model.parameters()),
        FitSettings(epochs=1, batch_size=2),
        torch.device("cuda"),
        callbacks=[EMA(0.9)],
    )
    ema = trainer.callback(EMA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in range(3):  # the first copies, the others average
            ema.on_train_batch_end(trainer, batch, lambda: 0.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ema.steps == 3


def _ddp_args(out):
    """The gloo tests' run (tests/integration/test_distributed.py) on CUDA, fp32 without TF32 differences
    mattering at this tolerance."""
    from tests.integration.test_distributed import ARGS

    return [*(o for o in ARGS if not o.startswith("trainer.device=")), "trainer.device=cuda", f"hydra.run.dir={out}"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_nccl_ranks_equal_one_gpu_process(tmp_path):
    import subprocess
    import sys

    from segbench.runs import RunDir

    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        result = subprocess.run([sys.executable, "-m", "segbench", *_ddp_args(out), f"trainer.devices={devices}"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = RunDir(out).read_metrics()
    assert runs[2]["world_size"] == 2 and runs[2]["backend"] == "nccl"
    assert runs[2]["test/iou"] == pytest.approx(runs[1]["test/iou"], abs=5e-3)


def test_torchrun_on_one_gpu_uses_nccl(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from segbench.runs import RunDir

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "run"
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node=1", "-m", "segbench", *_ddp_args(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    got = RunDir(out).read_metrics()
    assert got["status"] == "done" and got["device"].startswith("cuda")
    assert got["world_size"] == 1


def test_more_ranks_than_gpus_are_refused_before_any_work(tmp_path):
    import subprocess
    import sys

    many = torch.cuda.device_count() + 1
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "segbench", *_ddp_args(out), f"trainer.devices={many}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"trainer.devices={many} but this machine has {many - 1} CUDA device" in result.stderr
    assert not (out / "metrics.json").exists()
