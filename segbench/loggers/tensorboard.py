"""``logger=tensorboard``: event files in ``<run dir>/tensorboard/``: ``tensorboard --logdir outputs``."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from ..config import flatten
from ..engine.callbacks import TrainerView
from ..errors import require
from ..validation import check_int
from .base import Logger, final_metrics


class TensorBoardLogger(Logger):
    """Per-epoch scalars (train/val loss, IoU, Dice, learning rate), a figure of val predictions every
    ``image_every`` epochs (0: never), and at the end the test metrics with the run's hyperparameters
    (TensorBoard's HPARAMS view).

    Args:
        subdir: the folder of the run directory that holds the event files.
        image_every: epochs between prediction figures (the last epoch always gets one); 0 = none.
        num_images: val cases in each figure.
    """

    name = "tensorboard"

    def __init__(self, subdir: str = "tensorboard", image_every: int = 10, num_images: int = 4) -> None:
        super().__init__()
        self.tb = require("torch.utils.tensorboard", "tensorboard", "tracking", f"logger={self.name}")
        self.subdir = str(subdir)
        self.image_every = check_int("image_every", image_every, low=0)
        self.num_images = check_int("num_images", num_images, low=1)
        self.writer: Any = None

    def start(self, trainer: TrainerView, start_epoch: int) -> None:
        # purge_step: a resumed run drops what a killed one logged after its last checkpoint
        self.writer = self.tb.SummaryWriter(str(self.run_dir.path / self.subdir), purge_step=start_epoch)

    def log_epoch(self, trainer: TrainerView, row: dict[str, float]) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key not in ("epoch", "time") and value == value:  # NaN: an epoch not validated (trainer.val_every)
                self.writer.add_scalar(key, value, epoch)
        self.writer.add_scalar("time/epoch_s", row["time"], epoch)
        last = epoch == trainer.settings.epochs
        if self.image_every and trainer.val is not None and (epoch % self.image_every == 0 or last):
            from ..report.figures import prediction_figure

            shown = trainer.val.subset(trainer.val.ids[: self.num_images])
            figure = prediction_figure(shown, trainer.predict(shown), trainer.settings.threshold,
                                       class_names=trainer.settings.class_names)  # as val is scored in training
            self.writer.add_figure("val/predictions", figure, epoch)  # closes the figure
            plt.close(figure)
        self.writer.flush()

    def finish(self, trainer: TrainerView, metrics: dict) -> None:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in flatten(self.config).items() if k != "output_dir"}
        # run_name=".": the hparams event file goes into this run's folder, not a new timestamped one
        self.writer.add_hparams(hparams, final_metrics(metrics), run_name=".")
        self.writer.close()

    def abort(self, exc: BaseException) -> None:
        if self.writer is not None:
            self.writer.close()
