"""Trained runs as models for new images: what ``segbench predict``, ``segbench evaluate`` and
``segbench export`` share.

:func:`load_trained` rebuilds the network from the config saved in a run's checkpoint, loads the
checkpoint's evaluated weights (the EMA ones when the run kept an average) and its input
normalisation, and reads the run's evaluation settings (threshold actually used, TTA,
post-processing, input size) from metrics.json and the config: nothing is re-specified.

:class:`Ensemble` averages the probabilities of several trained runs, each at its own input size and
with its own TTA, resized to the image; then one threshold (the mean of the runs' thresholds) and one
post-processing decide the mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from torch import nn

from ..build import build_saved
from ..compat import upgrade_config
from ..config import saved_config
from ..data import SegArrays
from ..data.arrays import resize_image
from ..engine.normalize import Normalize, Normalizer
from ..errors import CheckpointError, DataError, UserError
from ..runs import RunDir
from ..validation import check_choice
from .scoring import POSTPROCESS, EvalSettings, decide, predict_tta

CHECKPOINTS = ("best", "last")
# what a trained model reads from its checkpoint's config (checked before anything is built)
SAVED_KEYS = ("model", "model._target_", "dataset", "dataset._target_", "dataset.image_size")


class Normalized(nn.Module):
    """The network with the run's input normalisation (the trainer's own :class:`Normalize`) in front:
    float (B, 3, H, W) RGB in [0, 1] -> logits (B, C, H, W). What ``segbench export`` writes."""

    def __init__(self, model: nn.Module, normalizer: Normalizer) -> None:
        super().__init__()
        self.normalize = Normalize(normalizer.mean, normalizer.std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))


@dataclass
class TrainedModel:
    """A run's network, ready to predict. ``threshold``, ``tta`` and ``postprocess`` are the run's own
    evaluation settings; ``image_size`` its input side."""

    run_dir: RunDir
    network: Normalized
    image_size: int
    threshold: float
    tta: str
    postprocess: str
    num_classes: int
    device: torch.device
    batch_size: int = 8
    config: dict = field(default_factory=dict)

    def predict(self, data: SegArrays) -> torch.Tensor:
        """Logits (N, C, H, W) float32 on the CPU of uint8 images ``data.images`` (N, 3, S, S); the
        interface :func:`segbench.evaluation.scoring.predict_tta` calls."""
        out = []
        with torch.inference_mode():
            for b in range(0, len(data), self.batch_size):
                x = data.images[b : b + self.batch_size].to(self.device).float() / 255
                out.append(self.network(x).float().cpu())
        return torch.cat(out)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> logits (N, C, S, S), averaged over the run's test-time augmentation."""
        n = images.shape[0]
        masks = torch.zeros(n, 1, *images.shape[-2:], dtype=torch.uint8)
        return predict_tta(self, SegArrays(images, masks, [str(i) for i in range(n)]), self.tta)

    def masks(self, logits: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """One image's logits (1, C, S, S) at its original ``size`` (H0, W0): the post-processed
        prediction (H0, W0) (bool, or class indices) and the probability of the predicted class there."""
        logit = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        return decide_image(logit, self.threshold, self.postprocess)

    def predict_images(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(H, W, 3) uint8 images of any sizes -> per image the prediction at its size and the
        probability of the predicted class (:meth:`masks`): the network at the run's input size, the
        logits resized back to each image."""
        logits = self.logits(network_inputs(images, self.image_size))
        return [self.masks(logits[i : i + 1], im.shape[:2]) for i, im in enumerate(images)]

    def describe(self) -> str:
        return (f"{self.run_dir.path} ({self.image_size}px, threshold {self.threshold:.2f}, tta {self.tta}, "
                f"postprocess {self.postprocess})")


def network_inputs(images: Sequence[np.ndarray], side: int) -> torch.Tensor:
    """(H, W, 3) uint8 images of any sizes -> uint8 (N, 3, side, side), resized as the datasets resize."""
    return torch.stack([torch.from_numpy(resize_image(im, side)) for im in images])


def decide_image(logits: torch.Tensor, threshold: float, postprocess: str,
                 probs: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image's logits (1, C, H, W) -> the post-processed prediction (H, W) (bool, or class indices;
    :func:`segbench.evaluation.scoring.decide`) and the probability of the predicted class there, read
    from ``probs`` (an ensemble's mean) when given, else from the logits (:func:`probabilities`)."""
    probs = probabilities(logits) if probs is None else probs
    pred = decide(logits, threshold, postprocess)[0, 0]
    if logits.shape[1] == 1:
        return pred.numpy(), torch.where(pred, probs[0, 0], 1 - probs[0, 0]).numpy()
    return pred.numpy().astype(np.uint8), probs[0].max(0).values.numpy()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) logits -> probabilities: the sigmoid for one channel (binary), else the softmax over C."""
    return torch.sigmoid(logits.float()) if logits.shape[1] == 1 else torch.softmax(logits.float(), 1)


def as_logits(probs: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`probabilities` (up to a constant per pixel for the softmax, which argmax
    ignores), so that averaged probabilities are thresholded and post-processed by the same functions
    as one run's logits. Probabilities are clamped to [1e-6, 1 - 1e-6] first."""
    if probs.shape[1] == 1:
        return torch.logit(probs, eps=1e-6)
    return torch.log(probs.clamp_min(1e-6))


@dataclass
class Ensemble:
    """Several trained runs predicting together (nnU-Net's ensemble of fold models).

    Each member predicts at its own input size with its own test-time augmentation; its probabilities
    (sigmoid, or softmax over classes) are resized (bilinear) to the output size and averaged with equal
    weights. One ``threshold`` (default: the mean of the members' chosen thresholds) and one
    ``postprocess`` (default: the members' own, when they agree) then decide the mask."""

    members: list[TrainedModel]
    threshold: float
    postprocess: str
    threshold_mode: str = "the mean of the runs' thresholds"

    @classmethod
    def of(cls, members: Sequence[TrainedModel], threshold: float | None = None,
           postprocess: str | None = None) -> "Ensemble":
        """The ensemble of ``members``; a UserError when they cannot predict together (different
        ``num_classes``, or post-processing that differs and was not given)."""
        if not members:
            raise UserError("an ensemble needs at least one trained run")
        classes = {m.num_classes for m in members}
        if len(classes) > 1:
            raise UserError("the runs of an ensemble must predict the same classes; they have num_classes "
                            + ", ".join(f"{m.num_classes} ({m.run_dir.path})" for m in members))
        if postprocess is None:
            kinds = sorted({m.postprocess for m in members})
            if len(kinds) > 1:
                raise UserError(f"the runs of the ensemble post-process differently ({', '.join(kinds)}); "
                                "choose one with --postprocess")
            postprocess = kinds[0]
        check_choice("--postprocess", postprocess, POSTPROCESS)
        if threshold is not None:
            return cls(list(members), float(threshold), postprocess, "given (--threshold)")
        return cls(list(members), float(np.mean([m.threshold for m in members])), postprocess)

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    def probabilities(self, images_at: Callable[[int], torch.Tensor],
                      sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """The mean probabilities (1, C, H_i, W_i) of N images at ``sizes`` (N sizes). ``images_at(s)``
        gives the N images as uint8 (N, 3, s, s) at a member's input side ``s``."""
        total: list[torch.Tensor | None] = [None] * len(sizes)
        for member in self.members:
            probs = probabilities(member.logits(images_at(member.image_size)))  # (N, C, s, s), its TTA
            for i, size in enumerate(sizes):
                p = probs[i : i + 1]
                if tuple(p.shape[-2:]) != tuple(size):
                    p = F.interpolate(p, size=tuple(size), mode="bilinear", align_corners=False)
                total[i] = p if total[i] is None else total[i] + p
        return [t / len(self.members) for t in total]  # type: ignore[operator]

    def predict_images(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """As :meth:`TrainedModel.predict_images`, with the members' mean probabilities."""
        probs = self.probabilities(lambda side: network_inputs(images, side), [im.shape[:2] for im in images])
        return [decide_image(as_logits(p), self.threshold, self.postprocess, probs=p) for p in probs]

    def describe(self) -> str:
        return (f"an ensemble of {len(self.members)} runs (mean probabilities; threshold {self.threshold:.2f}, "
                f"{self.threshold_mode}; postprocess {self.postprocess}): "
                + ", ".join(str(m.run_dir.path) for m in self.members))


def load_trained(run_dir: str | Path, which: str = "best", device: torch.device | str = "cpu",
                 batch_size: int = 8) -> TrainedModel:
    """The network of a finished run directory (``best`` or ``last`` checkpoint) with its settings."""
    run = RunDir(run_dir)
    if which not in CHECKPOINTS:
        raise UserError(f"checkpoint '{which}' is not one of {', '.join(CHECKPOINTS)}")
    path = run.best_pt if which == "best" else run.last_pt
    if not path.is_file():
        what = "a run directory" if RunDir.is_run(run.path) else "not a segbench run directory"
        raise UserError(f"'{path}' does not exist ({run.path} is {what}); a trained model needs a run that has "
                        "finished at least one epoch")
    state = run.load_checkpoint(which)  # a damaged file: a CheckpointError naming it
    if not state.get("config"):
        raise CheckpointError(f"the checkpoint '{path}' holds no run config; it was not written by segbench")
    try:  # data, never resolved; a run from before 0.2 in today's keys
        config: dict[str, Any] = upgrade_config(saved_config(state["config"], f"the checkpoint '{path}'",
                                                             SAVED_KEYS))
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    try:  # the config is data from someone else: only an nn.Module class is built from it
        model = build_saved(config["model"], "model", nn.Module, f"the checkpoint '{path}'")
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    except InstantiationException as exc:
        raise CheckpointError(f"the checkpoint '{path}' names a model that cannot be built: "
                              f"{str(exc).splitlines()[0]}") from exc
    missing = [k for k in ("model", "normalizer") if not isinstance(state.get(k), dict)]
    if missing:
        raise CheckpointError(f"the checkpoint '{path}' holds no {' and no '.join(missing)} state; it was not "
                              "written by segbench, or it is damaged")
    model.load_state_dict(state["model"])
    network = Normalized(model, Normalizer(**state["normalizer"])).to(device).eval()
    metrics = run.read_metrics()
    evaluation = EvalSettings.from_config(config.get("eval"))
    # the threshold the run chose; a run that has not finished has none: its working threshold
    threshold = metrics.get("threshold", evaluation.working_threshold)
    return TrainedModel(
        run_dir=run, network=network, image_size=int(config["dataset"]["image_size"]), threshold=float(threshold),
        tta=evaluation.tta, postprocess=evaluation.postprocess,
        num_classes=int(config["model"].get("num_classes", 1)), device=torch.device(device),
        batch_size=batch_size, config=config,
    )
