"""Where an epoch's time goes: training steps against everything else in the epoch loop.

    python scripts/epoch_overhead.py                                   # ph2_recipe_cpu, 12 epochs, PH2
    python scripts/epoch_overhead.py dataset=synthetic trainer.epochs=6 # any overrides of a run

Runs one configuration (``experiment=ph2_recipe_cpu`` unless the overrides pick another) in a
temporary run dir and times, per hook, what the loop does besides the training steps: validation,
and each callback's work at the end of an epoch (history.csv, the checkpoint snapshot, logging,
the estimate). The training steps are ``train_time_s`` (what ``metrics.json`` records, with the
per-batch callbacks such as EMA inside it); the loop is ``epoch_loop_s``. The issue's target:
what the loop spends outside the training steps is at most 10 % of it.
"""
from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict

from segbench.config import compose_config
from segbench.engine import Trainer
from segbench.engine.callbacks import Callback
from segbench.train import run

totals: dict[str, float] = defaultdict(float)


def timed(owner: type, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            totals[label.format(cls=type(self).__name__)] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> None:
    overrides = ["experiment=ph2_recipe_cpu", "trainer.epochs=12", "trainer.progress=false", *argv]
    timed(Trainer, "evaluate", "validation (Trainer.evaluate)")
    for cls in Callback.__subclasses__():
        if "on_epoch_end" in cls.__dict__:
            timed(cls, "on_epoch_end", "{cls}.on_epoch_end")
    with tempfile.TemporaryDirectory() as out:
        metrics = run(compose_config([*overrides, f"output_dir={out}"]))
    loop, train = metrics["epoch_loop_s"], metrics["train_time_s"]
    print(f"python scripts/epoch_overhead.py {' '.join(argv)}")
    print(f"precision {metrics['precision']}, {metrics['memory_format']}, {metrics['threads']} threads, "
          f"CPU {metrics['cpu']}")
    print(f"epoch loop {loop:.2f} s, training steps {train:.2f} s: outside the steps "
          f"{loop - train:.2f} s = {100 * (loop - train) / loop:.1f} % of the loop")
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {label:45s} {seconds:8.3f} s  {100 * seconds / loop:5.1f} %")
    rest = loop - train - sum(totals.values())
    print(f"  {'the rest (batch order, bookkeeping)':45s} {rest:8.3f} s  {100 * rest / loop:5.1f} %")


if __name__ == "__main__":
    main(sys.argv[1:])
