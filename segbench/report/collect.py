"""What the report knows of each run: a :class:`RunRecord`, read from its run dir through
:class:`~segbench.runs.RunDir` only, and the grouping of runs into configurations."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ..compat import monitor_of
from ..config import defining_overrides
from ..errors import DataError
from ..runs import RunDir

log = logging.getLogger(__name__)

SCORES = ["test/iou", "test/dice", "test/iou_score"]
# the numbers of metrics.json a report shows per run ("best_val" is the monitored value that chose the checkpoint)
NUMBERS = [*SCORES, "test/hd95", "test/ece", "test/brier", "best_val", "best_epoch", "params", "train_time_s",
           "images_per_s"]
# overrides shown in their own columns, or aggregated over (seeds, and the folds of a cross-validation)
COLUMN_KEYS = ("model", "loss", "seed", "split.fold")

T = TypeVar("T")


def split_family(split: dict) -> tuple:
    """What makes two runs' test sets comparable: the same holdout split, or folds of the same k-fold."""
    if split.get("strategy") == "kfold":
        if split.get("split_by") == "subject":  # the parts' sizes vary by fold, within a subject's cases
            return ("kfold", split.get("k"), split.get("seed"), "by subject")
        return ("kfold", split.get("k"), split.get("seed"), len(split.get("val", [])))
    return ("holdout", split.get("digest"))


def describe_family(family: tuple) -> str:
    if family[0] == "kfold":
        by = " by subject" if family[3] == "by subject" else ""
        return f"{family[1]}-fold cross-validation{by} (split seed {family[2]})"
    return f"holdout split {family[1]}"


def class_metrics(metrics: dict) -> dict[str, float]:
    """A multi-class run's per-class test metrics (``test/iou_<class>``, ``test/dice_<class>``), from the
    class names it recorded (``classes``: the foreground classes, an axis of its results). Runs from
    before segbench 0.2 did not record them: their keys are recognised by prefix."""
    names = metrics.get("classes")
    if names is not None:
        keys = [f"test/{m}_{c}" for c in names for m in ("iou", "dice")]
        return {k: metrics[k] for k in keys if k in metrics}
    return {k: v for k, v in metrics.items() if k.startswith(("test/iou_", "test/dice_"))
            and k not in ("test/iou_score", "test/iou_micro", "test/dice_micro")}


def best_val(metrics: dict) -> tuple[float, str]:
    """The monitored val value that chose a run's checkpoint, and the monitor (``val/iou`` before 0.2)."""
    monitor = monitor_of(metrics)
    return float(monitor.get("value", math.nan)), str(monitor.get("key"))


@dataclass
class RunRecord:
    """One run as the report sees it."""

    path: Path
    model: str
    loss: str
    seed: Any
    status: str  # done, failed, interrupted, pruned, incomplete, damaged, not started
    error: str
    split: str  # digest of its split
    family: tuple | None  # split_family(); None when it has no split.json
    other: list[str]  # defining overrides besides COLUMN_KEYS
    numbers: dict[str, float]  # NUMBERS
    monitor: str  # the key of best_val
    classes: dict[str, float]  # per-class test metrics (multi-class runs)
    history: list[dict] = field(default_factory=list)
    per_image: list[dict] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    overrides: str = ""  # what varies among the report's runs (split_common_overrides)
    split_by: str | None = None  # "subject" when split.json kept each subject's cases in one part
    calibration: dict | None = None  # metrics.json's reliability diagram of its test pixels

    @property
    def key(self) -> tuple[str, str, str]:
        """The configuration: (model, loss, overrides); a report's runs of one key differ in seed or fold."""
        return (self.model, self.loss, self.overrides)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def __getitem__(self, name: str) -> float:
        return self.numbers.get(name, math.nan)


def load_run(run_dir: RunDir) -> RunRecord:
    """One run's record. A file that cannot be read is left out with a warning; the run's status is then
    ``damaged`` and its ``error`` names the file."""
    problems: list[str] = []

    def read(reader: Callable[[], T], default: T) -> T:
        try:
            return reader()
        except DataError as exc:
            log.warning("%s", exc)
            problems.append(str(exc))
            return default

    choices = read(run_dir.read_choices, {})
    metrics = read(run_dir.read_metrics, {})
    split = read(run_dir.read_split, {})
    other = sorted(o for o in defining_overrides(read(run_dir.read_overrides, []))
                   if o.split("=", 1)[0].lstrip("+~") not in COLUMN_KEYS)
    value, monitor = best_val(metrics)
    numbers = {k: metrics.get(k, math.nan) for k in NUMBERS if k != "best_val"}
    return RunRecord(
        path=run_dir.path,
        model=metrics.get("model") or choices.get("model", "?"),
        loss=metrics.get("loss") or choices.get("loss", "?"),
        seed=read(run_dir.read_config, {}).get("seed"),
        status="damaged" if problems else run_dir.status(),
        error="; ".join(problems) or metrics.get("error", ""),
        split=metrics.get("split_digest") or split.get("digest", ""),
        family=split_family(split) if split else None,
        split_by=split.get("split_by"),
        calibration=metrics.get("calibration") if metrics.get("status") == "done" else None,
        other=other,
        numbers={**numbers, "best_val": value},
        monitor=monitor,
        classes=class_metrics(metrics),
        history=read(run_dir.read_history, []),
        per_image=read(run_dir.read_per_image, []) if metrics.get("status") == "done" else [],
        provenance=metrics.get("provenance") or {},
    )


def split_common_overrides(records: Sequence[RunRecord]) -> list[str]:
    """Keep in each record's ``overrides`` only what varies between runs; return what all runs share."""
    common = set.intersection(*(set(r.other) for r in records)) if records else set()
    for r in records:
        r.overrides = ",".join(o for o in r.other if o not in common)
    return sorted(common)


def configurations(records: Sequence[RunRecord]) -> dict[tuple, list[RunRecord]]:
    """The runs of each configuration (:attr:`RunRecord.key`), in the order first seen."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r)
    return groups
