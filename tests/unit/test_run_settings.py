"""Every run setting is checked before any work, naming the key, the value and what is allowed."""
import pytest

from segbench.errors import UserError
from segbench.train import run
from tests.conftest import TINY, compose_cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epochs=0", "trainer.epochs=0 is invalid; expected an integer >= 1"),
        ("trainer.epochs=2.5", "trainer.epochs=2.5 is invalid; expected an integer >= 1"),
        ("trainer.epochs=true", "trainer.epochs=True is invalid; expected an integer >= 1"),
        ("trainer.batch_size=-2", "trainer.batch_size=-2 is invalid"),
        ("trainer.eval_batch_size=-1", "trainer.eval_batch_size=-1 is invalid"),
        ("trainer.resume=yes", r"trainer.resume='yes' is invalid; expected one of \['auto', 'overwrite'\]"),
        ("trainer.val_every=0", "trainer.val_every=0 is invalid; expected an integer >= 1"),
        ("trainer.threads=0", "trainer.threads=0 is invalid; expected an integer >= 1"),
        ("trainer.device=gpu7", "trainer.device='gpu7'"),
        ("trainer.device=tpu", "trainer.device='tpu'"),
        (
            "trainer.precision=half",
            r"trainer.precision='half' is invalid; expected one of \['auto', 'bf16', 'fp16', 'fp32'\]",
        ),
        ("trainer.precision=bf61", "did you mean 'bf16'"),
        ("trainer.compile=maybe", "trainer.compile='maybe' is invalid; expected true, false or auto"),
        ("optimizer.lr=0", "optimizer.lr=0 is invalid; expected a number > 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr=-0.001 is invalid"),
        ("eval.threshold=1.5", "eval.threshold=1.5 is invalid; expected a number > 0 and < 1, or 'auto'"),
        ("eval.threshold=best", "eval.threshold='best' is invalid"),
        (
            "eval.resolution=orignal",
            "eval.resolution='orignal' is invalid; expected one of .*; did you mean 'original'",
        ),
        ("eval.num_predictions=0", "eval.num_predictions=0 is invalid"),
        ("seed=abc", "seed='abc' is invalid; expected an integer"),
        ("loss=focal loss.gamma=-1", "loss.gamma=-1 is invalid; expected a number >= 0"),
        ("model.base_width=0", "model.base_width=0 is invalid; expected an integer >= 1"),
        ("+model.up=pixelshuffle", "model.up='pixelshuffle' is invalid; expected one of"),
        ("dataset.image_size=0", "dataset.image_size=0 is invalid; expected an integer >= 16"),
        ("dataset.num_cases=2", "dataset.num_cases=2 is invalid; expected an integer >= 3"),
        ("split.sizes=[6,0,3]", r"split.sizes=\[6, 0, 3\] is invalid; expected three integers >= 1"),
        ("split.sizes=[10,3,3]", r"train=10 \+ val=3 \+ test=3 = 16 exceed the 12 cases"),
        ("split.seed=1.5", "split.seed=1.5 is invalid; expected an integer"),
        ("split=kfold split.fold=5", "split.fold=5 is invalid; expected an integer >= 0 and <= 4"),
        ("split=kfold split.k=1", "split.k=1 is invalid; expected an integer >= 2"),
        ("augment=standard augment.strength=-1", "augment.strength=-1 is invalid; expected a number >= 0"),
        ("augment=standard augment.ops.0.p=2", r"augment.ops\[0\].p=2 is invalid; expected a number >= 0 and <= 1"),
        ("scheduler.interval=batch", "scheduler.interval='batch' is invalid; expected one of \\['epoch', 'step'\\]"),
        (
            "scheduler=plateau scheduler.monitor=val/iuo",
            "scheduler.monitor='val/iuo' is invalid; .*did you mean 'val/iou'",
        ),
        ("scheduler=cosine scheduler.warmup=-1", "scheduler.warmup=-1 is invalid; expected an integer >= 0"),
        (
            "scheduler=onecycle scheduler.pct_start=1.5",
            r"scheduler \(torch.optim.lr_scheduler.OneCycleLR\): .*pct_start",
        ),
    ],
)
def test_invalid_config_values_are_named(tmp_path, override, message):
    with pytest.raises(UserError, match=rf"(?<![\w.]){message}"):  # the key whole: no group prefixed twice
        run(compose_cfg([*TINY, *override.split(), f"output_dir={tmp_path}"]))
    assert not (tmp_path / "checkpoints").exists()  # no work was done
    if not override.startswith("split.sizes"):  # the split's sizes are checked against the cases it splits
        assert not (tmp_path / "split.json").exists()  # named before the data was read
