"""torch.compile on this CPU: it compiles (or falls back with a message) and trains."""
import pytest
import torch

from segbench.train import run
from tests.conftest import TINY, compose_cfg


@pytest.mark.slow
def test_compile_on_cpu_works_or_falls_back(tmp_path, caplog):
    """The real torch.compile on this machine: either the run trains compiled, or it says why it did not.

    Kept cheap: one epoch of one full batch, and evaluation batches of that same size, so that inductor
    compiles one training graph and one evaluation graph (each new batch shape would be a recompile), of a
    one-level U-Net (pool, bottleneck, upsampling, skip): with a cold inductor cache, as in CI, each kernel
    is a C++ compile, and the default four levels took 80 s here instead of 35."""
    small = [*TINY, "split.sizes=[4,4,4]", "trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.epochs=1",
             "dataset.image_size=16", "model.base_width=2", "+model.depth=1"]
    reference = run(compose_cfg([*small, f"output_dir={tmp_path / 'eager'}"]))
    metrics = run(compose_cfg([*small, "trainer.compile=true", f"output_dir={tmp_path / 'compiled'}"]))
    assert metrics["status"] == "done"
    if "torch.compile is unavailable here" not in caplog.text:  # compiled: same maths within float tolerance
        assert metrics["test/loss"] == pytest.approx(reference["test/loss"], rel=1e-3, abs=1e-4)
    ckpt = torch.load(tmp_path / "compiled" / "checkpoints" / "best.pt", weights_only=False)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])  # checkpoints hold the eager module
