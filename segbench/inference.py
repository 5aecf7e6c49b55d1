"""A trained run as a model for new images: what ``segbench.predict`` and ``segbench.export`` share.

:func:`load_trained` rebuilds the network from the config saved in a run's checkpoint, loads the
checkpoint's evaluated weights (the EMA ones when the run kept an average) and its input
normalisation, and reads the run's evaluation settings (threshold actually used, TTA,
post-processing, input size) from metrics.json and the config: nothing is re-specified.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .build import build
from .config import upgrade_config
from .data import SegArrays
from hydra.errors import InstantiationException

from .engine.normalize import Normalize, Normalizer
from .errors import CheckpointError, UserError
from .scoring import EvalSettings, predict_classes, predict_masks, predict_tta
from .runs import RunDir

CHECKPOINTS = ("best", "last")


class Normalized(nn.Module):
    """The network with the run's input normalisation (the trainer's own :class:`Normalize`) in front:
    float (B, 3, H, W) RGB in [0, 1] -> logits (B, C, H, W). What ``segbench.export`` writes."""

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
        interface :func:`segbench.scoring.predict_tta` calls."""
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
        if logit.shape[1] == 1:
            prob = torch.sigmoid(logit)[0, 0]
            pred = predict_masks(logit, self.threshold, self.postprocess)[0, 0]
            return pred.numpy(), torch.where(pred, prob, 1 - prob).numpy()
        classes = predict_classes(logit, self.postprocess)[0, 0]
        return classes.numpy().astype(np.uint8), torch.softmax(logit, 1)[0].max(0).values.numpy()


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
    config: dict[str, Any] = upgrade_config(state.get("config") or {})  # a run from before 0.2: today's keys
    if "model" not in config:
        raise UserError(f"the checkpoint '{path}' holds no run config; it was not written by segbench")
    try:  # the config is data from someone else: Hydra refuses executable targets (os.system, eval, ...)
        model = build(config["model"], "model")
    except InstantiationException as exc:
        raise CheckpointError(f"the checkpoint '{path}' names a model that cannot be built: "
                              f"{str(exc).splitlines()[0]}") from exc
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
