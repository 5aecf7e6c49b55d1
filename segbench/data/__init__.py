"""Datasets: each loads all its cases into memory as uint8 tensors (splits are in segbench.splits)."""
from ..errors import DataError
from .base import SegArrays, SegDataset
from .files import FileDataset
from .folder import Folder
from .ph2 import PH2
from .synthetic import SyntheticDermoscopy

__all__ = ["SegArrays", "SegDataset", "FileDataset", "Folder", "PH2", "DataError", "SyntheticDermoscopy"]
