"""Test-time evaluation: test-time augmentation, post-processing, per-image metrics, reductions,
threshold choice, breakdown by group, and the test step of a run (:func:`score_test`).

Works on logits computed by the trainer's ``predict``, on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..data import SegArrays, SegDataset
from ..metrics import (
    DEFINITIONS,
    all_metrics,
    binarize,
    class_confusion,
    class_keys,
    confusion,
    hausdorff,
    iou,
    iou_score,
    micro,
)
from ..validation import InvalidValue, check_choice, check_int, is_number
from . import calibration as cal

THRESHOLD_GRID = [round(0.05 * i, 2) for i in range(1, 20)]
TTA_MODES = ("none", "flips", "d4")
POSTPROCESS = ("none", "largest")
RESOLUTIONS = ("input", "original")


class Predictor(Protocol):
    """What scoring needs of a model: logits (N, C, H, W), float32 on the CPU, of the uint8 images of
    ``data``. The trainer (:class:`segbench.engine.Trainer`) and a loaded run
    (:class:`segbench.evaluation.trained.TrainedModel`) are both one."""

    def predict(self, data: SegArrays) -> torch.Tensor: ...


@dataclass(frozen=True)
class EvalSettings:
    """The ``eval`` settings of a run: how its best checkpoint is scored (and, for a trained run, how it
    predicts). Read from a config by :meth:`from_config`, the one place that does."""

    threshold: float | str = 0.5  # a probability, or "auto": the one of THRESHOLD_GRID best on val
    resolution: str = "input"  # input | original
    tta: str = "none"  # none | flips | d4
    postprocess: str = "none"  # none | largest
    num_predictions: int = 6  # test cases drawn in predictions.png
    calibration: str = "none"  # none | temperature: also fit a temperature on val and score the scaled probabilities

    def __post_init__(self) -> None:
        if self.threshold != "auto":
            if not is_number(self.threshold) or not 0 < self.threshold < 1:
                raise InvalidValue("eval.threshold", self.threshold, "a number > 0 and < 1, or 'auto'")
            object.__setattr__(self, "threshold", float(self.threshold))
        check_choice("eval.resolution", self.resolution, RESOLUTIONS)
        check_choice("eval.tta", self.tta, TTA_MODES)
        check_choice("eval.postprocess", self.postprocess, POSTPROCESS)
        check_int("eval.num_predictions", self.num_predictions, low=1)
        check_choice("eval.calibration", self.calibration, cal.CALIBRATION)

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "EvalSettings":
        """From a config's ``eval`` node (a DictConfig or a saved config's dict); missing keys take the
        defaults above, which are conf/config.yaml's."""
        node = node or {}
        keys = ("threshold", "resolution", "tta", "postprocess", "num_predictions", "calibration")
        known = {k: node[k] for k in keys if k in node}
        return cls(**known)

    @property
    def auto_threshold(self) -> bool:
        return self.threshold == "auto"

    @property
    def working_threshold(self) -> float:
        """The threshold before one is chosen (training's val IoU, a run that has not finished): 0.5 for
        ``auto``, else the fixed one."""
        return 0.5 if self.auto_threshold else float(self.threshold)

# Each test-time transform of (N, C, H, W) tensors with its inverse; square images (segbench resizes to squares).
_FLIPS = [
    (lambda x: x, lambda x: x),
    (lambda x: x.flip(-1), lambda x: x.flip(-1)),
    (lambda x: x.flip(-2), lambda x: x.flip(-2)),
    (lambda x: x.flip(-2, -1), lambda x: x.flip(-2, -1)),
]
_D4 = [(lambda x, k=k, f=f: (x.flip(-1) if f else x).rot90(k, (-2, -1)),
        lambda x, k=k, f=f: (lambda y: y.flip(-1) if f else y)(x.rot90(-k, (-2, -1))))
       for f in (False, True) for k in range(4)]
TTA_TRANSFORMS = {"none": _FLIPS[:1], "flips": _FLIPS, "d4": _D4}


def predict_tta(trainer: Predictor, data: SegArrays, mode: str = "none") -> torch.Tensor:
    """Logits (N, C, H, W) of ``data``, averaged over the test-time transforms of ``mode``: ``none``;
    ``flips`` (identity, horizontal, vertical, both: 4); ``d4`` (the 4 rotations by 90 degrees of the
    image and of its mirror image: 8). Each prediction is transformed back before averaging."""
    check_choice("eval.tta", mode, TTA_MODES)
    total = None
    for forward, inverse in TTA_TRANSFORMS[mode]:
        view = SegArrays(forward(data.images), data.masks, data.ids, data.groups)
        logits = inverse(trainer.predict(view))
        total = logits if total is None else total + logits
    return total / len(TTA_TRANSFORMS[mode])


def largest_component(pred: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected foreground component of an (H, W) bool mask and fill its holes."""
    labels, count = ndimage.label(pred, structure=np.ones((3, 3), bool))
    if count == 0:
        return pred
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == sizes.argmax())


def largest_per_class(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep the largest 8-connected component of each foreground class of an (H, W) class map; the
    other pixels of that class become background (0). No holes are filled: they may be other classes."""
    out = np.zeros_like(classes)
    for k in range(1, num_classes):
        labels, count = ndimage.label(classes == k, structure=np.ones((3, 3), bool))
        if count:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            out[labels == sizes.argmax()] = k
    return out


def predict_classes(logits: torch.Tensor, postprocess: str = "none") -> torch.Tensor:
    """Multi-class (N, C, H, W) logits -> (N, 1, H, W) int64 class map (argmax), post-processed per
    image (``largest``: :func:`largest_per_class`)."""
    check_choice("eval.postprocess", postprocess, POSTPROCESS)
    classes = logits.argmax(1, keepdim=True)
    if postprocess == "largest":
        classes = torch.stack([torch.from_numpy(largest_per_class(c[0].numpy(), logits.shape[1]))[None]
                               for c in classes])
    return classes


def predict_masks(logits: torch.Tensor, threshold: float, postprocess: str = "none") -> torch.Tensor:
    """(N, C, H, W) logits -> (N, 1, H, W) bool foreground, post-processed per image (``largest``)."""
    check_choice("eval.postprocess", postprocess, POSTPROCESS)
    pred = binarize(logits, threshold)
    if postprocess == "largest":
        pred = torch.stack([torch.from_numpy(largest_component(p[0].numpy()))[None] for p in pred])
    return pred


def decide(logits: torch.Tensor, threshold: float, postprocess: str = "none") -> torch.Tensor:
    """The one decision from logits to mask: (N, C, H, W) logits -> (N, 1, H, W), binary (C = 1) the bool
    foreground ``sigmoid(logits) > threshold`` (:func:`predict_masks`), multi-class the int64 argmax class
    map (:func:`predict_classes`), post-processed per image as ``eval.postprocess`` says. Scoring,
    inference, ensembles and every figure decide through it, so a drawn mask is the scored one."""
    if logits.shape[1] == 1:
        return predict_masks(logits, threshold, postprocess)
    return predict_classes(logits, postprocess)


def choose_threshold(logits: torch.Tensor, masks: torch.Tensor, grid: Sequence[float] = THRESHOLD_GRID,
                     postprocess: str = "none") -> float:
    """The threshold of ``grid`` with the highest mean per-image IoU (first one on ties), after ``postprocess``."""
    if logits.shape[1] != 1:
        return 0.5  # multi-class predictions are argmax; the threshold does not apply
    scores = [iou(confusion(predict_masks(logits, t, postprocess), masks > 0)).mean().item() for t in grid]
    return float(grid[int(np.argmax(scores))])


def per_image(
    logits: torch.Tensor | Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor] | torch.Tensor,
    threshold: float,
    postprocess: str = "none",
    class_names: Sequence[str] | None = None,
) -> dict[str, list[float]]:
    """Every metric per image, as columns (metric -> one value per image). ``logits`` is one (N, C, H, W)
    tensor or N (1, C, H_i, W_i) ones. ``masks`` may be one (N, 1, H, W) tensor, or N (H0, W0) masks at
    their original sizes, in which case each logit map is resized (bilinear) to its mask first;
    ``postprocess`` is applied to each prediction at the size it is scored at. Multi-class logits
    are scored per foreground class (:data:`segbench.metrics.DEFINITIONS` ``classes``). Each image's
    calibration (:mod:`segbench.evaluation.calibration`) is in ``ece`` and ``brier``, and its statistics in
    ``_calibration``, from which :func:`image_means` pools the pixels."""
    columns: dict[str, list[float]] = {}
    for i in range(len(logits)):
        logit, mask = _scored(logits, masks, i)
        pred = decide(logit, threshold, postprocess)
        if logit.shape[1] == 1:
            values = _binary_values(pred, mask > 0)
        else:
            values = _class_values(pred, mask.long(), logit.shape[1], class_names)
        stats = cal.image_stats(logit, mask)
        values.update(ece=cal.ece(stats), brier=cal.brier(stats), _calibration=stats)
        for k, v in values.items():
            columns.setdefault(k, []).append(v)
    return columns


def _scored(logits: torch.Tensor | Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | torch.Tensor,
            i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``i``'s logits (1, C, H, W), float, at the size of its mask (1, 1, H, W) (bilinear)."""
    mask = torch.as_tensor(masks[i]).reshape(1, 1, *masks[i].shape[-2:])
    logit = (logits[i : i + 1] if isinstance(logits, torch.Tensor) else logits[i]).float()
    if logit.shape[-2:] != mask.shape[-2:]:
        logit = F.interpolate(logit, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    return logit, mask


def temperature_scaled(val_logits: torch.Tensor, val_masks: Any, logits: torch.Tensor, masks: Any,
                       prefix: str = "test/") -> dict[str, float]:
    """``eval.calibration=temperature``: the temperature fitted on val (its NLL at the scored size), and the
    ECE and Brier of the test probabilities divided by it (the masks, thresholded before, are unchanged)."""
    val = [_scored(val_logits, val_masks, i) for i in range(len(val_logits))]
    temperature = cal.fit_temperature([lg for lg, _ in val], [m for _, m in val])
    stats = np.sum([cal.image_stats(lg / temperature, m) for lg, m in
                    (_scored(logits, masks, i) for i in range(len(logits)))], axis=0)
    return {"temperature": temperature, f"{prefix}ece_temperature": cal.ece(stats),
            f"{prefix}brier_temperature": cal.brier(stats)}


def _binary_values(pred: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Every metric of one (1, 1, H, W) bool prediction against its mask."""
    c = confusion(pred, mask)
    values = {k: v.item() for k, v in all_metrics(c).items()}
    values["hd"], values["hd95"] = hausdorff(pred[0, 0].numpy(), mask[0, 0].numpy())
    return {**values, **{k: c[k].item() for k in ("tp", "fp", "fn", "tn")}}


def _class_values(pred: torch.Tensor, mask: torch.Tensor, num_classes: int,
                  class_names: Sequence[str] | None) -> dict[str, float]:
    """Every metric of one (1, 1, H, W) class map, averaged over the foreground classes, and each
    class's IoU and Dice."""
    c = class_confusion(pred, mask, num_classes)  # (1, C-1) each
    per_class = all_metrics(c)
    values = {k: v.mean().item() for k, v in per_class.items() if k != "iou_score"}
    values["iou_score"] = iou_score(per_class["iou"].mean(1)).item()
    distances = np.array([hausdorff((pred == k)[0, 0].numpy(), (mask == k)[0, 0].numpy())
                          for k in range(1, num_classes)])  # (C-1, 2)
    defined = np.isfinite(distances[:, 0])
    values["hd"], values["hd95"] = distances[defined].mean(0).tolist() if defined.any() else (math.nan, math.nan)
    for k, key in enumerate(class_keys(class_names, num_classes)):
        values[f"iou_{key}"], values[f"dice_{key}"] = per_class["iou"][0, k].item(), per_class["dice"][0, k].item()
    return {**values, **{k: c[k].sum().item() for k in ("tp", "fp", "fn", "tn")}}


def image_means(columns: dict[str, list[float]], prefix: str = "test/") -> dict[str, float]:
    """The per-image columns of :func:`per_image` as means over images (NaN Hausdorff values left out and
    counted), and micro ratios (the confusion counts summed first); ECE and Brier over all the images'
    pixels."""
    out: dict[str, float] = {}
    for k, values in columns.items():
        if k in ("tp", "fp", "fn", "tn") or k.startswith("_"):
            continue
        arr = np.asarray(values, dtype=float)
        out[f"{prefix}{k}"] = float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
    out[f"{prefix}hd_undefined"] = int(np.isnan(np.asarray(columns["hd"], dtype=float)).sum())
    counts = {k: torch.tensor(columns[k]) for k in ("tp", "fp", "fn", "tn")}
    out.update({f"{prefix}{k}_micro": v for k, v in micro(counts).items()})
    if columns.get("_calibration"):
        pooled = np.sum(columns["_calibration"], axis=0)
        out[f"{prefix}ece"], out[f"{prefix}brier"] = cal.ece(pooled), cal.brier(pooled)
    return out


def pooled_reliability(columns: dict[str, list]) -> dict | None:
    """The reliability diagram of all the images of :func:`per_image` columns (None without them)."""
    stats = columns.get("_calibration")
    return cal.reliability(np.sum(stats, axis=0)) if stats else None


def by_group(columns: dict[str, list[float]], groups: Sequence[str], order: Sequence[str] = ()) -> dict[str, dict]:
    """Per-image means within each group (e.g. PH2 diagnosis), groups in ``order`` then sorted."""
    out = {}
    for name in [g for g in order if g in groups] + sorted(set(groups) - set(order)):
        index = [i for i, g in enumerate(groups) if g == name]
        group = {k: [v[i] for i in index] for k, v in columns.items()}
        out[name] = {"n": len(index), **image_means(group, prefix="")}
    return out


TTA_DEFINITIONS = {"none": "none", "flips": "mean logits of identity, horizontal, vertical and both flips",
                   "d4": "mean logits of the 8 rotations/flips (dihedral group D4)"}


def describe_scoring(threshold: float, threshold_mode: str, input_size: int | None, tta: str, postprocess: str,
                     multi_class: bool) -> dict[str, Any]:
    """metrics.json's ``definitions``: the metrics' (:data:`DEFINITIONS`) and how predictions were made and
    scored. ``input_size`` None: at each image's original size."""
    return {
        **DEFINITIONS,
        **cal.DEFINITIONS,
        "threshold": threshold,
        "threshold_mode": threshold_mode,
        "resolution": "original image size (predictions resized bilinearly)" if input_size is None
        else f"{input_size}x{input_size} (network input)",
        "tta": TTA_DEFINITIONS.get(tta, tta),
        "postprocess": "none" if postprocess == "none" else "largest 8-connected component, holes filled"
        if not multi_class else "largest 8-connected component of each foreground class (the rest background)",
    }


@dataclass
class TestResult:
    """What the test step produced: the threshold used, the test logits (N, C, H, W) at the input size
    (after test-time augmentation), the per-image metric columns, and their means (``test/<metric>``, and
    ``val_final/<metric>`` for the val split scored the same way) with its definitions."""

    threshold: float
    logits: torch.Tensor
    per_image: dict[str, list[float]]
    metrics: dict[str, Any]
    definitions: dict[str, Any]


def score_test(
    trainer: Predictor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dataset: SegDataset,
    val: SegArrays,
    test_part: SegArrays,
    settings: EvalSettings,
) -> TestResult:
    """Score the model's predictions on ``test_part``, and on ``val`` the same way.

    ``settings.threshold='auto'`` picks the one of :data:`THRESHOLD_GRID` with the best mean val IoU
    (with the same TTA and post-processing); ``resolution='original'`` scores each prediction resized
    to its case's original mask; ``tta`` and ``postprocess`` as in :func:`predict_tta` and
    :func:`predict_masks`.
    """
    threshold, resolution = settings.threshold, settings.resolution
    tta, postprocess = settings.tta, settings.postprocess
    auto = settings.auto_threshold
    val_logits = predict_tta(trainer, val, tta)
    chosen = choose_threshold(val_logits, val.masks, postprocess=postprocess) if auto else float(threshold)
    logits = predict_tta(trainer, test_part, tta)  # (N, C, H, W) on the CPU; every test number comes from these
    with torch.no_grad():
        test_loss = float(loss_fn(logits, test_part.masks.float()))
    original = resolution == "original"

    def masks_of(part: SegArrays) -> Any:
        return dataset.original_masks(part.ids) if original else part.masks

    names = dataset.class_names if dataset.num_classes > 1 else None
    columns = per_image(logits, masks_of(test_part), chosen, postprocess, names)
    val_means = image_means(per_image(val_logits, masks_of(val), chosen, postprocess, names), prefix="val_final/")
    definitions = {
        **describe_scoring(chosen, "auto: maximises mean val IoU over 0.05..0.95" if auto else "fixed",
                           dataset.image_size if not original else None, tta, postprocess, logits.shape[1] > 1),
        "val_final": "the val split scored like the test split (same threshold, TTA, post-processing, resolution)",
    }
    metrics = {"test/loss": test_loss, **image_means(columns),
               **{k: v for k, v in val_means.items() if k.split("/")[1] in ("iou", "dice", "hd95", "iou_score")}}
    if test_part.groups is not None:
        metrics[f"by_{dataset.group_key or 'group'}"] = by_group(columns, test_part.groups, dataset.group_order)
    metrics["calibration"] = pooled_reliability(columns)
    if settings.calibration == "temperature":
        metrics.update(temperature_scaled(val_logits, masks_of(val), logits, masks_of(test_part)))
        definitions["temperature"] = ("eval.calibration=temperature: T minimising the val pixels' NLL of "
                                      "logits / T; test/ece_temperature and test/brier_temperature score the "
                                      "test probabilities of logits / T (the masks are those of the logits)")
    return TestResult(chosen, logits, columns, metrics, definitions)
