"""The cases that decide a comparison: for the reference configuration and the runner-up, the test cases
where their per-image IoU differs most, and each one's lowest-IoU cases, drawn (image, expert outline,
both predictions) and listed in summary.md.

The predictions are redrawn from the runs' best checkpoints (a run's own input size, threshold, TTA and
post-processing; an evaluation's ensemble as it was scored), on the dataset the runs were scored on; the
IoU shown is the one the runs recorded (test_per_image.csv). Where a checkpoint or the data cannot be
read, the cases are listed without the figure and the report says why.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..build import build_saved  # noqa: E402
from ..config import saved_config  # noqa: E402
from ..data import SegDataset  # noqa: E402
from ..errors import SegbenchError  # noqa: E402
from ..evaluation.trained import Ensemble, load_trained  # noqa: E402
from ..runs import RunDir  # noqa: E402
from .collect import RunRecord  # noqa: E402
from .pooling import Pooled  # noqa: E402

log = logging.getLogger(__name__)

DIFFER = 4  # cases where the two differ most
WORST = 3  # lowest-IoU cases of each
DIFFER_PNG, WORST_PNG = "cases_differ.png", "cases_worst.png"
RED = matplotlib.colors.ListedColormap(["red"])


def runner_up(configs: Sequence[Pooled], reference: Pooled | None) -> Pooled | None:
    """The best configuration after ``reference`` by mean IoU that is paired with it (same split definition)."""
    if reference is None:
        return None
    others = [c for c in configs if c is not reference and c.usable("iou") and c.family == reference.family]
    return max(others, key=lambda c: c.mean("iou"), default=None)


def differing_cases(a: Pooled, b: Pooled, count: int = DIFFER) -> list[str]:
    """The shared cases with the largest |IoU(a) - IoU(b)|, largest first (ties in case order)."""
    shared = [c for c in a.scores["iou"] if c in b.scores["iou"]]
    return sorted(shared, key=lambda c: (-abs(a.scores["iou"][c] - b.scores["iou"][c]), c))[:count]


def lowest_cases(config: Pooled, count: int = WORST) -> list[str]:
    """The cases with the lowest IoU of ``config``, lowest first (ties in case order)."""
    scores = config.scores["iou"]
    return sorted(scores, key=lambda c: (scores[c], c))[:count]


class Source:
    """How one run's predictions are redrawn: its trained model (or an evaluation's ensemble) and the
    dataset config it was scored on."""

    def __init__(self, record: RunRecord) -> None:
        metrics = RunDir(record.path).read_metrics()
        evaluated = metrics.get("evaluated") or {}
        if "ensemble" in evaluated:
            members = [load_trained(p) for p in evaluated["ensemble"]]
            self.model: Any = Ensemble.of(members, evaluated.get("threshold"), evaluated.get("postprocess"))
            self.size = max(m.image_size for m in members)
            dataset = evaluated["dataset"]
        else:
            self.model = load_trained(evaluated.get("run") or record.path)
            self.size = self.model.image_size
            dataset = evaluated.get("dataset") or self.model.config["dataset"]
        dataset = saved_config(dataset, f"'{RunDir(record.path).metrics_json}'" if evaluated else
                               f"the checkpoint of {record.path}", ("_target_",))
        self.dataset = {k: v for k, v in dataset.items() if k != "image_size"}
        self.source = f"'{RunDir(record.path).metrics_json}'" if evaluated else f"the checkpoint of {record.path}"
        self.path = Path(evaluated.get("run") or record.path)  # the trained run (an evaluation: the one it scored)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the foreground (H, W) bool."""
        return self.model.predict_images([image])[0][0] > 0


def source_of(runs: Sequence[RunRecord], case: str) -> RunRecord | None:
    """The first finished run of a configuration (by seed) that scored ``case`` (a k-fold: the fold that tested it)."""
    for r in sorted(runs, key=lambda r: str(r.seed)):
        if r.done and any(row["case"] == case for row in r.per_image):
            return r
    return None


def _figure(cases: Sequence[str], pair: Sequence[Pooled], images: dict, truths: dict, predictions: dict,
            drawn: dict, title: str) -> plt.Figure:
    n = len(cases)
    height = 3.1 * n + 0.4
    fig, axes = plt.subplots(n, 3, figsize=(9.6, height), squeeze=False)
    # a fixed layout (no ticks to fit around): tight_layout measured most of the gallery's time
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / height, wspace=0.05, hspace=0.25)
    for i, case in enumerate(cases):
        panels = [(None, f"{case}: expert outline (green)")]
        panels += [(c, f"{c.label}\nIoU {c.scores['iou'].get(case, math.nan):.3f} (drawn: {drawn[(c.key, case)]})")
                   for c in pair]
        for ax, (config, name) in zip(axes[i], panels):
            ax.imshow(images[case])
            ax.contour(truths[case], levels=[0.5], colors="lime", linewidths=1.2)
            if config is not None:
                pred = predictions[(config.key, case)]  # tinted, and outlined where it has an edge inside
                ax.imshow(np.ma.masked_where(~pred, pred), cmap=RED, alpha=0.35, vmin=0, vmax=1)
                if pred.any() and not pred.all():
                    ax.contour(pred, levels=[0.5], colors="red", linewidths=1.2)
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def draw(groups: dict[tuple, list[RunRecord]], configs: Sequence[Pooled], reference_label: str | None,
         out_dir: Path) -> list[str]:
    """Write :data:`DIFFER_PNG` and :data:`WORST_PNG` into ``out_dir`` for the reference and the runner-up
    by IoU; returns summary.md's section ([] when there is no pair to compare)."""
    reference = next((c for c in configs if c.label == reference_label and c.usable("iou")), None)
    second = runner_up(configs, reference)
    if reference is None or second is None:
        return []
    pair = [reference, second]
    differ = differing_cases(reference, second)
    worst = list(dict.fromkeys(lowest_cases(reference) + lowest_cases(second)))
    lines = ["## Cases that decide the comparison", "",
             f"Reference **{reference.label}** against the runner-up **{second.label}** (test IoU per image, as "
             "recorded; with several seeds, their mean). The cases where they differ most:", "",
             "| case | IoU, reference | IoU, runner-up | difference |", "|---|---|---|---|"]
    for case in differ:
        a, b = reference.scores["iou"][case], second.scores["iou"][case]
        lines.append(f"| {case} | {a:.3f} | {b:.3f} | {a - b:+.3f} |")
    lines += ["", "Each one's lowest-IoU cases: "
              + "; ".join(f"{c.label}: " + ", ".join(f"{k} ({c.scores['iou'][k]:.3f})" for k in lowest_cases(c))
                          for c in pair), ""]
    try:
        drawn = _draw(groups, pair, differ, worst, out_dir)
    except (SegbenchError, OSError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("the cases were not drawn: %s", exc)
        return lines + [f"The cases were not drawn: {exc}", ""]
    return lines + [f"Drawn in `{DIFFER_PNG}` and `{WORST_PNG}`: expert outline in green, prediction tinted and "
                    "outlined in red, "
                    f"redrawn from {drawn}.", ""]


def _draw(groups: dict[tuple, list[RunRecord]], pair: Sequence[Pooled], differ: Sequence[str],
          worst: Sequence[str], out_dir: Path) -> str:
    cases = list(dict.fromkeys([*differ, *worst]))
    sources: dict[Path, Source] = {}
    predictions: dict[tuple, np.ndarray] = {}
    needed: dict[tuple, Source] = {}
    for config in pair:
        for case in cases:
            record = source_of(groups[config.key], case)
            if record is None:
                raise ValueError(f"no finished run of {config.label} scored {case}")
            if record.path not in sources:
                sources[record.path] = Source(record)
            needed[(config.key, case)] = sources[record.path]
    first = next(iter(sources.values()))
    size = max(s.size for s in sources.values())  # no run sees an image smaller than its own input
    dataset = build_saved({**first.dataset, "image_size": size}, "dataset", SegDataset, first.source)
    arrays = dataset.arrays.subset(cases)
    images = {c: arrays.images[i].permute(1, 2, 0).numpy() for i, c in enumerate(cases)}
    truths = {c: arrays.masks[i, 0].numpy() > 0 for i, c in enumerate(cases)}
    for (key, case), source in needed.items():
        predictions[(key, case)] = source.predict(images[case])
    for name, shown, title in ((DIFFER_PNG, differ, "the test cases where the two differ most"),
                               (WORST_PNG, worst, "each one's lowest-IoU test cases")):
        drawn = {k: source.path.name for k, source in needed.items()}
        fig = _figure(shown, pair, images, truths, predictions, drawn, f"{title} (IoU as recorded; drawn at {size} px)")
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
    return ", ".join(f"`{p}`" for p in sources) + f" at {size} px"
