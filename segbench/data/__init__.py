"""Datasets: each loads the whole split into memory as uint8 tensors."""
from .base import SegArrays, SegDataset, make_split, split_digest
from .ph2 import PH2, DataError
from .synthetic import SyntheticDermoscopy

__all__ = ["SegArrays", "SegDataset", "make_split", "split_digest", "PH2", "DataError", "SyntheticDermoscopy"]
