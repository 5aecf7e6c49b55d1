"""Experiment-tracking loggers (``logger=tensorboard``, ``logger=mlflow``, ``logger=[tensorboard,mlflow]``).

Each is a training-loop callback (:class:`segbench.engine.Callback`); the run directory's own files are
written whatever the loggers do, and a logger that fails warns once and stops, while training goes on.
"""
from ..config import flatten
from .base import Logger
from .mlflow import MLflowLogger
from .tensorboard import TensorBoardLogger

__all__ = ["Logger", "MLflowLogger", "TensorBoardLogger", "flatten"]
