"""The names several packages share, defined once: the columns of a run's history, the default monitor,
the headline test metrics and the confusion-count columns."""
from __future__ import annotations

# the val metric that picks the best checkpoint when trainer.monitor does not say (conf/config.yaml's default)
DEFAULT_MONITOR = "val/iou"

# the val columns of every history row (a multi-class run adds val/iou_<class>, val/dice_<class>)
VAL_COLUMNS = ("val/loss", "val/iou", "val/dice")

# history.csv: one row per epoch, these columns first
HISTORY_COLUMNS = ["epoch", "lr", "train/loss", "train/iou", *VAL_COLUMNS, "time"]

# the test metrics a command prints for a run, and a rescoring records from before
HEADLINE = ("test/iou", "test/dice", "test/hd95")

# test_per_image.csv: the confusion counts of each image, after its metrics
COUNT_COLUMNS = ("tp", "fp", "fn", "tn")
