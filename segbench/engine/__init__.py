"""The training engine: the loop (fit / evaluate / predict), its callbacks, device and precision
resolution, learning-rate schedules and input normalisation."""
from .callbacks import (
    EMA,
    BestTracker,
    Callback,
    Checkpointer,
    EarlyStopping,
    EpochLogger,
    GradClip,
    HistoryWriter,
    Monitor,
    ProgressBar,
    TimeEstimate,
)
from .device import (
    AUTOCAST_DTYPES,
    PRECISIONS,
    autocast,
    maybe_compile,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    resolve_switch,
    resolve_threads,
)
from .loop import FitSettings, OutOfMemory, Trainer, TrainingDiverged, seed_everything
from .normalize import Normalize, Normalizer
from .schedule import Poly, Schedule, WarmupCosine

__all__ = [
    "AUTOCAST_DTYPES", "PRECISIONS", "EMA", "EarlyStopping", "GradClip", "BestTracker", "Callback", "Checkpointer",
    "EpochLogger", "FitSettings", "HistoryWriter", "Monitor", "Normalize", "Normalizer", "TimeEstimate", "OutOfMemory",
    "Poly", "ProgressBar", "Schedule", "Trainer", "TrainingDiverged",
    "WarmupCosine", "autocast", "seed_everything", "maybe_compile", "resolve_channels_last", "resolve_device",
    "resolve_precision", "resolve_switch", "resolve_threads",
]
